//! The spend ledgers of every client key and backend that has a spend limit, kept by id across
//! snapshot rebuilds (so an edit keeps what is spent and reserved) and handed to the snapshot:
//! a key or backend without a limit has no ledger and pays nothing for the feature.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::budget::{BudgetLimits, RestoredSpend, SpendLedger};
use crate::domain::LimiterKind;

/// Ledgers by (kind, id).
#[derive(Debug, Default)]
pub struct SpendLedgers {
    ledgers: Mutex<HashMap<(LimiterKind, String), Arc<SpendLedger>>>,
}

impl SpendLedgers {
    /// The ledger of `(kind, id)` if it has one already.
    pub fn get(&self, kind: LimiterKind, id: &str) -> Option<Arc<SpendLedger>> {
        self.ledgers.lock().get(&(kind, id.to_owned())).cloned()
    }

    /// The ledger of `(kind, id)` with `limits`: the existing one (limits updated; spend and
    /// reservations kept), or a new one starting from `restored` as of `now`.
    pub fn ensure(
        &self,
        kind: LimiterKind,
        id: &str,
        limits: BudgetLimits,
        restored: RestoredSpend,
        now: DateTime<Utc>,
    ) -> Arc<SpendLedger> {
        let ledger = Arc::clone(
            self.ledgers
                .lock()
                .entry((kind, id.to_owned()))
                .or_insert_with(|| Arc::new(SpendLedger::new(limits, restored, now))),
        );
        ledger.set_limits(limits);
        ledger
    }

    /// Forgets the ledgers of everything not in `keep` (limits removed, key or backend gone).
    pub fn retain(&self, keep: &[(LimiterKind, String)]) {
        self.ledgers.lock().retain(|key, _| keep.contains(key));
    }
}
