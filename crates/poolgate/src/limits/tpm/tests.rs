use proptest::prelude::*;
use tokio::time::advance;

use super::*;

fn now() -> Instant {
    Instant::now()
}

#[tokio::test(start_paused = true)]
async fn reserve_takes_the_estimate_and_refills_at_tpm_per_minute() {
    // 600 tokens per minute: 10 per second.
    let mut bucket = TpmBucket::per_minute(600, now());
    let first = bucket.reserve(400, now()).unwrap();
    assert_eq!(first.tokens(), 400);
    assert_eq!(bucket.available(now()), 200);
    assert_eq!(
        bucket.reserve(250, now()),
        Err(TpmRefusal::Wait(Duration::from_secs(5)))
    );
    assert_eq!(bucket.wait_time(250, now()), Some(Duration::from_secs(5)));
    advance(Duration::from_millis(4_999)).await;
    assert_eq!(
        bucket.reserve(250, now()),
        Err(TpmRefusal::Wait(Duration::from_millis(1)))
    );
    advance(Duration::from_millis(1)).await;
    let second = bucket.reserve(250, now()).unwrap();
    assert_eq!(bucket.available(now()), 0);
    assert_eq!(bucket.settle(first, 400, now()), Settled::Exact);
    assert_eq!(bucket.settle(second, 250, now()), Settled::Exact);

    advance(Duration::from_secs(3600)).await;
    assert_eq!(bucket.available(now()), 600, "never above capacity");
}

#[tokio::test(start_paused = true)]
async fn an_overestimate_is_refunded_up_to_capacity() {
    let mut bucket = TpmBucket::per_minute(1_000, now());
    let reservation = bucket.reserve(900, now()).unwrap();
    assert_eq!(bucket.available(now()), 100);
    // The answer used 300 of the 900 reserved (max_tokens was generous).
    assert_eq!(
        bucket.settle(reservation, 300, now()),
        Settled::Refunded(600)
    );
    assert_eq!(bucket.available(now()), 700);

    // A refund after the bucket has refilled stops at capacity.
    let reservation = bucket.reserve(500, now()).unwrap();
    advance(Duration::from_secs(60)).await;
    assert_eq!(bucket.settle(reservation, 0, now()), Settled::Refunded(500));
    assert_eq!(bucket.available(now()), 1_000);
}

#[tokio::test(start_paused = true)]
async fn an_underestimate_is_charged_and_a_debt_delays_admission() {
    // 600 tokens per minute: 10 per second.
    let mut bucket = TpmBucket::per_minute(600, now());
    let reservation = bucket.reserve(100, now()).unwrap();
    // The request used 700 tokens: 600 more than reserved, 100 more than the bucket had.
    assert_eq!(
        bucket.settle(reservation, 700, now()),
        Settled::Charged(600)
    );
    assert_eq!(bucket.available(now()), -100);
    // 50 tokens need the debt of 100 repaid first: (100 + 50) / 10 per second = 15 s.
    assert_eq!(bucket.wait_time(50, now()), Some(Duration::from_secs(15)));
    assert_eq!(
        bucket.reserve(50, now()),
        Err(TpmRefusal::Wait(Duration::from_secs(15)))
    );
    advance(Duration::from_secs(10)).await;
    assert_eq!(bucket.available(now()), 0, "the debt is repaid");
    assert!(bucket.reserve(50, now()).is_err());
    advance(Duration::from_secs(5)).await;
    assert!(bucket.reserve(50, now()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_bucket_is_never_admitted() {
    let mut bucket = TpmBucket::per_minute(1_000, now());
    assert_eq!(
        bucket.reserve(1_001, now()),
        Err(TpmRefusal::TooLarge {
            requested: 1_001,
            tpm: 1_000
        })
    );
    assert_eq!(bucket.wait_time(1_001, now()), None);
    assert_eq!(bucket.available(now()), 1_000, "a refusal takes nothing");
    let whole = bucket.reserve(1_000, now()).unwrap();
    assert_eq!(bucket.settle(whole, 1_000, now()), Settled::Exact);
}

#[tokio::test(start_paused = true)]
async fn fractional_refill_is_not_lost() {
    // 7 tokens per minute: one every 60/7 s, not a whole number of nanoseconds.
    let mut bucket = TpmBucket::per_minute(7, now());
    let all = bucket.reserve(7, now()).unwrap();
    assert_eq!(bucket.settle(all, 7, now()), Settled::Exact);
    let mut granted = 0;
    for _ in 0..60_000 {
        advance(Duration::from_millis(1)).await;
        if let Ok(one) = bucket.reserve(1, now()) {
            assert_eq!(bucket.settle(one, 1, now()), Settled::Exact);
            granted += 1;
        }
    }
    assert_eq!(granted, 7, "exactly one minute of refill in 1 ms steps");
}

#[tokio::test(start_paused = true)]
async fn set_tpm_keeps_fill_and_debt() {
    let mut bucket = TpmBucket::per_minute(1_000, now());
    let reservation = bucket.reserve(400, now()).unwrap();
    bucket.set_tpm(6_000, now());
    assert_eq!(bucket.tpm(), 6_000);
    assert_eq!(
        bucket.available(now()),
        600,
        "the fill stays, the capacity grows"
    );
    bucket.set_tpm(100, now());
    assert_eq!(bucket.available(now()), 100, "clamped to the new capacity");
    assert_eq!(
        bucket.settle(reservation, 700, now()),
        Settled::Charged(300)
    );
    assert_eq!(bucket.available(now()), -200);
    bucket.set_tpm(200, now());
    assert_eq!(
        bucket.available(now()),
        -200,
        "a debt survives a rate change"
    );
    // 200 per minute: the 200 of debt plus 100 tokens take 90 s.
    assert_eq!(bucket.wait_time(100, now()), Some(Duration::from_secs(90)));
}

#[tokio::test(start_paused = true)]
async fn limiter_zero_is_unlimited_and_reconfigures() {
    let limiter = TpmLimiter::new(0, now());
    assert_eq!(limiter.tpm(), 0);
    let free = limiter.reserve(1_000_000, now()).unwrap();
    assert_eq!(limiter.wait_time(u64::MAX, now()), Some(Duration::ZERO));
    assert_eq!(limiter.available(now()), None);
    assert_eq!(limiter.settle(free, 5, now()), Settled::Exact);

    // A reservation made while unlimited is charged in full once a limit is set.
    let before = limiter.reserve(10, now()).unwrap();
    limiter.reconfigure(100, now());
    assert_eq!(limiter.tpm(), 100);
    assert_eq!(
        limiter.available(now()),
        Some(100),
        "unlimited -> limited starts full"
    );
    assert_eq!(limiter.settle(before, 30, now()), Settled::Charged(30));
    assert_eq!(limiter.available(now()), Some(70));
    let held = limiter.reserve(70, now()).unwrap();
    assert!(matches!(
        limiter.reserve(1, now()),
        Err(TpmRefusal::Wait(_))
    ));
    limiter.reconfigure(50, now());
    assert_eq!(limiter.available(now()), Some(0));
    assert_eq!(limiter.settle(held, 20, now()), Settled::Refunded(50));
    assert_eq!(
        limiter.available(now()),
        Some(50),
        "refund capped at the new capacity"
    );
    limiter.reconfigure(0, now());
    assert!(limiter.reserve(u64::MAX, now()).is_ok());
}

#[test]
fn earlier_instant_refills_nothing() {
    let start = Instant::now();
    let later = start + Duration::from_secs(1);
    let mut bucket = TpmBucket::per_minute(60, start);
    let all = bucket.reserve(60, later).unwrap();
    assert_eq!(bucket.settle(all, 60, later), Settled::Exact);
    assert!(bucket.reserve(1, start).is_err());
    assert_eq!(bucket.wait_time(1, start), Some(Duration::from_secs(1)));
}

/// Time steps at several scales, so that both sub-token and multi-token refills happen.
fn time_step() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0_u64..1_000).prop_map(Duration::from_nanos),
        (0_u64..2_000).prop_map(Duration::from_millis),
        (0_u64..90).prop_map(Duration::from_secs),
    ]
}

/// One step of a simulated workload: time passes, a request asks for `estimate` tokens and (if
/// admitted) used `actual`; earlier requests may settle now.
#[derive(Clone, Debug)]
struct Step {
    pause: Duration,
    estimate: u64,
    actual: u64,
    settle_oldest: bool,
}

fn step(tpm: u64) -> impl Strategy<Value = Step> {
    (
        time_step(),
        0..=tpm,
        0..=tpm.saturating_mul(2),
        any::<bool>(),
    )
        .prop_map(|(pause, estimate, actual, settle_oldest)| Step {
            pause,
            estimate,
            actual,
            settle_oldest,
        })
}

/// The most a bucket may have let through in `elapsed`: a full bucket plus the exact refill.
fn bound(tpm: u64, elapsed: Duration) -> i128 {
    i128::from(tpm)
        + i128::from(tpm) * i128::try_from(elapsed.as_nanos()).unwrap() / UNITS_PER_TOKEN
}

proptest! {
    /// Without settling, tokens granted over any run from a full bucket never exceed
    /// `capacity + refill`, and `wait_time` agrees with `reserve`: waiting exactly that long
    /// admits, one nanosecond less does not.
    #[test]
    fn grants_bounded_and_wait_time_exact(
        tpm in prop_oneof![1_u64..100, 1_u64..10_000_000],
        steps in proptest::collection::vec((time_step(), any::<u64>()), 1..80),
    ) {
        let start = Instant::now();
        let mut bucket = TpmBucket::per_minute(tpm, start);
        let mut elapsed = Duration::ZERO;
        let mut granted: i128 = 0;
        for (pause, seed) in steps {
            elapsed += pause;
            let now = start + elapsed;
            let tokens = seed % (tpm + 1);
            let before = bucket.clone();
            let wait = bucket.wait_time(tokens, now);
            match bucket.reserve(tokens, now) {
                Ok(reservation) => {
                    prop_assert_eq!(wait, Some(Duration::ZERO));
                    granted += i128::from(reservation.tokens());
                }
                Err(TpmRefusal::Wait(retry_in)) => {
                    prop_assert_eq!(Some(retry_in), wait);
                    prop_assert!(retry_in > Duration::ZERO);
                    let too_early = now + retry_in - Duration::from_nanos(1);
                    prop_assert!(before.clone().reserve(tokens, too_early).is_err());
                    prop_assert!(before.clone().reserve(tokens, now + retry_in).is_ok());
                }
                Err(TpmRefusal::TooLarge { .. }) => prop_assert!(false, "tokens <= tpm"),
            }
            prop_assert!(granted <= bound(tpm, elapsed), "granted {} at {:?}", granted, elapsed);
        }
    }

    /// With settling (refunds and extra charges, in any order): at every admission, everything
    /// charged so far (reservations + extra charges − refunds) is within `capacity + refill`;
    /// only extras settled after the last admission can go beyond it.
    #[test]
    fn charged_bounded_at_every_admission_with_settles(
        tpm in prop_oneof![1_u64..1_000, 1_u64..1_000_000],
        steps in proptest::collection::vec(step(1_000), 1..80),
    ) {
        let start = Instant::now();
        let mut bucket = TpmBucket::per_minute(tpm, start);
        let mut elapsed = Duration::ZERO;
        let mut charged: i128 = 0;
        let mut open: std::collections::VecDeque<(TpmReservation, u64)> = Default::default();
        for step in steps {
            elapsed += step.pause;
            let now = start + elapsed;
            if step.settle_oldest {
                if let Some((reservation, actual)) = open.pop_front() {
                    match bucket.settle(reservation, actual, now) {
                        Settled::Exact => {}
                        Settled::Refunded(tokens) => charged -= i128::from(tokens),
                        Settled::Charged(tokens) => charged += i128::from(tokens),
                    }
                }
            }
            let estimate = step.estimate % (tpm + 1);
            if let Ok(reservation) = bucket.reserve(estimate, now) {
                charged += i128::from(estimate);
                prop_assert!(
                    charged <= bound(tpm, elapsed),
                    "charged {} > bound {} at {:?}", charged, bound(tpm, elapsed), elapsed
                );
                prop_assert!(bucket.available(now) >= 0, "an admission never leaves a debt");
                open.push_back((reservation, step.actual % (2 * tpm + 1)));
            }
        }
    }
}
