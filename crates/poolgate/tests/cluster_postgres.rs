//! Several gateway instances sharing one PostgreSQL (started by the test on a free port on
//! 127.0.0.1), end to end:
//!
//! 5. an admin change made on one instance is served by the others within 1 s, and a client key
//!    revoked on one is refused by the others within 2 s — also when the listening connection
//!    was lost in between;
//! 7. usage exactly once: 20,000 requests over 3 instances, a PostgreSQL connection killed in the
//!    middle of a flush and one instance (a real `poolgate serve` process) stopped with SIGTERM:
//!    the stored request ids are exactly those of the answers, each once;
//! 8. PostgreSQL down for 20 s: requests are still served, the usage waits (bounded buffer, then
//!    in the usage journal only) and lands once PostgreSQL is back: the stored request ids are
//!    exactly those of the answers, each once;
//!
//! and issue #15 across instances: a response made through one instance is followed up, read and
//! deleted through the others at the backend that made it (owners announced through the
//! database, also known to an instance started later), and a model alias set on one instance is
//! served by the others within 1 s.
#![expect(clippy::unwrap_used, reason = "test")]

mod cluster;
mod common;
mod services;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cluster::{backend_toml, chat, chat_as, within, Cluster, MODEL};
use common::served::Served;
use common::{send, Gateway};
use futures_util::future::join_all;
use mock_upstream::{MockConfig, MockUpstream};
use reqwest::Method;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::time::Instant;

async fn pool(cluster: &Cluster) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&cluster.database_url)
        .await
        .unwrap()
}

/// The canonical models `gateway` serves.
async fn models(gateway: &Gateway) -> Vec<String> {
    let answer = send(
        gateway
            .client
            .get(format!("{}/v1/models", gateway.url))
            .bearer_auth(common::ADMIN_TOKEN),
    )
    .await;
    answer.json["data"]
        .as_array()
        .map(|models| {
            models
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_instance_within_a_second_and_a_revoked_key_is_refused_within_two() {
    let upstream = MockUpstream::start().await;
    let url = upstream.openai_base_url();
    let cluster = Cluster::start(3, None, &backend_toml("a", &url, "primary", "")).await;
    let [a, b, c] = [
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    ];

    // A new backend (a new model) created on A.
    a.add_backend(json!({
        "name": "second",
        "api_base_url": url,
        "api_key": "sk-second-secret-key-0001",
        "model_mappings": {"n": "up-n"},
    }))
    .await;
    for (name, gateway) in [("B", b), ("C", c)] {
        let took = within(
            &format!("instance {name} serves model `n`"),
            Duration::from_secs(1),
            || async { models(gateway).await.contains(&"n".to_owned()) },
        )
        .await;
        println!("instance {name} serves the new backend {took:?} after its creation on A");
    }

    // A key created on A works on B and C; revoked on A, refused by both within 2 s.
    let (id, key) = a.create_key(json!({"name": "app"})).await;
    for gateway in [b, c] {
        within("the key works", Duration::from_secs(1), || async {
            chat_as(gateway, &key).await.status == 200
        })
        .await;
    }
    let revoke = send(a.admin(Method::DELETE, &format!("/keys/{id}"))).await;
    assert_eq!(revoke.status, 204, "{revoke}");
    for (name, gateway) in [("B", b), ("C", c)] {
        let took = within(
            &format!("instance {name} refuses the revoked key"),
            Duration::from_secs(2),
            || async { chat_as(gateway, &key).await.status == 401 },
        )
        .await;
        println!("instance {name} refuses the key {took:?} after its revocation on A");
    }

    // Every instance's listening connection is killed; a change made right then still arrives
    // (each compares the configuration version when it listens again, and every second).
    let db = pool(&cluster).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(killed.len(), 3, "one listener per instance");
    let second = a.data().live().backends[1].id().to_string();
    let disable = send(
        a.admin(Method::PATCH, &format!("/backends/{second}"))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(disable.status, 200, "{disable}");
    for gateway in [b, c] {
        within(
            "the disabled backend's model is gone",
            Duration::from_secs(2),
            || async { !models(gateway).await.contains(&"n".to_owned()) },
        )
        .await;
    }
    for i in 0..3 {
        within(
            "the change feed listens again",
            Duration::from_secs(3),
            || async { cluster.view(i).await["config_feed"]["connected"] == true },
        )
        .await;
    }
    assert_eq!(
        cluster.view(1).await["config_feed"]["snapshot_version"],
        cluster.view(0).await["config_feed"]["snapshot_version"]
    );
    cluster.stop().await;
}

/// What the load saw: the request id of every answer, and the failures to get one.
#[derive(Default)]
struct Answers {
    ids: Vec<String>,
    by_status: std::collections::BTreeMap<u16, usize>,
    transport_errors: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_stored_exactly_once_through_a_killed_connection_and_a_sigterm() {
    let upstream = MockUpstream::start_with(MockConfig {
        record_requests: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let toml = backend_toml("a", &upstream.openai_base_url(), "primary", "");
    let mut cluster = Cluster::start(2, None, &toml).await;
    // The third instance is a process, so that it can get a SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), common::ADMIN_TOKEN).unwrap();
    let config = dir.path().join("poolgate.toml");
    std::fs::write(&config, cluster.instance_toml(2)).unwrap();
    let mut process = Served::spawn(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let process_url = process.url().await;
    let urls: Vec<String> = cluster
        .instances
        .iter()
        .map(|g| g.url.clone())
        .chain([process_url.clone()])
        .collect();

    const TOTAL: usize = 20_000;
    const WORKERS: usize = 48;
    let answers = Arc::new(parking_lot::Mutex::new(Answers::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let process_stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (answers, next, process_stopped, urls, client) = (
                Arc::clone(&answers),
                Arc::clone(&next),
                Arc::clone(&process_stopped),
                urls.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= TOTAL {
                        break;
                    }
                    let mut target = n % urls.len();
                    if target == 2 && process_stopped.load(std::sync::atomic::Ordering::SeqCst) {
                        target = n % 2;
                    }
                    let result = client
                        .post(format!("{}/v1/chat/completions", urls[target]))
                        .bearer_auth(common::ADMIN_TOKEN)
                        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
                        .send()
                        .await;
                    let mut answers = answers.lock();
                    match result {
                        Ok(response) => {
                            *answers.by_status.entry(response.status().as_u16()).or_insert(0) += 1;
                            let id = response
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            answers.ids.push(id);
                        }
                        Err(_) => answers.transport_errors += 1,
                    }
                }
            })
        })
        .collect();
    let progress = |share: usize| {
        let next = Arc::clone(&next);
        async move {
            while next.load(std::sync::atomic::Ordering::Relaxed) < TOTAL * share / 100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // A third of the way: usage inserts are held by a table lock; one of them is killed while it
    // waits (its connection dies in the middle of a flush); the lock goes.
    progress(30).await;
    let db = pool(&cluster).await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE usage_records IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let killed = within(
        "a flush waits on the lock",
        Duration::from_secs(10),
        || async {
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'INSERT INTO usage_records%' AND wait_event_type = 'Lock' LIMIT 1",
            )
            .fetch_all(&db)
            .await
            .unwrap();
            killed == [true]
        },
    )
    .await;
    println!("a flush was killed {killed:?} after the lock was taken");
    lock.rollback().await.unwrap();

    // Half way: the process instance gets SIGTERM; nothing new is sent to it from then on.
    progress(50).await;
    process_stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    process.sigterm();
    let status = process.exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "graceful stop: {status}\n{}",
        process.log()
    );

    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    for gateway in cluster.instances.drain(..) {
        gateway.stop().await;
    }

    let answers = std::mem::take(&mut *answers.lock());
    println!(
        "{} answers ({:?}), {} transport errors, in {elapsed:?}",
        answers.ids.len(),
        answers.by_status,
        answers.transport_errors
    );
    assert_eq!(answers.ids.len() + answers.transport_errors, TOTAL);
    assert!(
        answers.transport_errors <= WORKERS,
        "only requests racing the SIGTERM may fail: {}",
        answers.transport_errors
    );
    let expected: HashSet<&str> = answers.ids.iter().map(String::as_str).collect();
    assert_eq!(
        expected.len(),
        answers.ids.len(),
        "every answer has its own id"
    );
    let stored: Vec<String> = sqlx::query_scalar("SELECT request_id FROM usage_records")
        .fetch_all(&db)
        .await
        .unwrap();
    let stored_set: HashSet<&str> = stored.iter().map(String::as_str).collect();
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "no request is counted twice"
    );
    assert_eq!(
        stored.len(),
        answers.ids.len(),
        "usage rows == answered requests"
    );
    assert!(
        stored_set == expected,
        "the stored ids are the answered ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_for_20_s_requests_are_served_and_their_usage_lands_afterwards() {
    let upstream = MockUpstream::start().await;
    // A small buffer, so that the outage also leaves records in the journal only.
    let toml = format!(
        "[usage]\nbuffer_records = 40\n{}",
        backend_toml("a", &upstream.openai_base_url(), "primary", "")
    );
    let mut cluster = Cluster::start(1, None, &toml).await;
    let mut answered: Vec<String> = Vec::new();
    let mut take = |answer: &common::Answer| {
        assert_eq!(answer.status, 200, "served from the snapshot: {answer}");
        let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
        answered.push(id);
    };
    for _ in 0..10 {
        take(&chat(&cluster.instances[0]).await);
    }
    let db_url = cluster.database_url.clone();

    cluster.postgres.kill();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(20) {
        let burst = join_all((0..5).map(|_| chat(&cluster.instances[0]))).await;
        burst.iter().for_each(&mut take);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let served = answered.len();
    // The buffer holds its bound exactly. A record the writer took before its journal line was
    // in the file (a request's line is written at the end of its runtime's scheduler pass) waits
    // in memory beside it until the line is written, a writer round later: hence the wait.
    within(
        "the buffer at its bound",
        Duration::from_secs(3),
        || async { cluster.view(0).await["usage_writer"]["buffered"] == 40 },
    )
    .await;
    let view = cluster.view(0).await;
    let writer = &view["usage_writer"];
    println!("after 20 s down: {writer}");
    assert_eq!(writer["database_failing"], true, "{writer}");
    assert_eq!(
        writer["buffered"], 40,
        "the buffer holds its bound: {writer}"
    );
    assert!(writer["journaled"].as_u64().unwrap() > 0, "{writer}");
    assert_eq!(writer["lost"], 0);

    cluster.postgres.restart().await;
    let came_back = Instant::now();
    let db = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db_url)
        .await
        .unwrap();
    let took = within("every record lands", Duration::from_secs(20), || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
            .fetch_one(&db)
            .await
            .unwrap();
        count as usize >= served
    })
    .await;
    println!(
        "{served} records stored {took:?} after PostgreSQL came back ({:?})",
        came_back.elapsed()
    );
    within(
        "the writer is idle again",
        Duration::from_secs(5),
        || async {
            let writer = &cluster.view(0).await["usage_writer"];
            writer["buffered"] == 0
                && writer["journaled"] == 0
                && writer["database_failing"] == false
        },
    )
    .await;
    // Every answered request stored exactly once, and nothing else.
    let stored: Vec<String> = sqlx::query_scalar("SELECT request_id FROM usage_records")
        .fetch_all(&db)
        .await
        .unwrap();
    let stored_set: HashSet<&str> = stored.iter().map(String::as_str).collect();
    let expected: HashSet<&str> = answered.iter().map(String::as_str).collect();
    assert_eq!(expected.len(), served, "request ids are unique");
    assert_eq!(stored.len(), served, "usage rows == answered requests");
    assert!(
        stored_set == expected,
        "the stored ids are the answered ones"
    );
    cluster.stop().await;
}

/// The mock that made response `id`.
fn maker<'m>(id: &str, mocks: &'m [MockUpstream]) -> &'m MockUpstream {
    mocks
        .iter()
        .find(|mock| id.starts_with(&mock.response_id_prefix()))
        .unwrap_or_else(|| panic!("no mock made `{id}`"))
}

fn responses(gateway: &Gateway, body: serde_json::Value) -> reqwest::RequestBuilder {
    gateway.proxy("/v1/responses").json(&body)
}

fn response_call(gateway: &Gateway, method: Method, id: &str) -> reqwest::RequestBuilder {
    gateway
        .client
        .request(method, format!("{}/v1/responses/{id}", gateway.url))
        .bearer_auth(common::ADMIN_TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_followed_up_at_their_owner_and_aliases_served_through_every_instance() {
    let mocks = [MockUpstream::start().await, MockUpstream::start().await];
    let toml = format!(
        "{}{}",
        backend_toml("r0", &mocks[0].openai_base_url(), "primary", ""),
        backend_toml("r1", &mocks[1].openai_base_url(), "primary", "")
    );
    let cluster = Cluster::start(3, None, &toml).await;
    let [a, b, c] = [
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    ];

    // Responses made through A, spread over both backends.
    let mut ids = Vec::new();
    for turn in 0..4 {
        let answer = send(responses(
            a,
            json!({"model": MODEL, "input": format!("first {turn}")}),
        ))
        .await;
        assert_eq!(answer.status, 200, "{answer}");
        ids.push((
            answer.json["id"].as_str().unwrap().to_owned(),
            Instant::now(),
        ));
    }
    let makers: HashSet<_> = ids.iter().map(|(id, _)| maker(id, &mocks).addr()).collect();
    assert_eq!(makers.len(), 2, "both backends made responses");

    for (id, made) in &ids {
        let owner = maker(id, &mocks).addr();
        for (name, gateway) in [("B", b), ("C", c)] {
            // The owner is known there once announced (an unknown id is a 404 from poolgate).
            within(
                &format!("instance {name} knows the owner of {id}"),
                Duration::from_secs(1),
                || async { send(response_call(gateway, Method::GET, id)).await.status == 200 },
            )
            .await;
            println!(
                "instance {name} knows the owner of {id} at most {:?} after A answered",
                made.elapsed()
            );
            // A follow-up there reaches the owner (the mock 404s an id it did not make).
            let answer = send(responses(
                gateway,
                json!({"model": MODEL, "input": "next", "previous_response_id": id}),
            ))
            .await;
            assert_eq!(answer.status, 200, "{answer}");
            let follow_up = answer.json["id"].as_str().unwrap();
            assert_eq!(maker(follow_up, &mocks).addr(), owner);
        }
    }

    // Deleted through B: the owner deletes it, and A forgets it too.
    let deleted = &ids[0].0;
    let answer = send(response_call(b, Method::DELETE, deleted)).await;
    assert_eq!(answer.status, 200, "{answer}");
    within(
        "A forgets the deleted response",
        Duration::from_secs(1),
        || async { send(response_call(a, Method::GET, deleted)).await.status == 404 },
    )
    .await;

    // An instance started later loads the stored owners.
    let late = Gateway::start_with(&cluster.instance_toml(3), None).await;
    let answer = send(responses(
        &late,
        json!({"model": MODEL, "input": "later", "previous_response_id": ids[1].0}),
    ))
    .await;
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(
        maker(answer.json["id"].as_str().unwrap(), &mocks).addr(),
        maker(&ids[1].0, &mocks).addr()
    );
    assert_eq!(
        send(response_call(&late, Method::GET, deleted))
            .await
            .status,
        404
    );
    late.stop().await;

    // A model alias set on A is served by B and C within 1 s; deleted on C, gone from A.
    let set = send(
        a.admin(Method::PUT, "/aliases/fast")
            .json(&json!({"target": MODEL})),
    )
    .await;
    assert!(set.status == 200 || set.status == 201, "{set}");
    for (name, gateway) in [("B", b), ("C", c)] {
        let took = within(
            &format!("instance {name} serves the alias"),
            Duration::from_secs(1),
            || async {
                let answer = send(gateway.proxy("/v1/chat/completions").json(
                    &json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),
                ))
                .await;
                answer.status == 200
            },
        )
        .await;
        println!("instance {name} serves the alias {took:?} after it was set on A");
        assert!(models(gateway).await.contains(&"fast".to_owned()));
    }
    let delete = send(c.admin(Method::DELETE, "/aliases/fast")).await;
    assert!(delete.status == 200 || delete.status == 204, "{delete}");
    within(
        "A no longer lists the alias",
        Duration::from_secs(1),
        || async { !models(a).await.contains(&"fast".to_owned()) },
    )
    .await;
    cluster.stop().await;
}
