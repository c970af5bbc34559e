//! `RedisShared` against a real redis-server: several instances (each its own client and
//! connections, as separate gateway processes would have) share buckets, cooldowns, the probe
//! slot and in-flight counts; Redis killed, frozen or flushed never fails a call.
//!
//! Cooldowns and buckets in Redis run on Redis's clock, so these tests use real time; every
//! time bound is either derived from the elapsed time measured around the operation or generous
//! against a loaded 2-core machine.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod services;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use poolgate::cooldown::{CooldownPolicy, Outcome};
use poolgate::domain::BackendId;
use poolgate::shared::{
    Admit, AdmitRequest, BucketClaim, BucketKey, BudgetAdmit, BudgetClaim, BudgetWindowClaim,
    FailMode, Mode, Precheck, RedisOptions, RedisShared, Refusal, SharedRuntime, SpendRecord,
    SpendWindowSeed,
};
use secrecy::SecretString;
use services::RedisServer;
use tokio::time::Instant;

/// Generous for tests about semantics (a loaded machine must not turn them into timeouts).
const RELAXED_TIMEOUT: Duration = Duration::from_secs(2);

fn options(server: &RedisServer, instance: &str) -> RedisOptions {
    let mut options = RedisOptions::new(SecretString::from(server.url()));
    options.instance_id = instance.to_owned();
    options.call_timeout = RELAXED_TIMEOUT;
    options.heartbeat_interval = Duration::from_millis(100);
    options
}

async fn start(options: RedisOptions) -> Arc<RedisShared> {
    let shared = Arc::new(RedisShared::start(options).await.unwrap());
    eventually("the change feed connects", || async {
        shared.change_feed_connected()
    })
    .await;
    shared
}

/// Three instances on one Redis.
async fn cluster(server: &RedisServer) -> Vec<Arc<RedisShared>> {
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push(start(options(server, name)).await);
    }
    instances
}

/// Polls `check` every 20 ms for up to 20 s.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn backend(id: &str) -> BackendId {
    BackendId::new(id)
}

fn request(backend: &BackendId, claims: Vec<BucketClaim>) -> AdmitRequest {
    AdmitRequest {
        backend: backend.clone(),
        claims,
        probe_ttl: Duration::from_secs(30),
    }
}

fn policy(base: Duration) -> CooldownPolicy {
    CooldownPolicy {
        base,
        max: Duration::from_secs(600),
        jitter: 0.0,
        error_cooldown: Duration::from_secs(5),
    }
}

fn rate_limited(retry_after: Option<Duration>) -> Outcome {
    Outcome::RateLimited { retry_after }
}

fn admitted(answer: &Admit) -> bool {
    matches!(answer, Admit::Admitted(admitted) if admitted.mode == Mode::Shared)
}

#[tokio::test]
async fn a_bucket_of_20_admits_exactly_20_of_150_concurrent_requests_across_3_instances() {
    let server = RedisServer::start().await;
    let instances = cluster(&server).await;
    let id = backend("b-atomic");
    let claim = BucketClaim::one(BucketKey::backend_rpm(&id), 20);
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..150).map(|i| {
        let instance = Arc::clone(&instances[i % 3]);
        let request = request(&id, vec![claim.clone()]);
        async move { instance.admit(request).await }
    }))
    .await;
    let elapsed = started.elapsed();
    let granted = answers.iter().filter(|answer| admitted(answer)).count();
    // The bucket refills 20/min = one token per 3 s: only a very slow run may see one more.
    let refill = usize::try_from(elapsed.as_secs() / 3).unwrap();
    assert!(
        (20..=20 + refill).contains(&granted),
        "{granted} admitted in {elapsed:?}"
    );
    for answer in &answers {
        match answer {
            Admit::Admitted(admitted) => assert_eq!(admitted.mode, Mode::Shared),
            Admit::Refused(Refusal::Limited { key, retry_after }) => {
                assert_eq!(key, &claim.key);
                assert!(*retry_after <= Duration::from_secs(3), "{retry_after:?}");
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_limit_is_shared_by_every_instance_all_or_nothing_and_refundable() {
    let server = RedisServer::start().await;
    let instances = cluster(&server).await;
    let id = backend("b-shared");
    let backend_claim = BucketClaim::one(BucketKey::backend_rpm(&id), 60);
    let key_claim = BucketClaim::one(BucketKey::client_rpm("key-1"), 200);

    let started = Instant::now();
    let mut granted = 0;
    for i in 0..120 {
        let answer = instances[i % 3]
            .admit(request(&id, vec![key_claim.clone(), backend_claim.clone()]))
            .await;
        if admitted(&answer) {
            granted += 1;
        }
    }
    let elapsed = started.elapsed();
    // Never beyond capacity + the refill of the elapsed time (60/min = 1/s), whichever instance.
    let bound = 60 + usize::try_from(elapsed.as_secs()).unwrap();
    assert!(
        (60..=bound).contains(&granted),
        "{granted} admitted in {elapsed:?}"
    );

    // All or nothing: the refused admissions took nothing from the client key's bucket (listed
    // first, so it had passed its check when the backend's refused), which therefore paid once
    // per admission: 200 - granted are left (more only after 18 s of refill).
    let probe_key = BucketClaim {
        cost: 200 - u64::try_from(granted).unwrap(),
        ..key_claim.clone()
    };
    let answer = instances[0].admit(request(&id, vec![probe_key])).await;
    assert!(
        admitted(&answer),
        "the key's bucket still holds 200 - {granted}: {answer:?}"
    );

    // A refund gives a token back to the shared bucket: another instance can take it. (A bucket
    // of 1/min: nothing refills during the test.)
    let slow = BucketClaim::one(BucketKey::new("test", "slow"), 1);
    assert!(admitted(
        &instances[0].admit(request(&id, vec![slow.clone()])).await
    ));
    let empty = instances[1].admit(request(&id, vec![slow.clone()])).await;
    assert!(
        matches!(empty, Admit::Refused(Refusal::Limited { .. })),
        "{empty:?}"
    );
    instances[0].refund(std::slice::from_ref(&slow)).await;
    let refunded = instances[2].admit(request(&id, vec![slow.clone()])).await;
    assert!(admitted(&refunded), "{refunded:?}");
    // Never above capacity: two refunds into an empty bucket of one leave one token.
    instances[0].refund(std::slice::from_ref(&slow)).await;
    instances[1].refund(std::slice::from_ref(&slow)).await;
    assert!(admitted(
        &instances[1].admit(request(&id, vec![slow.clone()])).await
    ));
    let again = instances[2].admit(request(&id, vec![slow])).await;
    assert!(
        matches!(again, Admit::Refused(Refusal::Limited { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_429_storm_raises_the_level_once_and_a_shorter_retry_after_never_shortens() {
    let server = RedisServer::start().await;
    let instances = cluster(&server).await;
    let id = backend("b-storm");
    let policy = policy(Duration::from_secs(60));

    // 30 simultaneous 429s over three instances: one episode, level 1.
    let views = futures_util::future::join_all((0..30).map(|i| {
        let instance = Arc::clone(&instances[i % 3]);
        let (id, policy) = (id.clone(), policy.clone());
        async move {
            instance
                .report(&id, rate_limited(None), None, &policy)
                .await
        }
    }))
    .await;
    for view in &views {
        assert_eq!(view.level, 1, "{view:?}");
    }
    let until = views[0].until.unwrap();
    let from_now = until.saturating_duration_since(Instant::now());
    assert!(
        from_now > Duration::from_secs(50) && from_now <= Duration::from_secs(61),
        "{from_now:?}"
    );

    // A later Retry-After of 1 s, on another instance, leaves the 60 s cooldown unchanged.
    let after = instances[2]
        .report(
            &id,
            rate_limited(Some(Duration::from_secs(1))),
            None,
            &policy,
        )
        .await;
    assert_eq!(after.level, 1);
    let left = after
        .until
        .unwrap()
        .saturating_duration_since(Instant::now());
    assert!(left > Duration::from_secs(50), "{left:?}");

    // A longer Retry-After lengthens it (max-merge), still the same episode.
    let longer = instances[1]
        .report(
            &id,
            rate_limited(Some(Duration::from_secs(120))),
            None,
            &policy,
        )
        .await;
    assert_eq!(longer.level, 1);
    let left = longer
        .until
        .unwrap()
        .saturating_duration_since(Instant::now());
    assert!(left > Duration::from_secs(110), "{left:?}");

    // Every instance refuses it locally (published change), without asking Redis.
    for instance in &instances {
        eventually("the cooldown reached every instance", || async {
            matches!(
                instance.precheck(&id, false, Instant::now()),
                Precheck::Refused(Refusal::Cooling { until })
                    if until.saturating_duration_since(Instant::now()) > Duration::from_secs(100)
            )
        })
        .await;
    }
    // A success during the running cooldown does not end it (same episode).
    let during = instances[0]
        .report(&id, Outcome::Success, None, &policy)
        .await;
    assert!(during.until.is_some());

    // An admin reset clears it everywhere.
    instances[0].reset(&id).await;
    for instance in &instances {
        eventually("the reset reached every instance", || async {
            instance.precheck(&id, false, Instant::now()) == Precheck::Ready
        })
        .await;
    }
}

#[tokio::test]
async fn one_probe_in_the_whole_cluster_after_a_cooldown() {
    let server = RedisServer::start().await;
    let instances = cluster(&server).await;
    let id = backend("b-probe");
    let policy = policy(Duration::from_millis(300));

    let view = instances[0]
        .report(&id, rate_limited(None), None, &policy)
        .await;
    let until = view.until.unwrap();
    // No admission while it cools, on any instance.
    let cooling = instances[1].admit(request(&id, vec![])).await;
    assert!(
        matches!(cooling, Admit::Refused(Refusal::Cooling { .. })),
        "{cooling:?}"
    );
    tokio::time::sleep_until(until + Duration::from_millis(50)).await;

    // Half-open: 30 simultaneous attempts over three instances, exactly one probe.
    let answers = futures_util::future::join_all((0..30).map(|i| {
        let instance = Arc::clone(&instances[i % 3]);
        let request = request(&id, vec![]);
        async move { instance.admit(request).await }
    }))
    .await;
    let probes: Vec<_> = answers
        .iter()
        .filter_map(|answer| match answer {
            Admit::Admitted(admitted) => Some(admitted.probe.clone()),
            Admit::Refused(_) => None,
        })
        .collect();
    assert_eq!(probes.len(), 1, "{answers:?}");
    let probe = probes[0]
        .clone()
        .expect("the one admitted attempt is the probe");
    for answer in &answers {
        if let Admit::Refused(refusal) = answer {
            assert!(
                matches!(refusal, Refusal::ProbeInFlight { retry_after } if *retry_after <= Duration::from_secs(1)),
                "{refusal:?}"
            );
        }
    }

    // The probe succeeds: healthy everywhere, level 0.
    let prober = answers
        .iter()
        .position(|answer| matches!(answer, Admit::Admitted(_)))
        .unwrap();
    let healed = instances[prober % 3]
        .report(&id, Outcome::Success, Some(probe), &policy)
        .await;
    assert_eq!((healed.until, healed.level), (None, 0));
    for instance in &instances {
        let answer = instance.admit(request(&id, vec![])).await;
        assert!(
            matches!(&answer, Admit::Admitted(admitted) if admitted.probe.is_none()),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn a_vanished_prober_frees_the_slot_when_its_ttl_ends() {
    let server = RedisServer::start().await;
    let instances = cluster(&server).await;
    let id = backend("b-lost-probe");
    let policy = policy(Duration::from_millis(100));
    let until = instances[0]
        .report(&id, rate_limited(None), None, &policy)
        .await
        .until
        .unwrap();
    tokio::time::sleep_until(until + Duration::from_millis(50)).await;
    let short = AdmitRequest {
        probe_ttl: Duration::from_secs(3),
        ..request(&id, vec![])
    };
    let first = instances[0].admit(short.clone()).await;
    assert!(
        matches!(&first, Admit::Admitted(admitted) if admitted.probe.is_some()),
        "{first:?}"
    );
    // The prober's instance dies without reporting: the slot stays held for its TTL...
    let second = instances[1].admit(short.clone()).await;
    assert!(
        matches!(second, Admit::Refused(Refusal::ProbeInFlight { .. })),
        "{second:?}"
    );
    // ...and then frees itself.
    eventually("another instance may probe", || async {
        matches!(
            instances[1].admit(short.clone()).await,
            Admit::Admitted(admitted) if admitted.probe.is_some()
        )
    })
    .await;
}

#[tokio::test]
async fn in_flight_counts_add_up_across_instances_and_a_killed_instance_stops_counting() {
    let server = RedisServer::start().await;
    let mut instances = cluster(&server).await;
    let id = backend("b-in-flight");

    let on_a: Vec<_> = (0..2)
        .map(|_| instances[0].in_flight_counter(&id).enter())
        .collect();
    let on_b = instances[1].in_flight_counter(&id).enter();
    let on_c = instances[2].in_flight_counter(&id).enter();
    // Published with the next heartbeat (100 ms here), read by any instance.
    eventually("every instance's attempts are counted", || async {
        instances[2].in_flight(&id).await == Some(4)
    })
    .await;

    // An attempt that ends stops counting at the next heartbeat.
    drop(on_b);
    eventually("the ended attempt is gone", || async {
        instances[0].in_flight(&id).await == Some(3)
    })
    .await;

    // `c` is killed (no leave, no more heartbeats): its attempt stops counting once its
    // registry entry expires (3 heartbeats), without anybody releasing it.
    let killed = instances.pop().unwrap();
    drop(killed);
    std::mem::forget(on_c);
    eventually("the killed instance's attempt expired", || async {
        instances[1].in_flight(&id).await == Some(2)
    })
    .await;

    drop(on_a);
    eventually("nothing in flight", || async {
        instances[1].in_flight(&id).await == Some(0)
    })
    .await;
}

#[tokio::test]
async fn scripts_flushed_between_calls_are_loaded_again_without_a_failure() {
    let server = RedisServer::start().await;
    let instance = start(options(&server, "a")).await;
    let id = backend("b-noscript");
    let claim = BucketClaim::one(BucketKey::backend_rpm(&id), 1_000);
    assert!(admitted(
        &instance.admit(request(&id, vec![claim.clone()])).await
    ));

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..3 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        let answer = instance.admit(request(&id, vec![claim.clone()])).await;
        assert!(admitted(&answer), "{answer:?}");
        assert_eq!(instance.mode(), Mode::Shared);
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let loads = stats
        .lines()
        .find(|line| line.starts_with("cmdstat_script|load:"))
        .and_then(|line| line.split(['=', ',']).nth(1))
        .and_then(|calls| calls.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        loads >= 3,
        "the script was loaded again after each flush: {stats}"
    );
}

#[tokio::test]
async fn redis_killed_degrades_to_local_shares_and_recovers_by_itself() {
    let mut server = RedisServer::start().await;
    let mut fast = options(&server, "a");
    fast.call_timeout = Duration::from_millis(200);
    fast.breaker_open_for = Duration::from_millis(200);
    let a = start(fast).await;
    let b = start(options(&server, "b")).await;
    let _c = start(options(&server, "c")).await;
    eventually("three live instances", || async { a.live_instances() == 3 }).await;

    let id = backend("b-outage");
    let open = BucketClaim::one(BucketKey::backend_rpm(&id), 60);
    let closed = BucketClaim {
        on_unavailable: FailMode::Closed,
        ..BucketClaim::one(BucketKey::client_rpm("strict"), 60)
    };

    server.kill();
    // Every call returns (the breaker opens after a few failures) and none is a failure.
    let started = Instant::now();
    let mut granted = 0;
    for _ in 0..60 {
        match a.admit(request(&id, vec![open.clone()])).await {
            Admit::Admitted(admitted) => {
                assert_eq!(admitted.mode, Mode::Degraded);
                granted += 1;
            }
            Admit::Refused(Refusal::Limited { .. }) => {}
            other => panic!("unexpected answer while Redis is down: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(a.mode(), Mode::Degraded);
    // This instance's share: 60 / 3 live instances = 20 (+ its refill, 20/min).
    let bound = 20 + usize::try_from(elapsed.as_secs() / 3).unwrap();
    assert!(
        (20..=bound).contains(&granted),
        "{granted} admitted in {elapsed:?}"
    );
    // A fail-closed limit refuses instead.
    assert_eq!(
        a.admit(request(&id, vec![closed.clone()])).await,
        Admit::Refused(Refusal::Unavailable {
            key: closed.key.clone()
        })
    );
    // Cooldowns keep working locally.
    let view = a
        .report(
            &id,
            rate_limited(None),
            None,
            &policy(Duration::from_secs(30)),
        )
        .await;
    assert!(view.until.is_some());

    server.restart().await;
    eventually("shared mode is back", || async { a.mode() == Mode::Shared }).await;
    // The cooldown learnt while degraded is pushed to Redis on recovery: another instance that
    // never saw the 429 refuses the backend.
    eventually("the local cooldown reached the restarted Redis", || async {
        matches!(
            b.admit(request(&id, vec![])).await,
            Admit::Refused(Refusal::Cooling { .. })
        )
    })
    .await;
    assert!(matches!(
        a.precheck(&id, false, Instant::now()),
        Precheck::Refused(Refusal::Cooling { .. })
    ));
    let other = backend("b-after");
    let answer = a.admit(request(&other, vec![closed])).await;
    assert!(admitted(&answer), "{answer:?}");
}

/// A call that failed without opening the breaker (a slow moment) seeds a local bucket; once
/// shared calls succeed again that bucket is forgotten, so a later outage starts from what Redis
/// last said is left — not from a local bucket that refilled meanwhile (which let every instance
/// burst its whole share: the cluster test once saw 423 admitted where 35 were allowed).
#[tokio::test]
async fn a_local_bucket_seeded_by_one_failed_call_is_forgotten_once_redis_answers_again() {
    let mut server = RedisServer::start().await;
    let mut fast = options(&server, "a");
    fast.call_timeout = Duration::from_millis(50);
    // The breaker never opens here: only the success after isolated failures clears the bucket.
    fast.breaker_failures = 1_000;
    let a = start(fast).await;
    let id = backend("b-slow-moment");
    let claim = BucketClaim::one(BucketKey::backend_rpm(&id), 60);

    // A slow moment: the admission times out and is admitted from a fresh local bucket (this
    // instance's whole share: nothing is remembered yet).
    server.freeze();
    let answer = a.admit(request(&id, vec![claim.clone()])).await;
    server.thaw();
    assert!(
        matches!(&answer, Admit::Admitted(admitted) if admitted.mode == Mode::Degraded),
        "{answer:?}"
    );
    // Shared calls again: the shared bucket (60) is drained.
    let mut shared = 0;
    for _ in 0..80 {
        if admitted(&a.admit(request(&id, vec![claim.clone()])).await) {
            shared += 1;
        }
    }
    assert!((60..=61).contains(&shared), "{shared} admitted by Redis");

    // Redis dies: the instance's share starts from what Redis last said (nothing left), plus
    // its refill (1/s), not from the local bucket of the slow moment (59 tokens).
    server.kill();
    let started = Instant::now();
    let mut degraded = 0;
    for _ in 0..60 {
        // (Admitted locally: the breaker stays closed here, each call fails and is answered
        // from the local bucket.)
        if matches!(
            a.admit(request(&id, vec![claim.clone()])).await,
            Admit::Admitted(_)
        ) {
            degraded += 1;
        }
    }
    let bound = 1 + started.elapsed().as_secs();
    assert!(
        degraded <= bound,
        "{degraded} admitted during the outage; at most {bound} were left"
    );
}

#[tokio::test]
async fn a_frozen_redis_costs_at_most_the_call_timeout() {
    let server = RedisServer::start().await;
    let mut fast = options(&server, "a");
    fast.call_timeout = Duration::from_millis(50);
    fast.breaker_open_for = Duration::from_secs(5);
    let a = start(fast).await;
    let id = backend("b-frozen");
    let claim = BucketClaim::one(BucketKey::backend_rpm(&id), 1_000);
    // Synced and healthy: a success needs no round trip even while Redis is frozen.
    assert!(admitted(&a.admit(request(&id, vec![claim.clone()])).await));

    server.freeze();
    for _ in 0..5 {
        a.report(&id, Outcome::Success, None, &policy(Duration::from_secs(1)))
            .await;
    }
    assert_eq!(a.mode(), Mode::Shared, "no call was made for the successes");
    assert_eq!(a.precheck(&id, false, Instant::now()), Precheck::Ready);

    let answers = futures_util::future::join_all((0..20).map(|_| {
        let a = Arc::clone(&a);
        let request = request(&id, vec![claim.clone()]);
        async move {
            let started = Instant::now();
            let answer = a.admit(request).await;
            (answer, started.elapsed())
        }
    }))
    .await;
    for (answer, elapsed) in &answers {
        assert!(
            matches!(answer, Admit::Admitted(admitted) if admitted.mode == Mode::Degraded),
            "{answer:?}"
        );
        // The timeout is 50 ms; without it these calls would wait until the thaw.
        assert!(*elapsed < Duration::from_secs(1), "{elapsed:?}");
    }
    assert_eq!(a.mode(), Mode::Degraded);
    // With the breaker open (for 5 s), calls do not even wait for the timeout.
    let started = Instant::now();
    let _ = a.admit(request(&id, vec![claim.clone()])).await;
    assert!(started.elapsed() < Duration::from_millis(50));

    server.thaw();
    eventually("shared mode is back", || async { a.mode() == Mode::Shared }).await;
}

/// Issue #11: a budget claim across instances — all windows or none, refusals name the window,
/// a window's spent is raised to the seed (the instance's figure: a fresh Redis starts from the
/// database's), a settle moves reserved to
/// spent in the windows the reservation named (even once a new day has begun) and never
/// recreates a window that was forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_reserve_all_windows_or_none_and_settle_where_they_were_made() {
    let server = RedisServer::start().await;
    let instances = cluster(&server).await;
    let window = |id: &str, limit: u64, seed: u64| BudgetWindowClaim {
        id: id.to_owned(),
        limit,
        seed,
        expire_at_ms: None,
    };
    let claim = |amount: u64, windows: Vec<BudgetWindowClaim>| BudgetClaim {
        owner: "key-1".to_owned(),
        amount,
        windows,
    };
    // Day 1: daily limit 100 (30 already spent per the database), total 1 000 (500 spent).
    let day1 = || vec![window("d:20261130", 100, 30), window("t", 1_000, 500)];
    let Some(BudgetAdmit::Reserved { hold, figures }) =
        instances[0].reserve_budget(&claim(50, day1())).await
    else {
        panic!("the first reservation fits");
    };
    assert_eq!(figures, vec![(30, 50), (500, 50)]);
    // Another instance sees the shared figures (a lower seed changes nothing).
    let refused = instances[1]
        .reserve_budget(&claim(
            30,
            vec![window("d:20261130", 100, 0), window("t", 1_000, 0)],
        ))
        .await;
    assert_eq!(
        refused,
        Some(BudgetAdmit::Refused {
            index: 0,
            spent: 30,
            reserved: 50
        })
    );
    // Nothing was taken from the total by the refused claim.
    let Some(BudgetAdmit::Reserved {
        hold: small,
        figures,
    }) = instances[2].reserve_budget(&claim(20, day1())).await
    else {
        panic!("20 more fit exactly");
    };
    assert_eq!(figures, vec![(30, 70), (500, 70)]);
    // The day is used up (30 + 70 = 100): even a zero estimate is refused.
    assert!(matches!(
        instances[1].reserve_budget(&claim(0, day1())).await,
        Some(BudgetAdmit::Refused { index: 0, .. })
    ));

    // Day 2 begins; the first reservation settles (cost 40 of its 50) into day 1 and the total.
    instances[0].settle_budget(hold, 40).await;
    let Some(BudgetAdmit::Reserved { figures, .. }) = instances[1]
        .reserve_budget(&claim(
            10,
            vec![window("d:20261201", 100, 0), window("t", 1_000, 0)],
        ))
        .await
    else {
        panic!("a new day has room");
    };
    assert_eq!(figures, vec![(0, 10), (540, 30)]);
    // An instance that knows of more spend (settled while Redis was away) raises the figure.
    let Some(BudgetAdmit::Reserved {
        hold: raised,
        figures,
    }) = instances[2]
        .reserve_budget(&claim(0, vec![window("d:20261201", 100, 5)]))
        .await
    else {
        panic!("fits");
    };
    assert_eq!(figures, vec![(5, 10)]);
    instances[2].settle_budget(raised, 0).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let day1_key = "{poolgate}:v1:budget:key-1:d:20261130";
    let (spent, reserved): (u64, u64) = redis::cmd("HMGET")
        .arg(day1_key)
        .arg("spent")
        .arg("reserved")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((spent, reserved), (70, 20));
    // Day 1 is forgotten; settling into it does not bring it back.
    let _: () = redis::cmd("DEL")
        .arg(day1_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    instances[2].settle_budget(small, 20).await;
    let exists: u64 = redis::cmd("EXISTS")
        .arg(day1_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let total: (u64, u64) = redis::cmd("HMGET")
        .arg("{poolgate}:v1:budget:key-1:t")
        .arg("spent")
        .arg("reserved")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, (560, 10));
}

/// How many times Redis ran `command` (lower case, e.g. `hmget`) so far (`INFO commandstats`).
async fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Admit-script calls since `before` for admissions of `buckets` buckets: each reads the
/// cooldown and every bucket with one `HMGET` (nothing else here runs `HMGET`).
async fn admit_calls_since(server: &RedisServer, before: u64, buckets: u64) -> u64 {
    (command_calls(server, "hmget").await - before) / (buckets + 1)
}

#[tokio::test]
async fn allowances_admit_most_requests_of_a_large_limit_without_a_redis_call() {
    let server = RedisServer::start().await;
    let leasing = start(options(&server, "a")).await;
    let mut off = options(&server, "b");
    off.allowance_max = 0;
    let off = start(off).await;
    let id = backend("b-lease");
    // 600,000/min: each bucket leases min(32, 600,000 / 6,000) = 32 tokens per call.
    let claims = vec![
        BucketClaim::one(BucketKey::client_rpm("k-lease"), 600_000),
        BucketClaim::one(BucketKey::backend_rpm(&id), 600_000),
    ];

    let before = command_calls(&server, "hmget").await;
    for _ in 0..330 {
        let answer = leasing.admit(request(&id, claims.clone())).await;
        assert!(admitted(&answer), "{answer:?}");
    }
    let calls = admit_calls_since(&server, before, 2).await;
    // One call admits its own request and leases 32 more: 10 calls for 330 admissions (more
    // only if an allowance lapsed, a second after its grant, on a very slow run).
    assert!(
        (10..=33).contains(&calls),
        "{calls} calls for 330 admissions"
    );

    // With allowances off, every admission is a call.
    let before = command_calls(&server, "hmget").await;
    for _ in 0..50 {
        let answer = off.admit(request(&id, claims.clone())).await;
        assert!(admitted(&answer), "{answer:?}");
    }
    assert_eq!(admit_calls_since(&server, before, 2).await, 50);

    // A TPM-sized claim (cost above 1) is never paid from an allowance.
    let heavy = vec![BucketClaim {
        cost: 100,
        ..BucketClaim::one(BucketKey::backend_tpm(&id), 600_000)
    }];
    let before = command_calls(&server, "hmget").await;
    for _ in 0..5 {
        assert!(admitted(&leasing.admit(request(&id, heavy.clone())).await));
    }
    assert_eq!(admit_calls_since(&server, before, 1).await, 5);
}

#[tokio::test]
async fn with_allowances_two_instances_hammering_a_bucket_never_admit_more_than_its_limit() {
    let server = RedisServer::start().await;
    let instances = [
        start(options(&server, "a")).await,
        start(options(&server, "b")).await,
    ];
    let id = backend("b-lease-limit");
    // 12,000/min: allowances of 2 tokens while the bucket holds more than 6,000, then exact.
    const LIMIT: u64 = 12_000;
    const SIZE: u64 = 2;
    let claim = BucketClaim::one(BucketKey::backend_rpm(&id), LIMIT);
    let before = command_calls(&server, "hmget").await;
    let started = Instant::now();
    // Four tasks per instance admit until refused.
    let counts = futures_util::future::join_all((0..8).map(|i| {
        let instance = Arc::clone(&instances[i % 2]);
        let request = request(&id, vec![claim.clone()]);
        async move {
            let mut admitted_here = 0_u64;
            loop {
                match instance.admit(request.clone()).await {
                    Admit::Admitted(admitted) => {
                        assert_eq!(admitted.mode, Mode::Shared);
                        admitted_here += 1;
                    }
                    Admit::Refused(Refusal::Limited { .. }) => return admitted_here,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let total: u64 = counts.iter().sum();
    let calls = admit_calls_since(&server, before, 1).await;
    // Never above the limit plus the refill of the elapsed time (200/s), allowances or not.
    let refill = LIMIT * u64::try_from(elapsed.as_millis()).unwrap() / 60_000 + 1;
    assert!(
        total <= LIMIT + refill,
        "{total} admitted in {elapsed:?} (limit {LIMIT}, refill {refill})"
    );
    // Leased tokens lost are bounded: an instance holds at most 4 allowances of a bucket, left
    // unused at the end or lapsed (a second after their grant).
    let lapsed = 2 * 4 * SIZE * (elapsed.as_secs() + 2);
    assert!(
        total + 1 + lapsed >= LIMIT,
        "{total} admitted in {elapsed:?}: more than {lapsed} leased tokens lost"
    );
    // Allowances were granted while the bucket was more than half full (about a third of the
    // upper half's admissions were calls), none below: one call per admission.
    assert!(
        calls + LIMIT / 20 < total,
        "{calls} calls for {total} admissions"
    );
}

#[tokio::test]
async fn a_cooldown_drops_the_backends_allowance_and_the_probe_stays_one_in_the_cluster() {
    let server = RedisServer::start().await;
    let instances = [
        start(options(&server, "a")).await,
        start(options(&server, "b")).await,
    ];
    let id = backend("b-lease-cool");
    let claim = BucketClaim::one(BucketKey::backend_rpm(&id), 600_000);
    // Instance b leases an allowance of 32 tokens.
    assert!(admitted(
        &instances[1].admit(request(&id, vec![claim.clone()])).await
    ));
    // A 429 on instance a: b hears of it on the change feed and admits nothing from its
    // allowance while it cools, nor after it (half-open: the probe is the script's).
    let policy = policy(Duration::from_millis(300));
    let view = instances[0]
        .report(&id, rate_limited(None), None, &policy)
        .await;
    let until = view.until.unwrap();
    eventually("instance b hears of the cooldown", || async {
        instances[1].cooldown(&id).until.is_some()
    })
    .await;
    let cooling = instances[1].admit(request(&id, vec![claim.clone()])).await;
    assert!(
        matches!(cooling, Admit::Refused(Refusal::Cooling { .. })),
        "{cooling:?}"
    );
    tokio::time::sleep_until(until + Duration::from_millis(50)).await;
    let answers = futures_util::future::join_all((0..10).map(|i| {
        let instance = Arc::clone(&instances[i % 2]);
        let request = request(&id, vec![claim.clone()]);
        async move { instance.admit(request).await }
    }))
    .await;
    let admitted_count = answers.iter().filter(|answer| admitted(answer)).count();
    assert_eq!(admitted_count, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|answer| matches!(answer, Admit::Admitted(admitted) if admitted.probe.is_some())),
        "{answers:?}"
    );
}

#[tokio::test]
async fn below_half_of_its_capacity_a_bucket_leases_nothing_and_every_admission_is_a_call() {
    let server = RedisServer::start().await;
    let instance = start(options(&server, "a")).await;
    let id = backend("b-lease-half");
    // 6,000/min: an allowance of 1 token while the bucket stays at 3,000 or more; refills
    // 100/s.
    let claim = BucketClaim::one(BucketKey::backend_rpm(&id), 6_000);

    // Full: the first admission is a call and leases one token, the second is paid from it.
    let before = command_calls(&server, "hmget").await;
    for _ in 0..2 {
        assert!(admitted(
            &instance.admit(request(&id, vec![claim.clone()])).await
        ));
    }
    assert_eq!(admit_calls_since(&server, before, 1).await, 1);

    // Drained to about 1,000 tokens by one large claim (more than 1 token: no allowance
    // either); refilling to half the capacity would take 20 s.
    let drain = BucketClaim {
        cost: 5_000,
        ..claim.clone()
    };
    assert!(admitted(&instance.admit(request(&id, vec![drain])).await));
    // Below half: every admission asks Redis.
    let before = command_calls(&server, "hmget").await;
    for _ in 0..20 {
        assert!(admitted(
            &instance.admit(request(&id, vec![claim.clone()])).await
        ));
    }
    assert_eq!(admit_calls_since(&server, before, 1).await, 20);
}

/// Issue #11: a backend's monthly spend (no reservation) — each recorded cost is added to the
/// shared figure after raising it to the recording instance's own (a fresh Redis starts from
/// what the instances know), the reply and a read of several windows at once give every
/// instance the cluster's figure, a window nobody recorded reads as unknown, and the hash
/// expires when told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_spend_is_recorded_seeded_and_read_back_by_every_instance() {
    let server = RedisServer::start().await;
    let instances = cluster(&server).await;
    let owner = SpendRecord::backend_owner(&BackendId::new("b-1"));
    assert_eq!(owner, "backend:b-1");
    let expire_at_ms = chrono::Utc::now().timestamp_millis() + 60_000;
    let record = |cost: u64, seed: u64| SpendRecord {
        owner: owner.clone(),
        cost,
        windows: vec![SpendWindowSeed {
            id: "m:202611".to_owned(),
            seed,
            expire_at_ms: Some(expire_at_ms),
        }],
    };
    // The first instance knows of 100 spent (the database's figure): 100 + 30.
    assert_eq!(
        instances[0].record_spend(&record(30, 100)).await,
        Some(vec![130])
    );
    // Another instance knowing less changes nothing but adds its cost.
    assert_eq!(
        instances[1].record_spend(&record(20, 0)).await,
        Some(vec![150])
    );
    // One that knows more (spend settled while Redis was away) raises the figure first.
    assert_eq!(
        instances[2].record_spend(&record(5, 400)).await,
        Some(vec![405])
    );
    let names = vec![
        (owner.clone(), "m:202611".to_owned()),
        ("backend:other".to_owned(), "m:202611".to_owned()),
    ];
    for instance in &instances {
        assert_eq!(
            instance.read_spend(&names).await,
            Some(vec![Some(405), None])
        );
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = "{poolgate}:v1:budget:backend:b-1:m:202611";
    let (spent, reserved): (u64, Option<u64>) = redis::cmd("HMGET")
        .arg(key)
        .arg("spent")
        .arg("reserved")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((spent, reserved), (405, None));
    let expires: i64 = redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(expires, expire_at_ms);
}

/// Issue #11: a request abandoned while its budget (or backend cap) reservation is in flight —
/// its client left — must not leave the reservation in Redis until the window is forgotten: the
/// detached call's task releases what nobody received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_nobody_received_is_released() {
    let server = RedisServer::start().await;
    let shared: Arc<dyn SharedRuntime> = start(options(&server, "a")).await;
    let owner = SpendRecord::backend_owner(&backend("capped"));
    let claim = BudgetClaim {
        owner: owner.clone(),
        amount: 40,
        windows: vec![BudgetWindowClaim {
            id: "m:202611".to_owned(),
            limit: 100,
            seed: 7,
            expire_at_ms: None,
        }],
    };
    // Received: reserved as usual.
    let Some(BudgetAdmit::Reserved { hold, figures }) =
        poolgate::shared::reserve_budget_detached(&shared, claim.clone()).await
    else {
        panic!("the reservation fits");
    };
    assert_eq!(figures, vec![(7, 40)]);
    // The settle answers with the shared spend after it (the caller's ledger is raised to it).
    assert_eq!(shared.settle_budget(hold, 3).await, Some(vec![Some(10)]));
    // Abandoned at once (the future dropped before the reply): the script still runs (it raises
    // the figure to this claim's seed, 12), and the reservation it made is released. Redis holds
    // every client's commands for a moment (well under the call timeout), so the reply cannot
    // arrive before the single poll, however late this thread gets the core back.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let paused: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(paused, "OK");
    let abandoned =
        futures_util::FutureExt::now_or_never(poolgate::shared::reserve_budget_detached(
            &shared,
            BudgetClaim {
                windows: vec![BudgetWindowClaim {
                    seed: 12,
                    ..claim.windows[0].clone()
                }],
                ..claim
            },
        ));
    assert!(
        abandoned.is_none(),
        "polled once and dropped before the reply"
    );
    let figure = format!("{{poolgate}}:v1:budget:{owner}:m:202611");
    eventually("the abandoned reservation is made, then released", || {
        let mut conn = conn.clone();
        let figure = figure.clone();
        async move {
            let (spent, reserved): (u64, u64) = redis::cmd("HMGET")
                .arg(&figure)
                .arg("spent")
                .arg("reserved")
                .query_async(&mut conn)
                .await
                .unwrap();
            (spent, reserved) == (12, 0)
        }
    })
    .await;
}
