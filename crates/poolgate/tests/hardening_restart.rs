//! Crashes and restarts of the real `poolgate serve` binary (issue #14, items 7, 8, 12): after a
//! `kill -9` under load every request whose answer completed has exactly one usage record; a
//! restart at 40 of 60 RPM allows at most 20 more (plus what refilled meanwhile), after a
//! graceful stop and after a crash; a start with a missing or wrong master key fails clearly and
//! leaves no stray `master.key`; a non-loopback `--listen` is warned about; log lines carry no
//! colour codes when the output is not a terminal.

#![expect(clippy::unwrap_used, reason = "test helpers")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::{serve_command, Binary};
use common::served::{poolgate_command, Served};
use mock_upstream::{MockConfig, MockUpstream};
use serde_json::json;
use tokio::time::Instant;

// === item 7: kill -9 under load ===

/// One request through the gateway: its request id if the whole answer arrived (a JSON body
/// that parses, or a stream that reached `[DONE]`).
async fn complete_answer(client: &reqwest::Client, url: &str, stream: bool) -> Option<String> {
    let body = json!({"model": "m", "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]});
    let response = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let id = response
        .headers()
        .get("x-request-id")?
        .to_str()
        .ok()?
        .to_owned();
    let text = response.text().await.ok()?;
    let complete = if stream {
        text.trim_end().ends_with("data: [DONE]")
    } else {
        serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["choices"].is_array())
    };
    complete.then_some(id)
}

#[tokio::test]
async fn after_kill_9_under_load_every_completed_request_has_one_record() {
    let upstream = MockUpstream::start_with(MockConfig {
        record_requests: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Binary::start(dir.path(), "").await;
    gateway
        .add_openai_backend("one", &upstream.openai_base_url(), "m")
        .await;

    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (completed, count, stop) = (completed.clone(), count.clone(), stop.clone());
            let url = gateway.url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..100 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match complete_answer(&client, &url, (worker + i) % 2 == 0).await {
                        Some(id) => {
                            completed.lock().unwrap().push(id);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        None if stop.load(Ordering::Relaxed) => break,
                        None => {}
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while count.load(Ordering::Relaxed) < 300 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-load: requests are in flight and the last batch is not stored yet.
    gateway.served.kill9();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let completed = completed.lock().unwrap().clone();
    println!(
        "killed after {} complete answers in {:?}",
        completed.len(),
        started.elapsed()
    );
    assert!(completed.len() >= 300, "{}", completed.len());

    let gateway = Binary::start(dir.path(), "").await;
    let records = gateway.usage_records(completed.len()).await;
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        *per_id
            .entry(record["request_id"].as_str().unwrap())
            .or_default() += 1;
    }
    let missing: Vec<_> = completed
        .iter()
        .filter(|id| !per_id.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} completed requests have no record: {missing:?}",
        missing.len()
    );
    let doubled: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "records stored twice: {doubled:?}");
    let log = gateway.stop().await;
    let replayed = log
        .lines()
        .find(|line| line.contains("replayed from the journal"))
        .unwrap_or("no replay line (everything was stored before the kill)");
    println!("{} records after the restart; {replayed}", records.len());
}

// === item 8: bucket levels across restarts ===

/// Sends `count` requests one after another; returns how many got 200 (the others get 429 at
/// once: the backend's bucket is empty and `max_wait` is 0).
async fn admitted(gateway: &Binary, count: usize) -> usize {
    let mut ok = 0;
    for _ in 0..count {
        let response = gateway
            .proxy("/v1/chat/completions")
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    ok
}

#[tokio::test]
async fn a_restart_at_40_of_60_rpm_allows_at_most_20_more() {
    let upstream = MockUpstream::start().await;
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut gateway = Binary::start(dir.path(), "").await;
        gateway
            .add_backend(
                json!({"name": "limited", "api_base_url": upstream.openai_base_url(),
                "api_key": "sk-limited-00000001", "rpm_limit": 60, "model_mappings": {"m": "m"}}),
            )
            .await;
        assert_eq!(admitted(&gateway, 40).await, 40);
        let spent_at = Instant::now();
        if crash {
            // Past one checkpoint interval (1 s), then no shutdown code at all.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            gateway.served.kill9();
        } else {
            gateway.stop().await;
        }
        let gateway = Binary::start(dir.path(), "").await;
        let after = admitted(&gateway, 30).await;
        // 60 RPM refills one per second: what came back while stopped is allowed too.
        let refilled = spent_at.elapsed().as_secs_f64().ceil() as usize;
        println!(
            "{}: {after} of 30 admitted after the restart ({refilled} s since the 40th)",
            if crash { "kill -9" } else { "graceful" }
        );
        assert!(after >= 20, "tokens were lost: {after}");
        assert!(
            after <= 20 + refilled,
            "{after} admitted, at most {} allowed",
            20 + refilled
        );
        gateway.stop().await;
    }
}

// === item 12: start-up ===

/// Runs a `poolgate serve` that must fail; returns its log.
async fn failed_start(mut command: std::process::Command) -> String {
    command.env_remove("POOLGATE_MASTER_KEY");
    let mut served = Served::spawn_command(command);
    let status = served.exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "the start succeeded:\n{}", served.log());
    served.log()
}

#[tokio::test]
async fn a_missing_or_wrong_master_key_fails_clearly_and_leaves_no_stray_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    let gateway = Binary::start(dir.path(), "").await;
    gateway.stop().await;
    assert!(key_file.exists());
    std::fs::remove_file(&key_file).unwrap();

    let log = failed_start(serve_command(dir.path(), "")).await;
    assert!(log.contains("no master key"), "{log}");
    assert!(!key_file.exists(), "a stray master.key was generated");

    let mut wrong = serve_command(dir.path(), "");
    wrong.env(
        "POOLGATE_MASTER_KEY",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let mut served = Served::spawn_command(wrong);
    let status = served.exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(
        served
            .log()
            .contains("not the one this database was created with"),
        "{}",
        served.log()
    );
    assert!(!key_file.exists(), "a stray master.key was generated");
}

#[tokio::test]
async fn a_public_listen_address_is_warned_about_and_logs_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut served = Served::spawn_command(poolgate_command(
        &["serve", "--listen", "0.0.0.0:0", "--data-dir", data],
        &[("POOLGATE_ADMIN_TOKEN", common::ADMIN_TOKEN)],
    ));
    let url = served.url().await;
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    served.sigterm();
    assert!(served.exit(Duration::from_secs(20)).await.success());
    let (stdout, stderr) = served.output();
    assert!(stdout.contains("plain HTTP"), "{stdout}");
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains('\u{1b}'),
            "colour codes in a pipe: {output:?}"
        );
    }
    assert!(stdout.contains("poolgate listening"), "{stdout}");
}

#[tokio::test]
async fn a_command_line_run_beside_a_gateway_leaves_its_journal_alone() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Binary::start(dir.path(), "").await;
    gateway
        .add_openai_backend("one", &upstream.openai_base_url(), "m")
        .await;
    let journal = dir.path().join("usage-journal");
    let segments = || std::fs::read_dir(&journal).unwrap().count();
    assert_eq!(segments(), 1, "the running gateway's segment");
    // `backend list` takes no lock: it runs beside the gateway.
    let data = dir.path().to_str().unwrap();
    let list = poolgate_command(&["backend", "list", "--data-dir", data], &[])
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    assert_eq!(
        segments(),
        1,
        "the command replayed or deleted the gateway's journal"
    );
    // The journal still does its job for the gateway.
    let id = complete_answer(&gateway.client, &gateway.url, false)
        .await
        .unwrap();
    gateway.served.kill9();
    let gateway = Binary::start(dir.path(), "").await;
    let records = gateway.usage_records(1).await;
    assert!(
        records.iter().any(|r| r["request_id"] == id.as_str()),
        "{records:?}"
    );
    gateway.stop().await;
}
