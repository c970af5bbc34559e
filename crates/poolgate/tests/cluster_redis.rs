//! Several gateway instances sharing PostgreSQL and Redis (cluster mode), end to end: real
//! PostgreSQL and redis-server started by the test on free ports, three in-process gateways
//! started together, real mock upstreams counting what they see.
//!
//! 1. a backend's RPM limit holds across all instances together;
//! 2. a bucket of 20 admits exactly 20 of 150 simultaneous requests across instances;
//! 3. a 429 seen by one instance keeps every instance away for its `Retry-After`, the fallback
//!    serves meanwhile, and one probe in the whole cluster brings the backend back;
//! 4. a storm of simultaneous 429s raises the backoff level once, and a later, shorter
//!    `Retry-After` leaves the running cooldown as it is;
//! 6. Redis killed under load: no 5xx, at most the limit (+15 %) admitted meanwhile, the
//!    degraded state visible, shared mode back by itself; Redis frozen: no request waits much
//!    longer than the Redis call timeout;
//! 7. a client key's `tpm_limit` holds across instances (estimates taken in the admission call,
//!    extra usage charged afterwards), and a request larger than it is refused everywhere;
//! 8. an upstream that told one instance it has no tokens left is held back by all of them
//!    until its reset;
//! 9. a client key's budget is spent once for the whole cluster (and survives Redis losing its
//!    data);
//! 10. a backend's monthly spend cap is the cluster's, reserved per attempt in the shared state:
//!     every instance skips it once the others spent it (one that sent nothing to it included),
//!     and a burst of 150 over three instances is served exactly as far as the cap holds;
//!
//! and issue #14's protections in cluster mode: a key's `max_parallel_requests` (per instance)
//! and its shared RPM bucket both apply, `proxy.max_in_flight` answers 503, a declared 1 GiB
//! body is refused with 413 before it is read, and no bucket level is checkpointed locally.
#![expect(clippy::unwrap_used, reason = "test")]

mod cluster;
mod common;
mod services;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::{backend_toml, chat, chat_as, within, Cluster};
use futures_util::future::join_all;
use mock_upstream::{MockConfig, MockUpstream, Reply, ReportedUsage};
use poolgate::token_count::{estimate_request, EstimateSettings, TokenCounter, WireFormat};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Redis answering, on a debug build sharing 2 cores with the test's load: 1,000 simultaneous
/// admissions through three in-process instances can take longer than the default 50 ms call
/// timeout, which would (rightly) switch instances to their local shares. These tests are about
/// the shared buckets, so they give Redis time to answer; the timeout and degraded mode are the
/// subject of the last test, with the defaults.
const SLOW_MACHINE: &str = "call_timeout_ms = 2000";

/// Failed Redis calls (`poolgate_redis_errors_total`, every operation) over every instance.
async fn redis_errors(cluster: &Cluster) -> u64 {
    let mut failed = 0;
    for gateway in &cluster.instances {
        let metrics = metrics_text(gateway).await;
        for line in metrics.lines() {
            if let Some(sample) = line.strip_prefix("poolgate_redis_errors_total{") {
                let value = sample.rsplit(' ').next().unwrap_or_default();
                failed += value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
            }
        }
    }
    failed
}

/// An instance's `/metrics` text.
async fn metrics_text(gateway: &common::Gateway) -> String {
    gateway
        .client
        .get(format!("{}/metrics", gateway.url))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn statuses(answers: &[common::Answer]) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.status).or_insert(0) += 1;
    }
    counts
}

/// The whole tokens a bucket of `per_minute` regains in `elapsed`.
fn regained(per_minute: u64, elapsed: Duration) -> u64 {
    u64::try_from(u128::from(per_minute) * elapsed.as_millis() / 60_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_rpm_limit_holds_across_all_instances_together() {
    let upstream = MockUpstream::start().await;
    let toml = backend_toml(
        "a",
        &upstream.openai_base_url(),
        "primary",
        "rpm_limit = 60",
    );
    let cluster = Cluster::start(3, Some(SLOW_MACHINE), &toml).await;

    let started = Instant::now();
    let answers = join_all((0..1000).map(|i| chat(&cluster.instances[i % 3]))).await;
    let elapsed = started.elapsed();

    let counts = statuses(&answers);
    let ok = counts.get(&200).copied().unwrap_or(0);
    let limited = counts.get(&429).copied().unwrap_or(0);
    assert_eq!(ok + limited, 1000, "only 200 and 429: {counts:?}");
    assert_eq!(
        upstream.calls(),
        ok,
        "every admitted request reached the upstream"
    );
    // A full bucket of 60, plus what it regains while the test runs (1 per second).
    let most = 60 + regained(60, elapsed) as usize;
    assert!(
        (60..=most).contains(&ok),
        "{ok} admitted across 3 instances in {elapsed:?}; the limit allows 60..={most}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_bucket_of_20_admits_exactly_20_of_150_simultaneous_requests() {
    let upstream = MockUpstream::start().await;
    let toml = backend_toml("a", &upstream.openai_base_url(), "primary", "");
    let cluster = Cluster::start(3, Some(SLOW_MACHINE), &toml).await;
    let (_, key) = cluster.instances[0]
        .create_key(json!({"name": "app", "rpm_limit": 20}))
        .await;
    // Every instance knows the key (listing models spends no token).
    for gateway in &cluster.instances {
        within("the key is known", Duration::from_secs(2), || async {
            let answer = common::send(
                gateway
                    .client
                    .get(format!("{}/v1/models", gateway.url))
                    .bearer_auth(&key),
            )
            .await;
            answer.status == 200
        })
        .await;
    }

    let started = Instant::now();
    let answers = join_all((0..150).map(|i| chat_as(&cluster.instances[i % 3], &key))).await;
    let elapsed = started.elapsed();
    let counts = statuses(&answers);
    let ok = counts.get(&200).copied().unwrap_or(0) as u64;
    assert_eq!(
        ok + counts.get(&429).copied().unwrap_or(0) as u64,
        150,
        "{counts:?}"
    );
    // 20, plus one token per 3 s should the test take that long.
    assert!(
        (20..=20 + regained(20, elapsed)).contains(&ok),
        "{ok} admitted in {elapsed:?}"
    );
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert!(
        refused.text.contains("20 requests per minute"),
        "the key's own limit answered: {}",
        refused.text
    );
    assert_eq!(upstream.calls() as u64, ok);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_instance_keeps_every_instance_away_and_one_probe_brings_it_back() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    let toml = format!(
        "[cooldown]\nbase_seconds = 1\nmax_seconds = 60\n{}{}",
        backend_toml("a", &primary.openai_base_url(), "primary", ""),
        backend_toml("b", &fallback.openai_base_url(), "fallback", "")
    );
    let cluster = Cluster::start(3, Some(""), &toml).await;
    // Every instance has used the primary once (its view of it is current).
    for gateway in &cluster.instances {
        assert_eq!(chat(gateway).await.status, 200);
    }
    assert_eq!(primary.calls(), 3);

    primary.push(Reply::rate_limited(Some(3)));
    let sent = Instant::now();
    let first = chat(&cluster.instances[0]).await;
    assert_eq!(first.status, 200, "the fallback serves: {first}");
    assert_eq!((primary.calls(), fallback.calls()), (4, 1));

    // For the next 2.9 s, requests through every instance go to the fallback only.
    let mut i = 0;
    while sent.elapsed() < Duration::from_millis(2_900) {
        let answer = chat(&cluster.instances[i % 3]).await;
        assert_eq!(answer.status, 200, "{answer}");
        assert_eq!(
            primary.calls(),
            4,
            "instance {} sent to a cooling backend",
            i % 3
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(i >= 20, "only {i} requests in the cooldown");

    // The cooldown ends at 3 s (no jitter). A burst through all instances at 3.05 s: one probe
    // (slow to answer) goes to the primary — it is back — everything else to the fallback. The
    // probe answers after 2 s: every request of the burst is routed while it is in flight
    // (on a loaded machine the burst took over 500 ms, and a request routed after the probe
    // succeeded rightly goes to the primary).
    tokio::time::sleep_until(sent + Duration::from_millis(3_050)).await;
    primary.push(Reply::Ok.delayed(2_000));
    let burst = join_all((0..30).map(|i| chat(&cluster.instances[i % 3]))).await;
    assert!(
        burst.iter().all(|a| a.status == 200),
        "{:?}",
        statuses(&burst)
    );
    assert_eq!(primary.calls(), 5, "exactly one probe in the whole cluster");
    // The probe succeeded: the primary serves again, on every instance.
    for gateway in &cluster.instances {
        within(
            "the primary serves again",
            Duration::from_secs(1),
            || async {
                let before = primary.calls();
                chat(gateway).await.status == 200 && primary.calls() > before
            },
        )
        .await;
    }
    cluster.stop().await;
}

/// The cooldown of backend `id` as instance `i` shows it: (level, absolute end in Unix ms).
async fn cooldown_of(cluster: &Cluster, i: usize, id: &str) -> (u64, Option<i64>) {
    let backend: Value = cluster.instances[i].backend(id).await;
    let level = backend["consecutive_429_count"].as_u64().unwrap();
    let until = backend["cooldown_until"]
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.timestamp_millis());
    (level, until)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_429s_raises_the_level_once_and_a_shorter_retry_after_changes_nothing() {
    let upstream = MockUpstream::start().await;
    let toml = format!(
        "[cooldown]\nbase_seconds = 60\nmax_seconds = 600\n{}",
        backend_toml("a", &upstream.openai_base_url(), "primary", "")
    );
    let cluster = Cluster::start(3, Some(""), &toml).await;
    let id = cluster.instances[0].data().live().backends[0]
        .id()
        .to_string();
    // 29 answers 429 (no Retry-After) after 300 ms; the 30th, later, says `Retry-After: 1`.
    upstream.push_all((0..29).map(|_| Reply::rate_limited(None).delayed(300)));
    upstream.push(Reply::rate_limited(Some(1)).delayed(1_500));
    let storm = tokio::spawn({
        let cluster_urls: Vec<_> = cluster.instances.iter().map(|g| g.url.clone()).collect();
        async move {
            let client = reqwest::Client::new();
            join_all((0..30).map(|i| {
                client
                    .post(format!("{}/v1/chat/completions", cluster_urls[i % 3]))
                    .bearer_auth(common::ADMIN_TOKEN)
                    .json(&json!({"model": cluster::MODEL, "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
            }))
            .await
        }
    });
    // All 30 were sent before the first 429 came back.
    within(
        "30 requests reach the upstream",
        Duration::from_secs(5),
        || async { upstream.calls() == 30 },
    )
    .await;
    // After the 29 quick ones: level 1, a 60 s cooldown, the same on every instance.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (level, until) = cooldown_of(&cluster, 0, &id).await;
    assert_eq!(level, 1, "29 simultaneous 429s are one episode");
    let until = until.expect("cooling");
    let left = until - poolgate::domain::now_ms();
    assert!((55_000..=60_000).contains(&left), "{left} ms left");
    for i in 1..3 {
        let (other_level, other_until) = cooldown_of(&cluster, i, &id).await;
        assert_eq!(other_level, 1);
        assert!(
            (other_until.unwrap() - until).abs() < 100,
            "instance {i} sees the same deadline"
        );
    }
    // The late 429 with `Retry-After: 1` lands: nothing moves.
    let answers = storm.await.unwrap();
    assert!(answers
        .iter()
        .all(|a| a.as_ref().is_ok_and(|r| r.status() == 429)));
    let (level_after, until_after) = cooldown_of(&cluster, 1, &id).await;
    assert_eq!(level_after, 1);
    assert!((until_after.unwrap() - until).abs() < 100, "not shortened");
    assert_eq!(upstream.calls(), 30, "nothing was sent while cooling");
    cluster.stop().await;
}

/// Sends requests through every instance, `workers` at a time, until `stop` is set; counts the
/// answers by status and the slowest one.
struct Load {
    stop: Arc<AtomicBool>,
    by_status: Arc<parking_lot::Mutex<std::collections::BTreeMap<u16, usize>>>,
    slowest: Arc<parking_lot::Mutex<Duration>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Cluster, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let by_status = Arc::new(parking_lot::Mutex::new(std::collections::BTreeMap::new()));
        let slowest = Arc::new(parking_lot::Mutex::new(Duration::ZERO));
        let urls: Vec<String> = cluster.instances.iter().map(|g| g.url.clone()).collect();
        let client = reqwest::Client::new();
        let tasks = (0..workers)
            .map(|worker| {
                let (stop, by_status, slowest) = (
                    Arc::clone(&stop),
                    Arc::clone(&by_status),
                    Arc::clone(&slowest),
                );
                let url = format!("{}/v1/chat/completions", urls[worker % urls.len()]);
                let client = client.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let status = client
                            .post(&url)
                            .bearer_auth(common::ADMIN_TOKEN)
                            .json(&json!({"model": cluster::MODEL, "messages": [{"role": "user", "content": "hi"}]}))
                            .send()
                            .await
                            .map_or(0, |r| r.status().as_u16());
                        let took = started.elapsed();
                        *by_status.lock().entry(status).or_insert(0) += 1;
                        {
                            let mut slowest = slowest.lock();
                            *slowest = (*slowest).max(took);
                        }
                        // Not a busy loop on 429s: a request every ~10 ms per worker.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            by_status,
            slowest,
            tasks,
        }
    }

    fn reset_slowest(&self) {
        *self.slowest.lock() = Duration::ZERO;
    }

    async fn finish(self) -> (std::collections::BTreeMap<u16, usize>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let counts = self.by_status.lock().clone();
        let slowest = *self.slowest.lock();
        (counts, slowest)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_degrades_to_shares_and_comes_back_redis_frozen_costs_the_timeout()
{
    let upstream = MockUpstream::start().await;
    // 600/min = 10/s across the cluster; each of 3 instances gets 200/min while degraded.
    let toml = backend_toml(
        "a",
        &upstream.openai_base_url(),
        "primary",
        "rpm_limit = 600",
    );
    let mut cluster = Cluster::start(3, Some(""), &toml).await;
    assert_eq!(cluster.modes().await, ["shared"; 3]);
    within(
        "every instance sees 3 alive",
        Duration::from_secs(3),
        || async { cluster.view(0).await["runtime_state"]["live_instances"] == 3 },
    )
    .await;

    // Load drains the bucket (600 at once), then runs at what it regains.
    let load = Load::start(&cluster, 12);
    within("the bucket is drained", Duration::from_secs(20), || async {
        load.by_status.lock().get(&429).copied().unwrap_or(0) > 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Redis dies. Measured from the kill to its return: what reached the upstream.
    let redis = cluster.redis.as_mut().unwrap();
    let before = upstream.calls();
    let killed = Instant::now();
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cluster.modes().await,
        ["degraded"; 3],
        "visible in the admin API"
    );
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let outage = killed.elapsed();
    let during = upstream.calls() - before;
    let redis = cluster.redis.as_mut().unwrap();
    redis.restart().await;
    // 10 per second for the outage, plus 15 %.
    let allowed = regained(600, outage) as f64 * 1.15;
    println!("{during} admitted during a {outage:?} outage (allowed {allowed:.1})");
    assert!(
        (during as f64) <= allowed,
        "{during} admitted in a {outage:?} outage; the limit allows {allowed:.1}"
    );
    assert!(
        during > 0,
        "degraded mode still admits (each instance its share)"
    );

    // Back to shared mode by itself, within a few seconds.
    let took = within("shared mode again", Duration::from_secs(5), || async {
        cluster.modes().await == ["shared"; 3]
    })
    .await;
    println!("shared mode {took:?} after Redis came back");
    let (counts, _) = load.finish().await;
    assert!(
        counts.keys().all(|status| *status == 200 || *status == 429),
        "no 5xx, no failed request: {counts:?}"
    );

    // Frozen: calls time out after 50 ms; the breaker opens after 3; nobody waits much longer.
    let redis = cluster.redis.as_ref().unwrap();
    let load = Load::start(&cluster, 6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.reset_slowest();
    redis.freeze();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (counts, slowest) = load.finish().await;
    redis.thaw();
    println!("Redis frozen: slowest request {slowest:?}, answers {counts:?}");
    assert!(
        counts.keys().all(|status| *status == 200 || *status == 429),
        "{counts:?}"
    );
    assert!(
        slowest < Duration::from_millis(50 + 300),
        "the slowest request took {slowest:?} with Redis frozen (call timeout 50 ms)"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_to_fail_closed_answer_503_while_redis_is_down() {
    let upstream = MockUpstream::start().await;
    let toml = format!(
        "{}{}",
        backend_toml(
            "limited",
            &upstream.openai_base_url(),
            "primary",
            "rpm_limit = 600"
        ),
        // Another model on a backend without limits: nothing to check, it keeps serving.
        backend_toml("free", &upstream.openai_base_url(), "primary", "")
            .replace("m = \"up-m\"", "free = \"up-free\""),
    );
    let toml = format!(
        "{toml}{}",
        // And one on a backend with a monthly spend cap (set below): its reservation is a
        // Redis call, refused while Redis is down.
        backend_toml("capped", &upstream.openai_base_url(), "primary", "")
            .replace("m = \"up-m\"", "capped = \"up-capped\"")
    );
    let mut cluster = Cluster::start(2, Some("fail_closed = true"), &toml).await;
    assert_eq!(chat(&cluster.instances[1]).await.status, 200);
    let capped = cluster.instances[0].backend_id("capped").await;
    let answer = common::send(
        cluster.instances[0]
            .admin(reqwest::Method::PATCH, &format!("/backends/{capped}"))
            .json(&json!({"monthly_spend_cap_usd": 10})),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    let ask_capped = |gateway: &common::Gateway| {
        common::send(
            gateway
                .proxy("/v1/chat/completions")
                .json(&json!({"model": "capped", "messages": [{"role": "user", "content": "hi"}]})),
        )
    };
    for gateway in &cluster.instances {
        within("the cap is known", Duration::from_secs(10), || async {
            gateway.backend(&capped).await["spend"]["monthly"]["limit_usd"] == json!(10.0)
        })
        .await;
        let answer = ask_capped(gateway).await;
        assert_eq!(answer.status, 200, "{answer}");
    }

    cluster.redis.as_mut().unwrap().kill();
    for gateway in &cluster.instances {
        let refused = chat(gateway).await;
        assert_eq!(refused.status, 503, "{refused}");
        assert_eq!(
            refused.json["error"]["code"], "limiter_unavailable",
            "{refused}"
        );
        assert_eq!(refused.retry_after(), Some(1));
        let free = common::send(
            gateway
                .proxy("/v1/chat/completions")
                .json(&json!({"model": "free", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
        assert_eq!(free.status, 200, "{free}");
        let refused = ask_capped(gateway).await;
        assert_eq!(refused.status, 503, "{refused}");
        assert_eq!(
            refused.json["error"]["code"], "limiter_unavailable",
            "{refused}"
        );
    }
    // Degraded once the breaker opened (three failed calls; the heartbeat makes one a second).
    within(
        "both instances degraded",
        Duration::from_secs(3),
        || async { cluster.modes().await == ["degraded"; 2] },
    )
    .await;
    let view = cluster.view(0).await;
    assert_eq!(view["runtime_state"]["fail_closed"], true);
    // #12's metrics see it: the degraded gauge and the failed calls by script.
    let metrics = metrics_text(&cluster.instances[0]).await;
    assert!(
        metrics.contains("\npoolgate_redis_degraded 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("poolgate_redis_errors_total{operation=\"admit\"}"),
        "{metrics}"
    );

    cluster.redis.as_mut().unwrap().restart().await;
    within(
        "limits are checked again",
        Duration::from_secs(5),
        || async { chat(&cluster.instances[0]).await.status == 200 },
    )
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_holds_in_cluster_mode_parallel_and_shared_limits_overload_and_413() {
    let upstream = MockUpstream::start_with(MockConfig {
        default_reply: Reply::Ok.delayed(1_500),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let toml = format!(
        "[proxy]\nmax_in_flight = 4\n{}",
        backend_toml("a", &upstream.openai_base_url(), "primary", "")
    );
    let cluster = Cluster::start(2, Some(SLOW_MACHINE), &toml).await;
    let (_, key) = cluster.instances[0]
        .create_key(json!({"name": "app", "rpm_limit": 3, "max_parallel_requests": 2}))
        .await;
    for gateway in &cluster.instances {
        within("the key is known", Duration::from_secs(2), || async {
            let answer = common::send(
                gateway
                    .client
                    .get(format!("{}/v1/models", gateway.url))
                    .bearer_auth(&key),
            )
            .await;
            answer.status == 200
        })
        .await;
    }

    // Three at once through one instance: two slots, the third is refused before any token is
    // taken from the shared bucket.
    let answers = join_all((0..3).map(|_| chat_as(&cluster.instances[0], &key))).await;
    let texts: Vec<&str> = answers.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(statuses(&answers), [(200, 2), (429, 1)].into(), "{texts:?}");
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refused.json["error"]["code"], "concurrency_limit_exceeded");
    assert_eq!(refused.headers["retry-after"], "1");
    // The shared bucket of 3: one token left, spent through the other instance; then the key's
    // own rate limit answers there too.
    assert_eq!(chat_as(&cluster.instances[1], &key).await.status, 200);
    let limited = chat_as(&cluster.instances[1], &key).await;
    assert_eq!(limited.status, 429, "{limited}");
    assert!(limited.text.contains("3 requests per minute"), "{limited}");

    // Overload: 8 at once against max_in_flight = 4 on one instance.
    let answers = join_all((0..8).map(|_| chat(&cluster.instances[1]))).await;
    let counts = statuses(&answers);
    assert_eq!(counts.get(&200), Some(&4), "{counts:?}");
    assert_eq!(counts.get(&503), Some(&4), "{counts:?}");
    let overloaded = answers.iter().find(|a| a.status == 503).unwrap();
    assert_eq!(overloaded.json["error"]["code"], "overloaded");

    // A declared 1 GiB is refused at once, before a byte of it is read.
    let addr = cluster.instances[0]
        .url
        .trim_start_matches("http://")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n",
        common::ADMIN_TOKEN
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0_u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer))
        .await
        .expect("answered within 2 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The buckets live in Redis: no instance checkpoints bucket levels into the database (the
    // checkpoint interval is 1 s).
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let db = sqlx::PgPool::connect(&cluster.database_url).await.unwrap();
    let levels: i64 = sqlx::query_scalar("SELECT count(*) FROM limiter_levels")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(levels, 0);
    cluster.stop().await;
}

/// Issue #11: a client key's `tpm_limit` holds across instances together — each request's
/// estimate is taken from the shared bucket in the admission call, and the usage beyond it is
/// charged there afterwards — and a request larger than the whole limit is refused everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keys_tpm_is_shared_by_every_instance() {
    let upstream = MockUpstream::start().await;
    // Every answer reports 330 tokens used; a request (max_tokens 100) reserves ~105.
    upstream.set_default(Reply::status(
        200,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 30, "total_tokens": 330}
        }),
    ));
    let toml = backend_toml("a", &upstream.openai_base_url(), "primary", "");
    let cluster = Cluster::start(2, Some(SLOW_MACHINE), &toml).await;
    let (_, key) = cluster.instances[0]
        .create_key(json!({"name": "tokens", "tpm_limit": 1000}))
        .await;
    let ask = |i: usize, max_tokens: u64| {
        let gateway = &cluster.instances[i];
        common::send(
            gateway
                .client
                .post(format!("{}/v1/chat/completions", gateway.url))
                .bearer_auth(&key)
                .json(&json!({"model": cluster::MODEL, "max_tokens": max_tokens,
                              "messages": [{"role": "user", "content": "hi"}]})),
        )
    };
    // Every instance knows the key (listing models spends nothing).
    let gateway = &cluster.instances[1];
    within("the key is known", Duration::from_secs(3), || async {
        common::send(
            gateway
                .client
                .get(format!("{}/v1/models", gateway.url))
                .bearer_auth(&key),
        )
        .await
        .status
            == 200
    })
    .await;
    let before = upstream.calls();

    // Three requests alternating between the instances use 990 of the 1000: the extra charges
    // land in the shared bucket (a settle is its own task: 200 ms between requests let it
    // finish; the bucket refills ~17 tokens a second meanwhile, ~10 in all).
    for i in [0, 1, 0] {
        let answer = ask(i, 100).await;
        assert_eq!(answer.status, 200, "instance {i}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Alone, instance 1 would have 1000 − 330 left; shared, the bucket is spent.
    let refused = ask(1, 100).await;
    assert_eq!(refused.status, 429, "{refused}");
    assert_eq!(refused.json["error"]["code"], "rate_limit_exceeded");
    assert!(refused.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1000 tokens per minute"));
    assert!(refused.retry_after().is_some());
    assert_eq!(upstream.calls(), before + 3);

    // Larger than the whole limit: refused by every instance without a shared call.
    let too_large = ask(0, 5000).await;
    assert_eq!(too_large.status, 429, "{too_large}");
    assert_eq!(too_large.json["error"]["code"], "tpm_request_too_large");
    assert_eq!(too_large.header("x-should-retry"), Some("false"));
    assert_eq!(upstream.calls(), before + 3);
    cluster.stop().await;
}

/// Issue #11: an upstream that told one instance it has no tokens left is not sent to by any
/// instance until its reset (the block is announced on the change feed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_out_of_tokens_is_held_back_by_every_instance_until_its_reset() {
    let announcing = MockUpstream::start().await;
    let spare = MockUpstream::start().await;
    let toml = format!(
        "{}{}",
        backend_toml("announcing", &announcing.openai_base_url(), "primary", ""),
        backend_toml("spare", &spare.openai_base_url(), "fallback", "")
    );
    let cluster = Cluster::start(2, Some(SLOW_MACHINE), &toml).await;
    announcing.push(
        Reply::status(
            200,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
            }),
        )
        .with_header("x-ratelimit-limit-tokens", "30000")
        .with_header("x-ratelimit-remaining-tokens", "0")
        .with_header("x-ratelimit-reset-tokens", "2s"),
    );
    assert_eq!(chat(&cluster.instances[0]).await.status, 200);
    assert_eq!(announcing.calls(), 1);
    // The announcement travels on the change feed (a publish and a message: milliseconds).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in [1, 0, 1] {
        assert_eq!(chat(&cluster.instances[i]).await.status, 200);
    }
    assert_eq!((announcing.calls(), spare.calls()), (1, 3));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(chat(&cluster.instances[1]).await.status, 200);
    assert_eq!((announcing.calls(), spare.calls()), (2, 3));
    cluster.stop().await;
}

/// A shared budget window's `(spent, reserved)` as Redis holds it (0 for a missing field).
async fn shared_spend(mut conn: redis::aio::MultiplexedConnection, window: &str) -> (u64, u64) {
    let (spent, reserved): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(window)
        .arg("spent")
        .arg("reserved")
        .query_async(&mut conn)
        .await
        .unwrap();
    (spent.unwrap_or(0), reserved.unwrap_or(0))
}

/// Makes `upstream` report exactly the estimate of `body` (for `up-m`) as its usage, so spend
/// never passes a limit; returns that estimate's cost at $1 000 / Mtok (1 000 000 nano-dollars
/// per token).
fn report_the_estimate(upstream: &MockUpstream, body: &Value) -> u64 {
    let estimate = estimate_request(
        WireFormat::ChatCompletions,
        body.to_string().as_bytes(),
        TokenCounter::for_model("up-m"),
        &EstimateSettings::default(),
    );
    upstream.set_usage(Some(ReportedUsage {
        prompt_tokens: estimate.prompt.tokens,
        completion_tokens: estimate.output_reserve,
        ..ReportedUsage::default()
    }));
    estimate.total() * 1_000_000
}

/// Issue #11: a client key's budget is the cluster's — reserved in Redis in one atomic call per
/// request (every limited window, all or nothing) and settled there — so a key used through
/// three instances is refused by all of them once the shared budget is spent, with the same
/// 429 `budget_exceeded` as a single instance; and a Redis that lost its data (restarted without
/// persistence) starts again from what the instances know, not from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keys_budget_is_shared_by_every_instance() {
    let upstream = MockUpstream::start().await;
    let body = json!({"model": cluster::MODEL, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]});
    // The usage reported is exactly the request's estimate, so the budget is never overrun
    // (spend ≤ limit + Σ over requests in flight of (actual − estimate)⁺ = limit).
    let cost = report_the_estimate(&upstream, &body);
    // Room for 4 requests and a bit (in USD with 9 decimals).
    let limit = 4 * cost + cost / 2;
    let limit_usd = format!("{}.{:09}", limit / 1_000_000_000, limit % 1_000_000_000);
    let toml = format!(
        "{}[prices.\"up-m\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n",
        backend_toml("a", &upstream.openai_base_url(), "primary", "")
    );
    // A failed or late Redis call lets its instance reserve in its own ledger only (by design,
    // see `proxy::spend`), and the shared figure then never counts that request: not what is
    // tested here. So Redis gets the longest timeout allowed, 5 s (a failure in CI under
    // heavy load may have been that), and the test checks below that no call failed.
    let mut cluster = Cluster::start(3, Some("call_timeout_ms = 5000"), &toml).await;
    let (_, key) = cluster.instances[0]
        .create_key(json!({"name": "budgeted", "budget_daily_usd": limit_usd}))
        .await;
    let ask = |i: usize| {
        let gateway = &cluster.instances[i];
        common::send(
            gateway
                .client
                .post(format!("{}/v1/chat/completions", gateway.url))
                .bearer_auth(&key)
                .json(&body),
        )
    };
    for gateway in &cluster.instances {
        within("the key is known", Duration::from_secs(3), || async {
            common::send(
                gateway
                    .client
                    .get(format!("{}/v1/models", gateway.url))
                    .bearer_auth(&key),
            )
            .await
            .status
                == 200
        })
        .await;
    }

    within(
        "every instance in shared mode",
        Duration::from_secs(10),
        || async { cluster.modes().await.iter().all(|mode| mode == "shared") },
    )
    .await;
    let failed_before = redis_errors(&cluster).await;

    // Four requests through three instances fit; alone, each instance would admit four.
    let started = Instant::now();
    for i in [0, 1, 2, 0] {
        let answer = ask(i).await;
        assert_eq!(answer.status, 200, "instance {i}: {answer}");
    }
    // A settle is its own task; let the last one land, so that every instance's refusal below
    // shows it the whole day's spend (which its ledger keeps for the degraded mode).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No failed call also means that no instance left shared mode meanwhile (only failed calls
    // open the breaker).
    assert_eq!(
        redis_errors(&cluster).await,
        failed_before,
        "a Redis call (of any kind) failed while the budget was spent: a reservation may have \
         gone to one instance's ledger only (by design), so the refusals below need not hold"
    );
    let tomorrow = (chrono::Utc::now().date_naive() + chrono::Days::new(1)).format("%Y-%m-%d");
    let assert_refused = |answer: &common::Answer| {
        let message = answer.assert_budget_exceeded();
        assert!(
            message.starts_with("this key's daily budget of $")
                && message.ends_with(&format!("it resets at {tomorrow}T00:00:00Z")),
            "{message}"
        );
    };
    for i in [1, 2, 0] {
        assert_refused(&ask(i).await);
    }
    assert_eq!(
        upstream.calls(),
        4,
        "refused requests never reach the upstream"
    );

    // Concurrently, on every instance: still nothing more.
    let burst = join_all((0..12).map(|n| ask(n % 3))).await;
    for answer in &burst {
        assert_refused(answer);
    }
    assert_eq!(upstream.calls(), 4);

    // Redis loses its data: the shared figure is seeded again from the instances' own (the
    // database's spend restored at start-up, plus their spend and the shared figures since).
    cluster.redis.as_mut().unwrap().restart().await;
    let gateway = &cluster.instances[1];
    within("shared mode again", Duration::from_secs(10), || async {
        let answer = common::send(
            gateway
                .client
                .post(format!("{}/v1/chat/completions", gateway.url))
                .bearer_auth(&key)
                .json(&body),
        )
        .await;
        // Degraded meanwhile: the local ledger, which saw the day's shared spend, refuses too
        // (it would admit what was left of the budget when Redis went away).
        assert_refused(&answer);
        cluster.modes().await.iter().all(|mode| mode == "shared")
    })
    .await;
    for i in [0, 1, 2] {
        assert_refused(&ask(i).await);
    }
    assert_eq!(upstream.calls(), 4);
    eprintln!("shared budget across 3 instances: {:?}", started.elapsed());
    cluster.stop().await;
}

/// Issue #11: a backend's `monthly_spend_cap_usd` is the cluster's and reserved per attempt —
/// each attempt reserves its estimate at the backend's price in the shared month window
/// (`budget.lua` `take` on `budget:backend:<id>:m:<yyyymm>`, the figure the settles add to and
/// every instance's spend follower reads) — so requests in sequence through two instances stop
/// exactly where the cap stops holding whole estimates, the third instance (which sent nothing)
/// refuses too and shows the cluster's spend, and a burst of 150 simultaneous requests spread
/// over all three is served exactly as far as the cap holds (the mock reports exactly the
/// estimated usage: the documented overrun bound is zero). A Redis that lost its data starts
/// again from what the instances know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_monthly_spend_cap_is_reserved_across_every_instance() {
    use chrono::Datelike;
    let upstream = MockUpstream::start().await;
    let body = json!({"model": cluster::MODEL, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]});
    let cost = report_the_estimate(&upstream, &body);
    let toml = format!(
        "{}[prices.\"up-m\"]\ninput_per_mtok = 1000\noutput_per_mtok = 1000\n",
        backend_toml("capped", &upstream.openai_base_url(), "primary", "")
    );
    let settings = format!("{SLOW_MACHINE}\nheartbeat_ms = 100");
    let mut cluster = Cluster::start(3, Some(&settings), &toml).await;
    let started = Instant::now();
    let gateways = &cluster.instances;
    let id = gateways[0].backend_id("capped").await;
    let usd = |nanos: u64| format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
    let usd_number = |nanos: u64| json!(usd(nanos).parse::<f64>().unwrap());
    let set_cap = |nanos: u64| {
        let id = id.clone();
        async move {
            let answer = common::send(
                gateways[0]
                    .admin(reqwest::Method::PATCH, &format!("/backends/{id}"))
                    .json(&json!({"monthly_spend_cap_usd": usd(nanos)})),
            )
            .await;
            assert_eq!(answer.status, 200, "{answer}");
            for gateway in gateways {
                within(
                    "every instance has the cap",
                    Duration::from_secs(10),
                    || async {
                        gateway.backend(&id).await["spend"]["monthly"]["limit_usd"]
                            == usd_number(nanos)
                    },
                )
                .await;
            }
        }
    };
    let spent_on = |i: usize| {
        let id = id.clone();
        async move { gateways[i].backend(&id).await["spend"]["monthly"]["spent_usd"].clone() }
    };
    let ask = |i: usize| common::send(gateways[i].proxy("/v1/chat/completions").json(&body));
    let month_end = {
        let today = chrono::Utc::now().date_naive();
        let next = today
            .with_day(1)
            .unwrap()
            .checked_add_months(chrono::Months::new(1))
            .unwrap();
        format!("{}T00:00:00Z", next.format("%Y-%m-%d"))
    };
    let assert_capped = |answer: &common::Answer| {
        let message = answer.assert_budget_exceeded();
        assert!(
            message.starts_with("every backend for this model ")
                && message.contains("monthly spend cap")
                && message.ends_with(&format!("the first resets at {month_end}")),
            "{message}"
        );
    };
    // The shared month figure, read from Redis: (spent, reserved).
    let client = redis::Client::open(cluster.redis.as_ref().unwrap().url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let window = format!(
        "{{poolgate}}:v1:budget:backend:{id}:m:{}",
        chrono::Utc::now().format("%Y%m")
    );
    let shared_figure = || shared_spend(conn.clone(), &window);

    // Room for four estimates and a half: four requests through instances 0 and 1 fit (alone,
    // each would admit four), and every instance — 2 too — learns the cluster's spend.
    set_cap(4 * cost + cost / 2).await;
    for k in 1..=4_u64 {
        let answer = ask(usize::try_from(k - 1).unwrap() % 2).await;
        assert_eq!(answer.status, 200, "request {k}: {answer}");
        for i in 0..3 {
            within(
                "the cluster's spend is known",
                Duration::from_secs(10),
                || async { spent_on(i).await == usd_number(cost * k) },
            )
            .await;
        }
    }
    for i in [2, 1, 0] {
        assert_capped(&ask(i).await);
    }
    assert_eq!(upstream.calls(), 4);
    assert_eq!(shared_figure().await, (4 * cost, 0));

    // Room for six more: 150 simultaneous requests over the three instances, exactly six served.
    set_cap(10 * cost + cost / 2).await;
    let burst_started = Instant::now();
    let burst = join_all((0..150).map(|n| ask(n % 3))).await;
    let burst_took = burst_started.elapsed();
    let served = burst.iter().filter(|answer| answer.status == 200).count();
    for answer in burst.iter().filter(|answer| answer.status != 200) {
        assert_capped(answer);
    }
    assert_eq!(served, 6, "{:?}", statuses(&burst));
    assert_eq!(upstream.calls(), 10);
    // Zero overrun: the shared figure is exactly ten estimates, nothing left reserved (each
    // settle is its own task), and every instance follows it.
    within("the settles landed", Duration::from_secs(10), || async {
        shared_figure().await == (10 * cost, 0)
    })
    .await;
    for i in 0..3 {
        within(
            "the cluster's spend is known",
            Duration::from_secs(10),
            || async { spent_on(i).await == usd_number(10 * cost) },
        )
        .await;
    }

    // Redis loses its data: degraded meanwhile, each instance's ledger (which followed the
    // cluster's figure) refuses; back in shared mode, the next reservation seeds the shared
    // figure from what the instance knows, so nothing more fits.
    cluster.redis.as_mut().unwrap().restart().await;
    within("shared mode again", Duration::from_secs(10), || async {
        assert_capped(&ask(1).await);
        cluster.modes().await.iter().all(|mode| mode == "shared")
    })
    .await;
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    for i in [0, 1, 2] {
        assert_capped(&ask(i).await);
    }
    assert_eq!(shared_spend(conn, &window).await, (10 * cost, 0));
    assert_eq!(upstream.calls(), 10, "a spent cap sends nothing more");
    eprintln!(
        "shared backend cap across 3 instances: {:?} (burst of 150: {burst_took:?})",
        started.elapsed()
    );
    cluster.stop().await;
}
