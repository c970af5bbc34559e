//! The runtime API with paused time: admission, probes, tokens, reset and snapshots.

use super::*;

fn policy() -> CooldownPolicy {
    CooldownPolicy {
        jitter: 0.0,
        ..CooldownPolicy::default()
    }
}

fn healthy(rpm: u32) -> Arc<BackendRuntime> {
    Arc::new(BackendRuntime::restore(
        rpm,
        &PersistedHealth::default(),
        Instant::now(),
    ))
}

#[tokio::test(start_paused = true)]
async fn admission_holds_an_in_flight_slot_until_dropped() {
    let runtime = healthy(0);
    let now = Instant::now();
    let first = runtime.admit(now).unwrap();
    let second = runtime.admit(now).unwrap();
    assert!(!first.is_probe());
    assert_eq!(runtime.snapshot(now).in_flight, 2);
    drop(first);
    drop(second);
    assert_eq!(runtime.snapshot(now).in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_cools_then_one_probe_is_admitted() {
    let runtime = healthy(0);
    let now = Instant::now();
    let mut ticket = runtime.admit(now).unwrap();
    let changed = ticket.resolve(
        UpstreamOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(10)),
        },
        &policy(),
        now,
    );
    assert!(
        matches!(changed, Resolution::Local(true)),
        "a new cooldown is persisted"
    );
    drop(ticket);
    assert!(matches!(runtime.admit(now), Err(ReadyAt::At(_))));
    assert_eq!(runtime.ready_at(now), Some(now + Duration::from_secs(10)));

    tokio::time::advance(Duration::from_secs(10)).await;
    let now = Instant::now();
    let probe = runtime.admit(now).unwrap();
    assert!(probe.is_probe());
    assert!(runtime.admit(now).is_err(), "one probe at a time");
    drop(probe);
    assert!(
        runtime.admit(now).unwrap().is_probe(),
        "an abandoned probe frees the slot"
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_bucket_refuses_and_says_when() {
    let runtime = healthy(60);
    let now = Instant::now();
    for _ in 0..60 {
        drop(runtime.admit(now).unwrap());
    }
    match runtime.admit(now) {
        Err(ReadyAt::At(at)) => assert_eq!(at, now + Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(runtime.ready_at(now), Some(now + Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_not_sent_gives_its_token_back() {
    let runtime = healthy(1);
    let now = Instant::now();
    let admitted = runtime.admit(now).unwrap();
    assert!(runtime.admit(now).is_err(), "the one token is taken");
    admitted.unsent(now);
    assert_eq!(runtime.snapshot(now).in_flight, 0);
    drop(runtime.admit(now).unwrap());
    assert!(runtime.admit(now).is_err(), "a used token stays used");
}

#[tokio::test(start_paused = true)]
async fn reset_clears_cooldown_broken_key_and_last_error() {
    let runtime = healthy(0);
    let now = Instant::now();
    let mut ticket = runtime.admit(now).unwrap();
    assert!(matches!(
        ticket.resolve(UpstreamOutcome::AuthFailed, &policy(), now),
        Resolution::Local(true)
    ));
    drop(ticket);
    runtime.set_last_error("upstream refused the key (401)".into());
    let snapshot = runtime.snapshot(now);
    assert_eq!(snapshot.health, Health::Error);
    assert!(snapshot.persisted(now).broken);
    assert_eq!(runtime.ready_at(now), None);

    runtime.reset();
    let snapshot = runtime.snapshot(now);
    assert_eq!(snapshot.health, Health::Healthy);
    assert_eq!(snapshot.persisted(now), PersistedHealth::default());
}

#[tokio::test(start_paused = true)]
async fn persisted_health_round_trips_through_restore() {
    let now = Instant::now();
    let health = PersistedHealth {
        cooldown_until_ms: Some(now_ms() + 30_000),
        consecutive_429_count: 2,
        broken: false,
        last_error: Some("upstream rate limited (429)".into()),
    };
    let runtime = BackendRuntime::restore(5, &health, now);
    let snapshot = runtime.snapshot(now);
    assert_eq!(snapshot.health, Health::Cooling);
    assert_eq!(snapshot.consecutive_429, 2);
    assert_eq!(snapshot.rpm, 5);
    let again = snapshot.persisted(now);
    let drift = (again.cooldown_until_ms.unwrap() - health.cooldown_until_ms.unwrap()).abs();
    assert!(drift < 50, "{drift} ms");
    assert_eq!(again.last_error, health.last_error);
}

#[tokio::test(start_paused = true)]
async fn the_registry_keeps_a_runtime_across_edits_and_forgets_deleted_ones() {
    let registry = RuntimeRegistry::default();
    let now = Instant::now();
    let mut record = crate::domain::tests_support::backend_record("reg");
    let first = registry.backend(&record, now);
    record.rpm_limit = 7;
    let again = registry.backend(&record, now);
    assert!(Arc::ptr_eq(&first, &again), "an edit keeps the runtime");
    assert_eq!(again.snapshot(now).rpm, 7, "and applies the new limit");
    registry.retain(&[], &[]);
    assert!(registry.find_backend(&record.id).is_none());
}
