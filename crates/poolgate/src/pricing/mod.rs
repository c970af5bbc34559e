//! Money: the price table (per upstream model id), the exact cost of a request from its usage,
//! and spend budgets per client key and per backend.
//!
//! - [`money`]: exact units — amounts in nano-dollars, prices in nano-dollars per token — and the
//!   decimal text users write them in (why these units, and their bounds, are documented there).
//! - [`usage`]: a request's tokens in four disjoint kinds (uncached input, cache read, cache
//!   write, output) read from OpenAI, Responses or Anthropic usage, and [`ModelPrice::cost`].
//! - [`table`]: [`PriceTable`] — the default table embedded in the binary (with the date it was
//!   taken), config and admin-API layers on top, and the lookup rules for dated model ids.
//! - [`budget`]: [`SpendLedger`] — daily / monthly / total limits in UTC windows; reserve the
//!   estimated cost at admission, settle with the real cost.
//!
//! Nothing here touches the network, the store or the clock: callers pass `now`.

pub mod budget;
pub mod ledgers;
pub mod money;
pub mod table;
pub mod usage;

pub use budget::{
    BudgetExceeded, BudgetLimits, BudgetReservation, BudgetWindow, RestoredSpend, SharedWindow,
    SpendLedger, SpendLimitRecord, SpendView, WindowView,
};
pub use money::{MoneyError, Nanodollars, PricePerToken};
pub use table::{PriceEntry, PriceMatch, PriceSource, PriceTable, PriceTableError};
pub use usage::{BilledUsage, ModelPrice, OpenAiUsage, ResponsesUsage};
