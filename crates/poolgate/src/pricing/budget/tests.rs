use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn usd(text: &str) -> Nanodollars {
    Nanodollars::parse_usd(text).unwrap()
}

fn limits(daily: Option<&str>, monthly: Option<&str>, total: Option<&str>) -> BudgetLimits {
    BudgetLimits {
        daily: daily.map(usd),
        monthly: monthly.map(usd),
        total: total.map(usd),
    }
}

#[test]
fn reserves_until_the_limit_then_refuses_with_the_window() {
    let now = at("2026-11-29T10:00:00Z");
    let ledger = SpendLedger::new(limits(Some("1"), None, None), RestoredSpend::default(), now);
    let first = ledger.reserve(usd("0.6"), now).unwrap();
    assert_eq!(first.amount(), usd("0.6"));
    // 0.6 reserved + 0.5 > 1: refused, although nothing is spent yet.
    let refused = ledger.reserve(usd("0.5"), now).unwrap_err();
    assert_eq!(refused.window, BudgetWindow::Daily);
    assert_eq!(refused.reserved, usd("0.6"));
    assert_eq!(refused.requested, usd("0.5"));
    assert_eq!(refused.resets_at, Some(at("2026-11-30T00:00:00Z")));
    assert_eq!(
        refused.message("this key"),
        "this key's daily budget of $1 cannot cover this request (estimated at $0.5; $0.6 \
         spent or reserved); it resets at 2026-11-30T00:00:00Z"
    );
    let second = ledger.reserve(usd("0.4"), now).unwrap();

    // The first costs less than estimated: the difference comes back.
    ledger.settle(first, usd("0.25"), now);
    ledger.settle(second, usd("0.4"), now);
    let view = ledger.view(now);
    assert_eq!(view.daily.spent, usd("0.65"));
    assert_eq!(view.daily.reserved, Nanodollars::ZERO);
    assert_eq!(view.daily.limit, Some(usd("1")));
    assert_eq!(
        view.total.spent,
        usd("0.65"),
        "unlimited windows still count"
    );
    let third = ledger.reserve(usd("0.35"), now).unwrap();
    ledger.settle(third, usd("0.35"), now);

    // Exactly used up: even a request of unknown (zero) cost is refused now.
    let refused = ledger.reserve(Nanodollars::ZERO, now).unwrap_err();
    assert_eq!(refused.spent, usd("1"));
    assert_eq!(
        refused.message("this key"),
        "this key's daily budget of $1 is used up ($1 spent or reserved); it resets at \
         2026-11-30T00:00:00Z"
    );
}

#[test]
fn the_first_refusing_window_is_named_and_total_never_resets() {
    let now = at("2026-11-29T10:00:00Z");
    let ledger = SpendLedger::new(
        limits(Some("10"), Some("5"), Some("3")),
        RestoredSpend {
            today: usd("1"),
            this_month: usd("4.5"),
            total: usd("2.9"),
        },
        now,
    );
    let refused = ledger.reserve(usd("0.6"), now).unwrap_err();
    assert_eq!(refused.window, BudgetWindow::Monthly);
    assert_eq!(refused.resets_at, Some(at("2026-12-01T00:00:00Z")));
    let refused = ledger.reserve(usd("0.2"), now).unwrap_err();
    assert_eq!(refused.window, BudgetWindow::Total);
    assert_eq!(refused.resets_at, None);
    assert!(refused
        .message("this key")
        .ends_with("the total budget does not reset"));
    assert_eq!(refused.window.field(), "budget_total_usd");
    ledger.settle(ledger.reserve(usd("0.1"), now).unwrap(), usd("0.1"), now);
    assert_eq!(ledger.view(now).total.spent, usd("3"));
}

#[test]
fn days_and_months_roll_over_at_utc_midnight() {
    let start = at("2026-12-31T23:59:59Z");
    let ledger = SpendLedger::new(
        limits(Some("1"), Some("1.5"), None),
        RestoredSpend::default(),
        start,
    );
    ledger.settle(ledger.reserve(usd("1"), start).unwrap(), usd("1"), start);
    assert_eq!(
        ledger.reserve(usd("0.01"), start).unwrap_err().window,
        BudgetWindow::Daily
    );

    // One second later it is a new day, a new month and a new year.
    let new_year = at("2027-01-01T00:00:00Z");
    let view = ledger.view(new_year);
    assert_eq!(view.daily.spent, Nanodollars::ZERO);
    assert_eq!(view.monthly.spent, Nanodollars::ZERO);
    assert_eq!(view.total.spent, usd("1"));
    assert_eq!(view.daily.resets_at, Some(at("2027-01-02T00:00:00Z")));
    assert_eq!(view.monthly.resets_at, Some(at("2027-02-01T00:00:00Z")));
    ledger.settle(
        ledger.reserve(usd("1"), new_year).unwrap(),
        usd("1"),
        new_year,
    );

    // The next day: the daily window is fresh, the month keeps its spend.
    let next_day = at("2027-01-02T08:00:00Z");
    let refused = ledger.reserve(usd("0.6"), next_day).unwrap_err();
    assert_eq!(refused.window, BudgetWindow::Monthly);
    assert_eq!(refused.spent, usd("1"));
    ledger.settle(
        ledger.reserve(usd("0.5"), next_day).unwrap(),
        usd("0.5"),
        next_day,
    );
    let view = ledger.view(next_day);
    assert_eq!(
        (view.daily.spent, view.monthly.spent),
        (usd("0.5"), usd("1.5"))
    );

    // February: fresh again.
    let february = at("2027-02-01T00:00:00.001Z");
    assert!(ledger.reserve(usd("1"), february).is_ok());
}

#[test]
fn a_request_across_midnight_counts_for_the_day_it_started() {
    let evening = at("2026-11-29T23:59:50Z");
    let ledger = SpendLedger::new(
        limits(Some("1"), None, Some("100")),
        RestoredSpend::default(),
        evening,
    );
    let late = ledger.reserve(usd("0.9"), evening).unwrap();
    let morning = at("2026-11-30T00:00:10Z");
    // The new day has nothing reserved: the whole budget is available.
    let early = ledger.reserve(usd("1"), morning).unwrap();
    ledger.settle(late, usd("0.8"), morning);
    let view = ledger.view(morning);
    assert_eq!(view.daily.spent, Nanodollars::ZERO, "counted for yesterday");
    assert_eq!(
        view.daily.reserved,
        usd("1"),
        "yesterday's estimate never leaks in"
    );
    assert_eq!(view.total.spent, usd("0.8"));
    assert_eq!(view.total.reserved, usd("1"));
    ledger.settle(early, usd("1"), morning);
    assert_eq!(ledger.view(morning).daily.spent, usd("1"));
}

#[test]
fn a_clock_that_steps_back_does_not_reopen_a_window() {
    let today = at("2026-11-29T00:00:01Z");
    let ledger = SpendLedger::new(
        limits(Some("1"), None, None),
        RestoredSpend {
            today: usd("1"),
            ..RestoredSpend::default()
        },
        today,
    );
    let yesterday = at("2026-11-28T23:59:59Z");
    assert!(ledger.reserve(usd("0.1"), yesterday).is_err());
}

#[test]
fn limits_change_without_losing_spend_and_backend_caps_are_monthly() {
    let now = at("2026-11-15T12:00:00Z");
    let ledger = SpendLedger::new(BudgetLimits::default(), RestoredSpend::default(), now);
    ledger.record(usd("7"), now);
    assert!(ledger.reserve(usd("1000"), now).is_ok(), "no limits");
    ledger.set_limits(BudgetLimits::monthly_cap(Some(usd("8"))));
    let refused = ledger.reserve(usd("1"), now).unwrap_err();
    assert_eq!(refused.window, BudgetWindow::Monthly);
    assert_eq!(refused.spent, usd("7"));
    assert_eq!(
        refused.reserved,
        usd("1000"),
        "the earlier reservation is still held"
    );
    assert_eq!(
        serde_json::to_value(ledger.view(now).monthly).unwrap(),
        serde_json::json!({
            "limit_usd": 8.0, "spent_usd": 7.0, "reserved_usd": 1000.0,
            "resets_at": "2026-12-01T00:00:00Z"
        })
    );
}

#[test]
fn a_shared_figure_raises_only_the_window_it_was_read_for() {
    let before = at("2026-11-30T23:59:59Z");
    let ledger = SpendLedger::new(
        BudgetLimits::monthly_cap(Some(usd("10"))),
        RestoredSpend::default(),
        before,
    );
    ledger.record(usd("2"), before);
    // Lower than what the ledger has: kept; higher: raised (and the cap is spent).
    ledger.observe_shared_as_of(BudgetWindow::Monthly, usd("1"), before, before);
    assert_eq!(ledger.view(before).monthly.spent, usd("2"));
    ledger.observe_shared_as_of(BudgetWindow::Monthly, usd("10"), before, before);
    assert!(ledger.exhausted(before).is_some());
    // November's figure arriving once December started does not touch December.
    let after = at("2026-12-01T00:00:01Z");
    ledger.observe_shared_as_of(BudgetWindow::Monthly, usd("12"), before, after);
    assert_eq!(ledger.view(after).monthly.spent, Nanodollars::ZERO);
    assert!(ledger.exhausted(after).is_none());
    ledger.observe_shared_as_of(BudgetWindow::Monthly, usd("3"), after, after);
    assert_eq!(ledger.view(after).monthly.spent, usd("3"));
}

/// What the concurrent requests of one test run share.
struct Run {
    ledger: SpendLedger,
    now: DateTime<Utc>,
    /// Actual cost of requests from before their reservation until after their settle: a
    /// superset of what the ledger has in flight at any moment.
    in_flight: AtomicU64,
    max_in_flight_at_admission: AtomicU64,
    admitted: AtomicUsize,
}

/// One client request: reserve, wait a little, settle.
async fn run_request(run: Arc<Run>, estimate: Nanodollars, actual: Nanodollars, pause: u64) {
    run.in_flight.fetch_add(actual.get(), Ordering::SeqCst);
    match run.ledger.reserve(estimate, run.now) {
        Ok(reservation) => {
            run.admitted.fetch_add(1, Ordering::SeqCst);
            run.max_in_flight_at_admission
                .fetch_max(run.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
            for _ in 0..pause {
                tokio::task::yield_now().await;
            }
            run.ledger.settle(reservation, actual, run.now);
        }
        Err(refused) => assert_eq!(refused.window, BudgetWindow::Daily),
    }
    run.in_flight.fetch_sub(actual.get(), Ordering::SeqCst);
}

/// 200 concurrent requests against a small budget, on a multi-threaded runtime, for an
/// estimate that is too low, exact, too high, and zero (a model without a price).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_overrun_only_by_what_was_in_flight() {
    let now = at("2026-11-29T10:00:00Z");
    let limit = usd("1");
    for (estimate, actual) in [
        (usd("0.01"), usd("0.015")),
        (usd("0.01"), usd("0.01")),
        (usd("0.02"), usd("0.01")),
        (Nanodollars::ZERO, usd("0.01")),
    ] {
        let run = Arc::new(Run {
            ledger: SpendLedger::new(limits(Some("1"), None, None), RestoredSpend::default(), now),
            now,
            in_flight: AtomicU64::new(0),
            max_in_flight_at_admission: AtomicU64::new(0),
            admitted: AtomicUsize::new(0),
        });
        let tasks: Vec<_> = (0..200_u64)
            .map(|i| tokio::spawn(run_request(Arc::clone(&run), estimate, actual, i % 7)))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let view = run.ledger.view(now);
        let spent = view.daily.spent;
        let admitted = u64::try_from(run.admitted.load(Ordering::SeqCst)).unwrap();
        assert!(admitted > 0, "{admitted}");
        if estimate > Nanodollars::ZERO {
            // Reservations hold the budget: never more than limit / estimate in flight, and
            // every settle spends at least the smallest actual.
            assert!(
                admitted <= limit.get() / actual.min(estimate).get(),
                "{admitted}"
            );
        }
        assert_eq!(
            spent.get(),
            admitted * actual.get(),
            "every admitted request settled"
        );
        assert_eq!(view.daily.reserved, Nanodollars::ZERO);
        // The documented bound: limit + Σ (actual − estimate)⁺ over the requests in flight at
        // the last admission; the run's in-flight sum covers at least those.
        let in_flight_actual = run.max_in_flight_at_admission.load(Ordering::SeqCst);
        let excess = actual.get().saturating_sub(estimate.get());
        let bound = limit.get() + in_flight_actual / actual.get() * excess;
        assert!(
            spent.get() <= bound,
            "estimate {estimate}, actual {actual}: spent {spent} over bound {}",
            Nanodollars::new(bound)
        );
        if actual <= estimate {
            assert!(
                spent <= limit,
                "estimates that bound the cost never overrun"
            );
        }
        if estimate == actual {
            assert_eq!(admitted, limit.get() / estimate.get(), "exactly what fits");
        }
    }
}

/// The tight case: all 200 reserve before any settles.
#[test]
fn simultaneous_reservations_admit_exactly_what_fits() {
    let now = at("2026-11-29T10:00:00Z");
    let ledger = SpendLedger::new(
        limits(None, None, Some("0.5")),
        RestoredSpend::default(),
        now,
    );
    let reservations: Vec<_> = (0..200)
        .filter_map(|_| ledger.reserve(usd("0.003"), now).ok())
        .collect();
    assert_eq!(reservations.len(), 166, "floor(0.5 / 0.003)");
    for reservation in reservations {
        ledger.settle(reservation, usd("0.004"), now);
    }
    // Each in-flight request cost 0.001 more than estimated: overrun 166 × 0.001.
    assert_eq!(ledger.view(now).total.spent, usd("0.664"));
}

#[test]
fn limits_read_as_dollars_in_a_log_line() {
    let limits = BudgetLimits {
        daily: Some(Nanodollars::new(1_500_000_000)),
        monthly: None,
        total: Some(Nanodollars::from_usd(100)),
    };
    assert_eq!(limits.to_string(), "daily=$1.5 monthly=none total=$100");
}
