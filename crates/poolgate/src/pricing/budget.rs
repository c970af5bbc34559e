//! Spend budgets: a [`SpendLedger`] per client key (daily, monthly and total limits) and per
//! backend (a monthly cap), in UTC calendar windows.
//!
//! Admission reserves the request's estimated cost in every window at once, under one short
//! lock (a few comparisons and additions; never held across an await), and the request settles
//! with its real cost when it ends. A reservation is admitted only when, in every limited
//! window, `spent + reserved + estimate ≤ limit` and something is left (`spent + reserved <
//! limit`, so an estimate of zero — a model without a price — cannot pass a spent budget).
//!
//! # How far concurrent requests can overrun
//! Let `L` be the last admitted request. When it was admitted, the spend already settled plus the
//! estimates of every request in flight (`L` included) fitted under the limit. Everything settled
//! afterwards belongs to those in-flight requests, so
//!
//! ```text
//! final spend ≤ limit + Σ over requests in flight when L was admitted of (actual − estimate)⁺
//! ```
//!
//! With estimates that bound the real cost (prompt counted with the model's tokenizer, output at
//! `max_tokens`) a budget is never overrun; with an estimate of zero the overrun is at most the
//! cost of the requests that were already in flight. The tests check both with 200 concurrent
//! requests.
//!
//! # Windows
//! Daily windows start at 00:00 UTC, monthly windows on the 1st at 00:00 UTC; the total never
//! resets. A request settles into the windows that were current when it was admitted: one that
//! started before midnight and ended after counts for the day it started (as its usage record
//! does); its reservation never leaks into the new day.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use parking_lot::Mutex;
use serde::Serialize;

use super::money::Nanodollars;

/// The three budget windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetWindow {
    Daily,
    Monthly,
    Total,
}

const WINDOWS: [BudgetWindow; 3] = [
    BudgetWindow::Daily,
    BudgetWindow::Monthly,
    BudgetWindow::Total,
];

impl BudgetWindow {
    /// An id of the window containing `now`; a later window has a larger id.
    fn period(self, now: DateTime<Utc>) -> i64 {
        match self {
            BudgetWindow::Daily => i64::from(now.date_naive().num_days_from_ce()),
            BudgetWindow::Monthly => i64::from(now.year()) * 12 + i64::from(now.month0()),
            BudgetWindow::Total => 0,
        }
    }

    /// When the window containing `now` ends; `None` for the total.
    pub fn resets_at(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let date = now.date_naive();
        let next = match self {
            BudgetWindow::Daily => date.succ_opt()?,
            BudgetWindow::Monthly => {
                let (year, month) = if date.month() == 12 {
                    (date.year().checked_add(1)?, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                NaiveDate::from_ymd_opt(year, month, 1)?
            }
            BudgetWindow::Total => return None,
        };
        Some(Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0)?))
    }

    /// The API field that sets this window's limit on a client key.
    pub fn field(self) -> &'static str {
        match self {
            BudgetWindow::Daily => "budget_daily_usd",
            BudgetWindow::Monthly => "budget_monthly_usd",
            BudgetWindow::Total => "budget_total_usd",
        }
    }

    fn index(self) -> usize {
        match self {
            BudgetWindow::Daily => 0,
            BudgetWindow::Monthly => 1,
            BudgetWindow::Total => 2,
        }
    }
}

/// The limits of one ledger; `None` = no limit in that window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetLimits {
    pub daily: Option<Nanodollars>,
    pub monthly: Option<Nanodollars>,
    pub total: Option<Nanodollars>,
}

/// `daily=$1.5 monthly=none total=$100`: how a log line shows the limits.
impl std::fmt::Display for BudgetLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let windows = [
            ("daily", self.daily),
            ("monthly", self.monthly),
            ("total", self.total),
        ];
        for (at, (name, limit)) in windows.into_iter().enumerate() {
            let separator = if at == 0 { "" } else { " " };
            match limit {
                Some(limit) => write!(f, "{separator}{name}={limit}")?,
                None => write!(f, "{separator}{name}=none")?,
            }
        }
        Ok(())
    }
}

impl BudgetLimits {
    /// A backend's `monthly_spend_cap_usd`.
    pub fn monthly_cap(cap: Option<Nanodollars>) -> Self {
        Self {
            monthly: cap,
            ..Self::default()
        }
    }

    fn get(&self, window: BudgetWindow) -> Option<Nanodollars> {
        match window {
            BudgetWindow::Daily => self.daily,
            BudgetWindow::Monthly => self.monthly,
            BudgetWindow::Total => self.total,
        }
    }
}

impl BudgetLimits {
    /// Whether any window has a limit.
    pub fn any(&self) -> bool {
        self.daily.is_some() || self.monthly.is_some() || self.total.is_some()
    }
}

/// The stored spend limits of one client key or backend (a backend's only in `monthly`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendLimitRecord {
    pub kind: crate::domain::LimiterKind,
    pub id: String,
    pub limits: BudgetLimits,
}

/// Spend already recorded (from the usage store) when a ledger is built: today's, this month's
/// and all-time, as of the `now` passed alongside.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoredSpend {
    pub today: Nanodollars,
    pub this_month: Nanodollars,
    pub total: Nanodollars,
}

#[derive(Clone, Copy, Debug, Default)]
struct WindowState {
    period: i64,
    spent: u64,
    reserved: u64,
}

#[derive(Debug)]
struct LedgerState {
    limits: BudgetLimits,
    windows: [WindowState; 3],
}

impl LedgerState {
    /// Opens a fresh window where `now` has moved past the stored one (never moves back).
    fn roll(&mut self, now: DateTime<Utc>) {
        for window in WINDOWS {
            let state = &mut self.windows[window.index()];
            let period = window.period(now);
            if period > state.period {
                *state = WindowState {
                    period,
                    ..WindowState::default()
                };
            }
        }
    }
}

/// The cost reserved for one admitted request; hand it back to [`SpendLedger::settle`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be settled, or its amount stays reserved until the window ends"]
pub struct BudgetReservation {
    amount: Nanodollars,
    periods: [i64; 3],
}

impl BudgetReservation {
    pub fn amount(&self) -> Nanodollars {
        self.amount
    }
}

/// One limited window of a ledger, as a reservation in shared state names it
/// ([`SpendLedger::shared_windows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedWindow {
    pub window: BudgetWindow,
    pub id: String,
    pub limit: Nanodollars,
    pub spent: Nanodollars,
    pub expire_at_ms: Option<i64>,
}

/// Why a request was refused: which window, its limit, what is used, and when it resets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub window: BudgetWindow,
    pub limit: Nanodollars,
    /// Settled spend in the window.
    pub spent: Nanodollars,
    /// Estimates of requests in flight.
    pub reserved: Nanodollars,
    /// This request's estimate.
    pub requested: Nanodollars,
    /// `None`: the total budget, which never resets.
    pub resets_at: Option<DateTime<Utc>>,
}

impl BudgetExceeded {
    /// The sentence for the client (`budget_exceeded` error): which budget, and when it resets.
    pub fn message(&self, owner: &str) -> String {
        let window = match self.window {
            BudgetWindow::Daily => "daily",
            BudgetWindow::Monthly => "monthly",
            BudgetWindow::Total => "total",
        };
        let used = self.spent.saturating_add(self.reserved);
        let head = if used >= self.limit {
            format!(
                "{owner}'s {window} budget of {} is used up ({used} spent or reserved)",
                self.limit
            )
        } else {
            format!(
                "{owner}'s {window} budget of {} cannot cover this request (estimated at {}; \
                 {used} spent or reserved)",
                self.limit, self.requested
            )
        };
        match self.resets_at {
            Some(at) => format!(
                "{head}; it resets at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => format!("{head}; the total budget does not reset"),
        }
    }
}

/// One window as shown in the admin API (amounts as USD numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WindowView {
    /// The limit in USD; `null` = none.
    #[serde(rename = "limit_usd")]
    #[schema(value_type = Option<f64>)]
    pub limit: Option<Nanodollars>,
    /// Spent in the window (settled requests), USD.
    #[serde(rename = "spent_usd")]
    #[schema(value_type = f64)]
    pub spent: Nanodollars,
    /// Estimates of requests in flight, USD.
    #[serde(rename = "reserved_usd")]
    #[schema(value_type = f64)]
    pub reserved: Nanodollars,
    /// When the window ends (RFC 3339, UTC); `null` for the total, which never resets.
    #[schema(value_type = Option<String>)]
    pub resets_at: Option<DateTime<Utc>>,
}

/// Spend in every window, as of a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SpendView {
    pub daily: WindowView,
    pub monthly: WindowView,
    pub total: WindowView,
}

/// Spend and limits of one client key or backend; thread-safe, one short lock per call.
#[derive(Debug)]
pub struct SpendLedger {
    state: Mutex<LedgerState>,
}

impl SpendLedger {
    /// A ledger with `limits` and the spend already recorded as of `now`.
    pub fn new(limits: BudgetLimits, restored: RestoredSpend, now: DateTime<Utc>) -> Self {
        let window = |window: BudgetWindow, spent: Nanodollars| WindowState {
            period: window.period(now),
            spent: spent.get(),
            reserved: 0,
        };
        Self {
            state: Mutex::new(LedgerState {
                limits,
                windows: [
                    window(BudgetWindow::Daily, restored.today),
                    window(BudgetWindow::Monthly, restored.this_month),
                    window(BudgetWindow::Total, restored.total),
                ],
            }),
        }
    }

    /// Reserves `estimate` in every window, or says which limit refuses it (the first of daily,
    /// monthly, total that does).
    pub fn reserve(
        &self,
        estimate: Nanodollars,
        now: DateTime<Utc>,
    ) -> Result<BudgetReservation, BudgetExceeded> {
        let mut state = self.state.lock();
        state.roll(now);
        for window in WINDOWS {
            let Some(limit) = state.limits.get(window) else {
                continue;
            };
            let current = state.windows[window.index()];
            let used = u128::from(current.spent) + u128::from(current.reserved);
            let limit_units = u128::from(limit.get());
            if used >= limit_units || used + u128::from(estimate.get()) > limit_units {
                return Err(BudgetExceeded {
                    window,
                    limit,
                    spent: Nanodollars::new(current.spent),
                    reserved: Nanodollars::new(current.reserved),
                    requested: estimate,
                    resets_at: window.resets_at(now),
                });
            }
        }
        for state in &mut state.windows {
            state.reserved = state.reserved.saturating_add(estimate.get());
        }
        Ok(BudgetReservation {
            amount: estimate,
            periods: state.windows.map(|window| window.period),
        })
    }

    /// Releases a reservation and records the real cost in the windows it was made in (a window
    /// that has ended since is not touched).
    pub fn settle(&self, reservation: BudgetReservation, actual: Nanodollars, now: DateTime<Utc>) {
        let mut state = self.state.lock();
        state.roll(now);
        for (window, period) in state.windows.iter_mut().zip(reservation.periods) {
            if window.period == period {
                window.reserved = window.reserved.saturating_sub(reservation.amount.get());
                window.spent = window.spent.saturating_add(actual.get());
            }
        }
    }

    /// Records spend that went through no reservation (e.g. a request admitted before a budget
    /// was set).
    pub fn record(&self, actual: Nanodollars, now: DateTime<Utc>) {
        let mut state = self.state.lock();
        state.roll(now);
        for window in &mut state.windows {
            window.spent = window.spent.saturating_add(actual.get());
        }
    }

    /// The first limited window (daily, monthly, total) with nothing left as of `now`, if any:
    /// what selection checks of a backend's monthly cap before an attempt reserves in it (see
    /// `crate::proxy::spend`).
    pub fn exhausted(&self, now: DateTime<Utc>) -> Option<BudgetExceeded> {
        let mut state = self.state.lock();
        state.roll(now);
        WINDOWS.into_iter().find_map(|window| {
            let limit = state.limits.get(window)?;
            let current = state.windows[window.index()];
            let used = current.spent.saturating_add(current.reserved);
            (used >= limit.get()).then(|| BudgetExceeded {
                window,
                limit,
                spent: Nanodollars::new(current.spent),
                reserved: Nanodollars::new(current.reserved),
                requested: Nanodollars::ZERO,
                resets_at: window.resets_at(now),
            })
        })
    }

    /// The limited windows as of `now`, for a reservation in shared state (cluster mode): the
    /// window, its id across instances (`d:<yyyymmdd>`, `m:<yyyymm>`, `t`), its limit, this
    /// ledger's spend in it (the shared figure starts from it when missing) and when the shared
    /// figure may be forgotten (a day after the window ends, Unix ms).
    pub fn shared_windows(&self, now: DateTime<Utc>) -> Vec<SharedWindow> {
        let mut state = self.state.lock();
        state.roll(now);
        WINDOWS
            .into_iter()
            .filter_map(|window| {
                let limit = state.limits.get(window)?;
                let id = match window {
                    BudgetWindow::Daily => format!("d:{}", now.format("%Y%m%d")),
                    BudgetWindow::Monthly => format!("m:{}", now.format("%Y%m")),
                    BudgetWindow::Total => "t".to_owned(),
                };
                let expire_at_ms = window
                    .resets_at(now)
                    .map(|at| (at + chrono::Duration::days(1)).timestamp_millis());
                Some(SharedWindow {
                    window,
                    id,
                    limit,
                    spent: Nanodollars::new(state.windows[window.index()].spent),
                    expire_at_ms,
                })
            })
            .collect()
    }

    /// Raises this ledger's spend in `window` (as of `now`) to at least `spent`, the shared
    /// figure: while shared state is unreachable the ledger then answers from the last shared
    /// figures plus this instance's spend since.
    pub fn observe_shared(&self, window: BudgetWindow, spent: Nanodollars, now: DateTime<Utc>) {
        let mut state = self.state.lock();
        state.roll(now);
        let current = &mut state.windows[window.index()];
        current.spent = current.spent.max(spent.get());
    }

    /// [`SpendLedger::observe_shared`] for a figure read as of `as_of` (the window named in the
    /// shared call): ignored when the ledger has moved on to a later window since (a read made
    /// just before midnight must not raise the new day or month).
    pub fn observe_shared_as_of(
        &self,
        window: BudgetWindow,
        spent: Nanodollars,
        as_of: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        let mut state = self.state.lock();
        state.roll(now);
        let current = &mut state.windows[window.index()];
        if current.period == window.period(as_of) {
            current.spent = current.spent.max(spent.get());
        }
    }

    /// New limits (an admin edit); spend and reservations stay.
    pub fn set_limits(&self, limits: BudgetLimits) {
        self.state.lock().limits = limits;
    }

    /// Limits, spend and reservations of every window as of `now`.
    pub fn view(&self, now: DateTime<Utc>) -> SpendView {
        let mut state = self.state.lock();
        state.roll(now);
        let view = |window: BudgetWindow| {
            let current = state.windows[window.index()];
            WindowView {
                limit: state.limits.get(window),
                spent: Nanodollars::new(current.spent),
                reserved: Nanodollars::new(current.reserved),
                resets_at: window.resets_at(now),
            }
        };
        SpendView {
            daily: view(BudgetWindow::Daily),
            monthly: view(BudgetWindow::Monthly),
            total: view(BudgetWindow::Total),
        }
    }
}

#[cfg(test)]
mod tests;
