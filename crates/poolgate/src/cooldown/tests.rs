//! Tests of `cooldown`.

use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::advance;

const SECOND: Duration = Duration::from_secs(1);

fn no_jitter() -> CooldownPolicy {
    CooldownPolicy {
        jitter: 0.0,
        ..CooldownPolicy::default()
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn rate_limited(retry_after: Option<u64>) -> Outcome {
    Outcome::RateLimited {
        retry_after: retry_after.map(Duration::from_secs),
    }
}

/// Waits out the current cooldown, takes the probe and reports `outcome` for it; returns the
/// length of the cooldown that follows (zero if none).
async fn probe_with(
    state: &mut CooldownState,
    outcome: Outcome,
    policy: &CooldownPolicy,
) -> Duration {
    if let Some(until) = state.snapshot().until {
        advance(until.saturating_duration_since(Instant::now())).await;
    }
    let now = Instant::now();
    assert_eq!(state.admit(now), Admission::Probe);
    state.record(outcome, now, policy, &mut rng());
    state
        .snapshot()
        .until
        .map_or(Duration::ZERO, |until| until - now)
}

#[tokio::test(start_paused = true)]
async fn rate_limit_cools_then_one_probe_then_ready() {
    let policy = no_jitter();
    let mut state = CooldownState::new();
    let t0 = Instant::now();
    assert_eq!(state.admit(t0), Admission::Ready);
    assert_eq!(state.health(t0), Health::Healthy);

    assert!(state.record(rate_limited(None), t0, &policy, &mut rng()));
    let until = t0 + 5 * SECOND;
    assert_eq!(state.admit(t0), Admission::Cooling { until });
    assert_eq!(state.ready_at(t0), ReadyAt::At(until));
    assert_eq!(state.health(t0), Health::Cooling);
    assert_eq!(
        state.snapshot().last_reason,
        Some(CooldownReason::RateLimited)
    );

    advance(5 * SECOND).await;
    let now = Instant::now();
    assert_eq!(state.ready_at(now), ReadyAt::Now);
    assert_eq!(state.admit(now), Admission::Probe);
    assert_eq!(state.admit(now), Admission::ProbeInFlight);
    assert_eq!(state.admit(now), Admission::ProbeInFlight);
    assert_eq!(state.ready_at(now), ReadyAt::At(now + PROBE_HINT));
    assert_eq!(
        state.health(now),
        Health::Cooling,
        "cooling until the probe succeeds"
    );

    assert!(state.record(Outcome::Success, now, &policy, &mut rng()));
    for _ in 0..3 {
        assert_eq!(state.admit(now), Admission::Ready);
    }
    assert_eq!(state.health(now), Health::Healthy);
    assert_eq!(
        state.snapshot(),
        CooldownSnapshot {
            consecutive_429: 0,
            until: None,
            broken: false,
            last_reason: None
        }
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_up_to_max() {
    let policy = no_jitter();
    let mut state = CooldownState::new();
    state.record(rate_limited(None), Instant::now(), &policy, &mut rng());
    let mut lengths = vec![state.snapshot().until.map(|u| u - Instant::now())];
    for _ in 0..10 {
        lengths.push(Some(
            probe_with(&mut state, rate_limited(None), &policy).await,
        ));
    }
    let secs: Vec<u64> = lengths
        .into_iter()
        .map(|d| d.unwrap_or_default().as_secs())
        .collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600, 600]);
    assert_eq!(state.consecutive_429(), 11);

    probe_with(&mut state, Outcome::Success, &policy).await;
    assert_eq!(state.consecutive_429(), 0);
    assert_eq!(
        probe_or_ready_then_429(&mut state, &policy),
        5 * SECOND,
        "count restarts"
    );
}

fn probe_or_ready_then_429(state: &mut CooldownState, policy: &CooldownPolicy) -> Duration {
    let now = Instant::now();
    assert!(state.admit(now).may_send());
    state.record(rate_limited(None), now, policy, &mut rng());
    state
        .snapshot()
        .until
        .map_or(Duration::ZERO, |until| until - now)
}

#[test]
fn backoff_survives_huge_counts_and_degenerate_policies() {
    let policy = CooldownPolicy::default();
    assert_eq!(policy.rate_limit_delay(u32::MAX, None), policy.max);
    let zero = CooldownPolicy {
        base: Duration::ZERO,
        ..CooldownPolicy::default()
    };
    assert_eq!(zero.rate_limit_delay(u32::MAX, None), Duration::ZERO);
    let tiny = CooldownPolicy {
        base: Duration::from_nanos(1),
        ..CooldownPolicy::default()
    };
    assert_eq!(
        tiny.rate_limit_delay(40, None),
        Duration::from_nanos(1 << 39)
    );
    let huge = CooldownPolicy {
        max: Duration::MAX,
        jitter: 1.0,
        ..CooldownPolicy::default()
    };
    assert_eq!(huge.rate_limit_delay(u32::MAX, None), Duration::MAX);

    let now = Instant::now();
    let mut state = CooldownState::restore(u32::MAX, None, false);
    assert!(state.record(rate_limited(None), now, &huge, &mut rng()));
    assert!(state.snapshot().until.is_some_and(|until| until > now));
    assert_eq!(state.consecutive_429(), u32::MAX);
}

#[tokio::test(start_paused = true)]
async fn retry_after_longer_than_backoff_wins_but_is_capped() {
    let policy = no_jitter();
    let now = Instant::now();
    let mut state = CooldownState::new();
    state.record(rate_limited(Some(42)), now, &policy, &mut rng());
    assert_eq!(state.snapshot().until, Some(now + 42 * SECOND));

    let len = probe_with(&mut state, rate_limited(Some(1)), &policy).await;
    assert_eq!(
        len,
        10 * SECOND,
        "a shorter Retry-After does not undercut the backoff"
    );

    let len = probe_with(&mut state, rate_limited(Some(86_400)), &policy).await;
    assert_eq!(len, policy.max, "Retry-After is capped at max too");
}

#[tokio::test(start_paused = true)]
async fn later_shorter_retry_after_never_shortens() {
    let policy = no_jitter();
    let t0 = Instant::now();
    let mut state = CooldownState::new();
    state.record(rate_limited(Some(60)), t0, &policy, &mut rng());
    advance(10 * SECOND).await;
    let now = Instant::now();
    assert!(!state.record(rate_limited(Some(1)), now, &policy, &mut rng()));
    assert!(!state.record(Outcome::ServerError, now, &policy, &mut rng()));
    assert_eq!(state.snapshot().until, Some(t0 + 60 * SECOND));
    assert_eq!(
        state.snapshot().last_reason,
        Some(CooldownReason::RateLimited)
    );

    // A longer one from the same episode does lengthen it.
    assert!(state.record(rate_limited(Some(120)), now, &policy, &mut rng()));
    assert_eq!(state.snapshot().until, Some(now + 120 * SECOND));
}

#[tokio::test(start_paused = true)]
async fn concurrent_429s_are_one_episode() {
    let policy = no_jitter();
    let now = Instant::now();
    let mut state = CooldownState::new();
    assert!(state.record(rate_limited(None), now, &policy, &mut rng()));
    for _ in 0..9 {
        assert!(!state.record(rate_limited(None), now, &policy, &mut rng()));
    }
    assert_eq!(state.consecutive_429(), 1);
    assert_eq!(state.snapshot().until, Some(now + 5 * SECOND));
}

#[tokio::test(start_paused = true)]
async fn success_from_before_the_cooldown_does_not_end_it() {
    let policy = no_jitter();
    let now = Instant::now();
    let mut state = CooldownState::new();
    state.record(rate_limited(None), now, &policy, &mut rng());
    assert!(!state.record(Outcome::Success, now + SECOND, &policy, &mut rng()));
    assert_eq!(
        state.admit(now + SECOND),
        Admission::Cooling {
            until: now + 5 * SECOND
        }
    );
    assert_eq!(state.consecutive_429(), 1);
}

#[test]
fn jitter_stays_within_bounds_and_spreads_seeds() {
    let policy = CooldownPolicy::default();
    let now = Instant::now();
    let d = 5 * SECOND;
    let mut ends = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut state = CooldownState::new();
        state.record(
            rate_limited(None),
            now,
            &policy,
            &mut StdRng::seed_from_u64(seed),
        );
        let len = state
            .snapshot()
            .until
            .map(|until| until - now)
            .unwrap_or_default();
        assert!(len >= d && len <= d.mul_f64(1.0 + policy.jitter), "{len:?}");
        ends.insert(len);
    }
    assert!(
        ends.len() > 150,
        "seeds spread the cooldowns apart: {} distinct",
        ends.len()
    );

    // The same seed gives the same cooldown.
    let run = |seed| {
        let mut state = CooldownState::new();
        state.record(
            Outcome::ServerError,
            now,
            &policy,
            &mut StdRng::seed_from_u64(seed),
        );
        state.snapshot().until
    };
    assert_eq!(run(3), run(3));

    for jitter in [f64::NAN, -1.0, 0.0] {
        let odd = CooldownPolicy {
            jitter,
            ..CooldownPolicy::default()
        };
        assert_eq!(odd.with_jitter(d, &mut rng()), d);
    }
    let over = CooldownPolicy {
        jitter: 7.0,
        ..CooldownPolicy::default()
    };
    assert!(over.with_jitter(d, &mut rng()) <= 2 * d);
}

#[tokio::test(start_paused = true)]
async fn server_error_cools_without_counting() {
    let policy = CooldownPolicy {
        error_cooldown: 3 * SECOND,
        ..no_jitter()
    };
    let now = Instant::now();
    let mut state = CooldownState::new();
    state.record(rate_limited(None), now, &policy, &mut rng());
    let len = probe_with(&mut state, Outcome::ServerError, &policy).await;
    assert_eq!(len, 3 * SECOND);
    assert_eq!(state.consecutive_429(), 1, "a 5xx keeps the 429 count");
    assert_eq!(
        state.snapshot().last_reason,
        Some(CooldownReason::ServerError)
    );

    let len = probe_with(&mut state, Outcome::ServerError, &policy).await;
    assert_eq!(len, 3 * SECOND, "error cooldown again, no growth");
    let len = probe_with(&mut state, rate_limited(None), &policy).await;
    assert_eq!(len, 10 * SECOND, "the next 429 continues the backoff");
    probe_with(&mut state, Outcome::Success, &policy).await;
    assert_eq!(state.admit(Instant::now()), Admission::Ready);
}

#[tokio::test(start_paused = true)]
async fn auth_failure_breaks_until_reset() {
    let policy = no_jitter();
    let now = Instant::now();
    let mut state = CooldownState::new();
    assert!(state.record(Outcome::AuthFailed, now, &policy, &mut rng()));
    assert!(!state.record(Outcome::AuthFailed, now, &policy, &mut rng()));
    advance(Duration::from_secs(86_400)).await;
    let now = Instant::now();
    assert_eq!(state.admit(now), Admission::Broken);
    assert!(!state.admit(now).may_send());
    assert_eq!(state.ready_at(now), ReadyAt::Never);
    assert_eq!(state.health(now), Health::Error);
    assert!(state.snapshot().broken);
    assert_eq!(
        state.snapshot().last_reason,
        Some(CooldownReason::AuthFailed)
    );

    state.reset();
    assert_eq!(state.admit(now), Admission::Ready);
    assert_eq!(state.snapshot(), CooldownState::new().snapshot());

    // A success also proves the key works.
    state.record(Outcome::AuthFailed, now, &policy, &mut rng());
    assert!(state.record(Outcome::Success, now, &policy, &mut rng()));
    assert_eq!(state.admit(now), Admission::Ready);
}

#[tokio::test(start_paused = true)]
async fn reset_clears_cooldown_and_probe() {
    let policy = no_jitter();
    let now = Instant::now();
    let mut state = CooldownState::restore(3, Some(now), false);
    assert_eq!(state.admit(now), Admission::Probe);
    state.reset();
    assert_eq!(state.admit(now), Admission::Ready);
    assert_eq!(state.consecutive_429(), 0);
    state.record(rate_limited(None), now, &policy, &mut rng());
    assert_eq!(state.snapshot().until, Some(now + 5 * SECOND));
}

#[tokio::test(start_paused = true)]
async fn restore_future_cools_and_past_probes() {
    let policy = no_jitter();
    let now = Instant::now();
    let future = now + 30 * SECOND;
    let mut cooling = CooldownState::restore(2, Some(future), false);
    assert_eq!(cooling.admit(now), Admission::Cooling { until: future });
    assert_eq!(cooling.consecutive_429(), 2);

    advance(Duration::from_secs(60)).await;
    let now = Instant::now();
    let mut expired = CooldownState::restore(2, Some(now - 10 * SECOND), false);
    assert_eq!(expired.ready_at(now), ReadyAt::Now);
    assert_eq!(expired.admit(now), Admission::Probe);
    assert_eq!(expired.admit(now), Admission::ProbeInFlight);
    expired.record(rate_limited(None), now, &policy, &mut rng());
    assert_eq!(
        expired.snapshot().until,
        Some(now + 20 * SECOND),
        "third 429: 5 * 2^2"
    );

    let mut healthy = CooldownState::restore(0, None, false);
    assert_eq!(healthy.admit(now), Admission::Ready);
    let mut broken = CooldownState::restore(0, None, true);
    assert_eq!(broken.admit(now), Admission::Broken);
    assert_eq!(
        broken.snapshot().last_reason,
        Some(CooldownReason::AuthFailed)
    );
}

#[tokio::test(start_paused = true)]
async fn release_probe_lets_another_request_probe() {
    let policy = no_jitter();
    let mut state = CooldownState::new();
    state.record(rate_limited(None), Instant::now(), &policy, &mut rng());
    advance(5 * SECOND).await;
    let now = Instant::now();
    assert_eq!(state.admit(now), Admission::Probe);
    assert_eq!(state.admit(now), Admission::ProbeInFlight);
    state.release_probe();
    assert_eq!(state.ready_at(now), ReadyAt::Now);
    assert_eq!(state.admit(now), Admission::Probe);
    assert_eq!(state.admit(now), Admission::ProbeInFlight);
    assert_eq!(
        state.consecutive_429(),
        1,
        "releasing changes nothing persisted"
    );
    state.release_probe();
    state.release_probe();
    assert_eq!(state.admit(now), Admission::Probe);
}

#[tokio::test(start_paused = true)]
async fn record_reports_persisted_changes() {
    let policy = no_jitter();
    let now = Instant::now();
    let mut state = CooldownState::new();
    assert!(
        !state.record(Outcome::Success, now, &policy, &mut rng()),
        "healthy stays healthy"
    );
    assert!(state.record(Outcome::ServerError, now, &policy, &mut rng()));
    assert!(
        !state.record(Outcome::ServerError, now, &policy, &mut rng()),
        "same until"
    );
    assert!(
        state.record(rate_limited(Some(10)), now, &policy, &mut rng()),
        "longer"
    );
    assert!(state.record(Outcome::AuthFailed, now, &policy, &mut rng()));
    assert!(
        state.record(Outcome::Success, now, &policy, &mut rng()),
        "broken cleared"
    );
    advance(10 * SECOND).await;
    assert!(
        state.record(Outcome::Success, Instant::now(), &policy, &mut rng()),
        "expired cooldown ends"
    );
    assert!(!state.record(Outcome::Success, Instant::now(), &policy, &mut rng()));
}

#[derive(Debug, Clone)]
enum Step {
    Advance(u64),
    Admit,
    Release,
    Record(Outcome),
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    let outcome = prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::ServerError),
        Just(Outcome::AuthFailed),
        proptest::option::of(0u64..2_000_000).prop_map(|ms| Outcome::RateLimited {
            retry_after: ms.map(Duration::from_millis),
        }),
    ];
    prop_oneof![
        3 => (0u64..120_000).prop_map(Step::Advance),
        4 => Just(Step::Admit),
        1 => Just(Step::Release),
        3 => outcome.prop_map(Step::Record),
        1 => Just(Step::Reset),
    ]
}

proptest! {
    /// `until` only moves back through a success or a reset; every cooldown set is at most
    /// `max * (1 + jitter)` long; a probe is handed out at most once per expiry.
    #[test]
    fn cooldown_invariants(
        seed in any::<u64>(),
        base_ms in 0u64..10_000,
        max_ms in 0u64..700_000,
        error_ms in 0u64..10_000,
        jitter in 0.0f64..=1.0,
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let max = Duration::from_millis(max_ms);
        let policy = CooldownPolicy {
            base: Duration::from_millis(base_ms),
            max,
            jitter,
            error_cooldown: Duration::from_millis(error_ms).min(max),
        };
        let limit = max.mul_f64(1.0 + jitter);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = CooldownState::new();
        let mut now = Instant::now();
        let mut probe_out = false;
        for step in steps {
            let before = state.snapshot();
            match step.clone() {
                Step::Advance(ms) => now += Duration::from_millis(ms),
                Step::Admit => {
                    let admission = state.admit(now);
                    match admission {
                        Admission::Probe => {
                            prop_assert!(!probe_out, "two probes at once");
                            probe_out = true;
                        }
                        Admission::ProbeInFlight => prop_assert!(probe_out),
                        Admission::Cooling { until } => prop_assert!(until > now),
                        Admission::Ready => prop_assert!(before.until.is_none() && !before.broken),
                        Admission::Broken => prop_assert!(before.broken),
                    }
                }
                Step::Release => {
                    state.release_probe();
                    probe_out = false;
                }
                Step::Record(outcome) => {
                    let changed = state.record(outcome, now, &policy, &mut rng);
                    probe_out = false;
                    let after = state.snapshot();
                    prop_assert_eq!(
                        changed,
                        (before.consecutive_429, before.until, before.broken)
                            != (after.consecutive_429, after.until, after.broken)
                    );
                    if let (Some(new), true) = (after.until, after.until != before.until) {
                        prop_assert!(new - now <= limit, "{:?} > {:?}", new - now, limit);
                    }
                    if !matches!(outcome, Outcome::Success) {
                        prop_assert!(after.until >= before.until, "{:?}: {:?} -> {:?}", outcome, before.until, after.until);
                    }
                }
                Step::Reset => {
                    state.reset();
                    probe_out = false;
                }
            }
            let after = state.snapshot();
            if !matches!(step, Step::Reset | Step::Record(Outcome::Success)) {
                prop_assert!(after.until >= before.until);
            }
            prop_assert_eq!(state.health(now) == Health::Error, after.broken);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_probe_keeps_the_backend_half_open() {
    let policy = no_jitter();
    let mut state = CooldownState::new();
    let now = Instant::now();
    state.record(Outcome::ServerError, now, &policy, &mut rng());
    let after = now + policy.error_cooldown;
    assert_eq!(state.admit(after), Admission::Probe);
    // A 4xx answer to the probe: not a success, not a failure.
    assert!(!state.record(Outcome::Inconclusive, after, &policy, &mut rng()));
    assert_eq!(state.health(after), Health::Cooling);
    assert_eq!(state.cooling_reason(), CooldownReason::ServerError);
    // The slot is free again: the next request is the probe.
    assert_eq!(state.admit(after), Admission::Probe);
    assert!(state.record(Outcome::Success, after, &policy, &mut rng()));
    assert_eq!(state.health(after), Health::Healthy);
}
