//! What clients, load balancers and log collectors read from a running gateway, over HTTP: the
//! client key's `x-ratelimit-*-requests` headers, `retry-after-ms` beside `Retry-After`, the
//! optional routing headers, `/health/live` and `/health/ready` (503 from the first moment of a
//! graceful stop, while requests are still served), `/metrics` turned off, the access log
//! of the real binary (one JSON line per request, no prompt text, no key), and #14's refusals
//! (413, 408, 503 overload) and failover before content as the metrics count them.
#![expect(clippy::unwrap_used, reason = "test")]

mod common;
mod telemetry_support;

use std::time::Duration;

use common::served::Served;
use common::{send, Answer, Gateway, ADMIN_TOKEN};
use futures_util::StreamExt;
use mock_upstream::{MockUpstream, Reply, StreamSpec};
use serde_json::{json, Value};
use telemetry_support::{backend, chat, gateway_with_alpha, metrics, scrape, sum};
use tokio::time::Instant;

/// A chat request with a client key (OpenAI's bearer token) or Anthropic's `x-api-key`.
async fn call(gw: &Gateway, key: &str, anthropic: bool) -> Answer {
    let request = if anthropic {
        gw.client
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "m-x", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]}))
    } else {
        gw.client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .json(&json!({"model": "m-x", "messages": [{"role": "user", "content": "hi"}]}))
    };
    send(request).await
}

/// An OpenAI-format reset (`250ms`, `1.5s`, `1m0s`) in seconds.
fn reset_seconds(text: &str) -> f64 {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap() / 1000.0;
    }
    let (minutes, seconds) = match text.split_once('m') {
        Some((minutes, rest)) => (minutes.parse::<f64>().unwrap(), rest),
        None => (0.0, text),
    };
    minutes * 60.0 + seconds.strip_suffix('s').unwrap().parse::<f64>().unwrap()
}

#[tokio::test]
async fn a_client_key_sees_its_own_request_limit_and_when_to_come_back() {
    let (gw, upstream) = gateway_with_alpha("").await;
    let (_, limited) = gw
        .create_key(json!({"name": "two-a-minute", "rpm_limit": 2}))
        .await;
    let (_, unlimited) = gw.create_key(json!({"name": "free"})).await;

    let first = call(&gw, &limited, false).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("1"));
    // One token short of full, at one token per 30 s.
    let reset = reset_seconds(first.header("x-ratelimit-reset-requests").unwrap());
    assert!(reset > 25.0 && reset <= 30.0, "{reset}");

    let second = call(&gw, &limited, true).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.header("x-ratelimit-remaining-requests"), Some("0"));
    let reset = reset_seconds(second.header("x-ratelimit-reset-requests").unwrap());
    assert!(reset > 55.0 && reset <= 60.0, "{reset}");

    // Over the limit: 429 with the headers, and when to come back in seconds and milliseconds.
    for anthropic in [false, true] {
        let refused = call(&gw, &limited, anthropic).await;
        assert_eq!(refused.status, 429, "{}", refused.text);
        assert_eq!(refused.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(refused.header("x-ratelimit-remaining-requests"), Some("0"));
        let seconds: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        let millis: u64 = refused.header("retry-after-ms").unwrap().parse().unwrap();
        assert!(millis > 20_000 && millis <= 30_000, "{millis}");
        assert_eq!(
            seconds,
            millis.div_ceil(1000),
            "Retry-After is the whole seconds"
        );
    }
    assert_eq!(
        upstream.calls(),
        2,
        "the refused requests never reached upstream"
    );

    // No limit, no headers — for an unlimited key and for the admin token.
    for key in [unlimited.as_str(), ADMIN_TOKEN] {
        let answer = call(&gw, key, false).await;
        assert_eq!(answer.status, 200);
        assert!(answer.header("x-ratelimit-limit-requests").is_none());
        assert!(
            answer.header("x-poolgate-attempts").is_none(),
            "off by default"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn routing_headers_name_the_backend_and_the_attempts_when_exposed() {
    let gw = Gateway::start_with("[proxy]\nexpose_routing_headers = true\n", None).await;
    let limited = MockUpstream::start().await;
    limited.set_default(Reply::rate_limited(Some(30)));
    let fine = MockUpstream::start().await;
    backend(
        &gw,
        "alpha",
        &limited.openai_base_url(),
        "primary",
        "m-x",
        json!({}),
    )
    .await;
    backend(
        &gw,
        "beta",
        &fine.openai_base_url(),
        "fallback",
        "m-x",
        json!({}),
    )
    .await;
    backend(
        &gw,
        "lonely",
        &limited.openai_base_url(),
        "primary",
        "m-only",
        json!({}),
    )
    .await;

    let answer = send(chat(&gw, "m-x", false)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-poolgate-backend"), Some("beta"));
    assert_eq!(answer.header("x-poolgate-attempts"), Some("2"));

    // A stream gets them too, before its first byte.
    let stream = gw
        .proxy("/v1/chat/completions")
        .json(&json!({"model": "m-x", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["x-poolgate-backend"], "beta");
    assert_eq!(stream.headers()["x-poolgate-attempts"], "1");
    assert!(stream.text().await.unwrap().contains("[DONE]"));

    // Errors say so as well: the only backend answered 429 (and now cools down).
    let first = send(chat(&gw, "m-only", false)).await;
    assert_eq!(first.status, 429, "{}", first.text);
    assert_eq!(first.header("x-poolgate-backend"), Some("lonely"));
    assert_eq!(first.header("x-poolgate-attempts"), Some("1"));
    let millis: u64 = first.header("retry-after-ms").unwrap().parse().unwrap();
    let seconds: u64 = first.header("retry-after").unwrap().parse().unwrap();
    assert!(millis > 20_000 && millis <= 30_000, "{millis}");
    assert_eq!(seconds, millis.div_ceil(1000));
    let cooling = send(chat(&gw, "m-only", false)).await;
    assert_eq!(cooling.status, 429);
    assert_eq!(cooling.header("x-poolgate-attempts"), Some("0"));
    assert!(cooling.header("x-poolgate-backend").is_none());
    assert!(cooling.header("retry-after-ms").is_some());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_as_a_graceful_stop_begins_while_requests_are_still_served() {
    let (gw, _upstream) = gateway_with_alpha("[health]\nshutdown_delay_seconds = 1\n").await;
    let url = gw.url.clone();
    let client = gw.client.clone();
    let get = |path: &str| send(client.get(format!("{url}{path}")));

    for path in ["/health/live", "/healthz"] {
        let live = get(path).await;
        assert_eq!(live.status, 200, "{path}");
        assert_eq!(live.json, json!({"status": "ok"}));
        assert_eq!(live.header("cache-control"), Some("no-store"));
    }
    let ready = get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(
        ready.json,
        json!({"status": "ok", "checks": {"store": "ok", "snapshot": "ok"}})
    );
    assert_eq!(ready.header("cache-control"), Some("no-store"));

    // The stop begins; for the shutdown delay the gateway still serves, but is not ready.
    let stopping = Instant::now();
    let stop = tokio::spawn(gw.stop());
    let not_ready = loop {
        let ready = get("/health/ready").await;
        if ready.status == 503 {
            break ready;
        }
        assert!(
            stopping.elapsed() < Duration::from_millis(900),
            "still ready: {}",
            ready.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(not_ready.json, json!({"status": "shutting_down"}));
    assert_eq!(get("/health/live").await.status, 200);
    let served = send(
        client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"model": "m-x", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(
        served.status, 200,
        "requests are still served while draining"
    );
    stop.await.unwrap();
    assert!(
        stopping.elapsed() >= Duration::from_secs(1),
        "the listener stayed open for the shutdown delay"
    );
    let gone = client.get(format!("{url}/health/ready")).send().await;
    assert!(gone.is_err(), "nothing listens after the stop");
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let gw = Gateway::start_with("[metrics]\nenabled = false\n", None).await;
    let (status, _, body) = scrape(&gw, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "metrics_disabled");
    gw.stop().await;
}

#[tokio::test]
async fn the_binary_writes_one_json_access_line_per_request_without_prompts_or_keys() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logged = served_for_access_lines(dir.path(), &upstream, None).await;
    let (mut served, url) = (logged.served, logged.url);
    let (key_id, secret, token) = (
        logged.key_id.as_str(),
        logged.secret.as_str(),
        ADMIN_OF_LOGGED,
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let prompt = "the words of a private prompt";
    let answer = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "m-x", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let request_id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let missing = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "no-such-model", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    served.sigterm();
    assert!(served.exit(Duration::from_secs(10)).await.success());

    let (stdout, stderr) = served.output();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .filter(|line: &Value| line["fields"]["message"] == "request")
        .collect();
    assert_eq!(lines.len(), 2, "one line per proxied request:\n{stdout}");
    let line = &lines[0]["fields"];
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(line["request_id"], request_id.as_str());
    assert_eq!(line["client_key_id"], key_id);
    assert_eq!(line["model"], "m-x");
    assert_eq!(line["backend"], "alpha");
    assert_eq!(line["pool"], "primary");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["status"], 200);
    assert_eq!(line["outcome"], "success");
    assert!(
        line["latency_ms"].is_u64() && line["ttfb_ms"].is_u64(),
        "{line}"
    );
    assert_eq!(line["prompt_tokens"], 10);
    assert_eq!(line["completion_tokens"], 3);
    let refused = &lines[1]["fields"];
    // The model the client named, even one nothing serves (metrics label it `(unrouted)`).
    assert_eq!(refused["model"], "no-such-model");
    assert_eq!(refused["status"], 404);
    assert_eq!(refused["attempts"], 0);
    assert_eq!(refused["error_kind"], "not_found_error");
    for secret_text in [prompt, secret, token, UPSTREAM_KEY_OF_LOGGED] {
        assert!(
            !stdout.contains(secret_text) && !stderr.contains(secret_text),
            "`{secret_text}` is in the log"
        );
    }
}

/// The admin token of [`served_for_access_lines`].
const ADMIN_OF_LOGGED: &str = "pga-access-log-admin-token-0123456789";
/// The upstream key of [`served_for_access_lines`]' backend (it must never be logged).
const UPSTREAM_KEY_OF_LOGGED: &str = "sk-ACCESSLOG-upstream-key";

/// A `poolgate serve --log-format json` with a backend at a mock upstream serving `m-x`, and a
/// client key.
struct Logged {
    served: Served,
    url: String,
    key_id: String,
    secret: String,
}

/// Starts [`Logged`], with `[telemetry] access_log_flush_ms = flush_ms` when given.
async fn served_for_access_lines(
    dir: &std::path::Path,
    upstream: &MockUpstream,
    flush_ms: Option<u64>,
) -> Logged {
    let config = dir.join("poolgate.toml");
    let mut args = vec!["--log-format", "json"];
    if let Some(flush_ms) = flush_ms {
        std::fs::write(
            &config,
            format!("[telemetry]\naccess_log_flush_ms = {flush_ms}\n"),
        )
        .unwrap();
        args.extend(["--config", config.to_str().unwrap()]);
    }
    let mut served = Served::spawn(
        &dir.join("data"),
        &args,
        &[("POOLGATE_ADMIN_TOKEN", ADMIN_OF_LOGGED)],
    );
    let url = served.url().await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{url}/admin/api/backends"))
        .bearer_auth(ADMIN_OF_LOGGED)
        .json(
            &json!({"name": "alpha", "api_base_url": upstream.openai_base_url(),
            "api_key": UPSTREAM_KEY_OF_LOGGED, "model_mappings": {"m-x": "up-m-x"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let key: Value = client
        .post(format!("{url}/admin/api/keys"))
        .bearer_auth(ADMIN_OF_LOGGED)
        .json(&json!({"name": "logged"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Logged {
        served,
        url,
        key_id: key["id"].as_str().unwrap().to_owned(),
        secret: key["key"].as_str().unwrap().to_owned(),
    }
}

/// Sends `count` chat completions at once; every one must be answered 200.
async fn chat_burst(url: &str, key: &str, count: usize) {
    let client = reqwest::Client::new();
    let answers = futures_util::future::join_all((0..count).map(|_| {
        client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "m-x", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }
}

/// The access lines in `stdout` (each line must be whole JSON: batches never split a line).
fn access_lines(stdout: &str) -> usize {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"))
        })
        .filter(|line| line["fields"]["message"] == "request")
        .count()
}

#[tokio::test]
async fn access_lines_are_gathered_and_all_written_by_the_exit() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A minute between flushes: only the exit can write them.
    let Logged {
        mut served,
        url,
        secret: key,
        ..
    } = served_for_access_lines(dir.path(), &upstream, Some(60_000)).await;
    chat_burst(&url, &key, 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        access_lines(&served.output().0),
        0,
        "written before the flush:\n{}",
        served.log()
    );
    served.sigterm();
    assert!(served.exit(Duration::from_secs(10)).await.success());
    assert_eq!(access_lines(&served.output().0), 40, "{}", served.log());
}

#[tokio::test]
async fn gathered_access_lines_are_written_every_flush_interval() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Logged {
        mut served,
        url,
        secret: key,
        ..
    } = served_for_access_lines(dir.path(), &upstream, Some(50)).await;
    chat_burst(&url, &key, 40).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while access_lines(&served.output().0) < 40 {
        assert!(Instant::now() < deadline, "not flushed:\n{}", served.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.sigterm();
    assert!(served.exit(Duration::from_secs(10)).await.success());
    assert_eq!(access_lines(&served.output().0), 40, "{}", served.log());
}

/// The requests of `class` answered to no route (refused before routing) so far.
fn unrouted(text: &str, class: &str) -> f64 {
    sum(
        text,
        "poolgate_requests_total",
        &[
            ("model", "(unrouted)"),
            ("status_class", class),
            ("outcome", "error"),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn hardening_refusals_and_a_failover_before_content_are_counted() {
    let started = Instant::now();
    let gw = Gateway::start_with(
        "[proxy]\nmax_in_flight = 1\nmax_body_bytes = 2048\n\
         [server]\nbody_read_timeout_seconds = 1\nbody_min_rate_bytes_per_second = 100\n",
        None,
    )
    .await;
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    backend(
        &gw,
        "alpha",
        &first.openai_base_url(),
        "primary",
        "m-x",
        json!({}),
    )
    .await;
    backend(
        &gw,
        "beta",
        &second.openai_base_url(),
        "fallback",
        "m-x",
        json!({}),
    )
    .await;

    // A stream that dies after its role chunk: held back, so the fallback answers it.
    first.push(Reply::Stream(StreamSpec::new(3).die_after(0)));
    let streamed = send(chat(&gw, "m-x", true)).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text);
    assert!(streamed.text.contains("chunk2"), "{}", streamed.text);
    let text = metrics(&gw).await;
    let attempts = |backend: &str, result: &str| {
        sum(
            &text,
            "poolgate_upstream_attempts_total",
            &[("backend", backend), ("result", result)],
        )
    };
    assert_eq!(attempts("alpha", "server_error"), Some(1.0), "{text}");
    assert_eq!(attempts("beta", "success"), Some(1.0), "{text}");
    let failovers = [
        ("model", "m-x"),
        ("from_pool", "primary"),
        ("to_pool", "fallback"),
    ];
    assert_eq!(
        sum(&text, "poolgate_failovers_total", &failovers),
        Some(1.0)
    );
    let retries = [("model", "m-x"), ("reason", "server_error")];
    assert_eq!(sum(&text, "poolgate_retries_total", &retries), Some(1.0));
    let served = [
        ("model", "m-x"),
        ("backend", "beta"),
        ("status_class", "2xx"),
    ];
    assert_eq!(sum(&text, "poolgate_requests_total", &served), Some(1.0));

    // 413: a body over `proxy.max_body_bytes`, refused before routing.
    let big = gw.proxy("/v1/chat/completions").json(&json!({
        "model": "m-x", "messages": [{"role": "user", "content": "x".repeat(4096)}]}));
    assert_eq!(send(big).await.status, 413);
    let text = metrics(&gw).await;
    assert_eq!(unrouted(&text, "4xx"), 1.0, "{text}");

    // 408: a body that stops arriving.
    let stalled = futures_util::stream::once(async { Ok::<_, std::io::Error>(&b"{\"model\""[..]) })
        .chain(futures_util::stream::pending());
    let timed_out = gw
        .proxy("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stalled));
    assert_eq!(send(timed_out).await.status, 408);
    let text = metrics(&gw).await;
    assert_eq!(unrouted(&text, "4xx"), 2.0, "{text}");

    // 503: the only in-flight slot is taken by a slow answer.
    second.push(Reply::content("slow").delayed(1_500));
    let slow = tokio::spawn(send(chat(&gw, "m-x", false)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while second.calls() < 2 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let overloaded = send(chat(&gw, "m-x", false)).await;
    assert_eq!(overloaded.status, 503, "{}", overloaded.text);
    assert!(overloaded.header("retry-after-ms").is_some());
    assert_eq!(slow.await.unwrap().status, 200);
    let text = metrics(&gw).await;
    assert_eq!(unrouted(&text, "5xx"), 1.0, "{text}");
    let in_flight = sum(&text, "poolgate_requests_in_flight", &[]);
    assert_eq!(in_flight, Some(0.0), "every request ended");
    // The serving layer's connection counters are read at scrape time.
    let accepted = sum(&text, "poolgate_connections_accepted_total", &[]).unwrap();
    assert!(accepted >= 1.0, "{text}");
    assert!(sum(&text, "poolgate_connections_open", &[]).unwrap() >= 1.0);
    assert_eq!(
        sum(&text, "poolgate_connections_rejected_total", &[]),
        Some(0.0)
    );
    assert_eq!(sum(&text, "poolgate_accept_errors_total", &[]), Some(0.0));
    gw.stop().await;
    println!("hardening outcomes counted in {:?}", started.elapsed());
}
