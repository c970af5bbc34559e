//! Tokens-per-minute reservations held by a request: [`TpmHold`] is what a backend's or a client
//! key's TPM limit took for one request — from this instance's [`TpmLimiter`], or (cluster mode)
//! from a shared bucket — and settles it exactly once: with the real usage when the answer ends
//! ([`TpmHold::settle`]), with 0 when the attempt failed before anything was billed, and, if it
//! is dropped unsettled (a panic, a path that forgot), with the figure it was given for that
//! case (the prompt estimate). No reservation leaks.
//!
//! Settling a shared hold is a refund (`give`) of what was not used or an extra charge (`owe`,
//! which may put the Redis bucket into debt), sent as its own task: never on the client's path.

use std::sync::Arc;

use tokio::time::Instant;

use crate::limits::tpm::{TpmLimiter, TpmReservation};
use crate::shared::{BucketClaim, SharedRuntime};

/// Tokens a request needs: what its TPM reservations take and what an upstream's learned
/// token window must still have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenNeed {
    /// Prompt tokens (estimated): checked against the upstream's remaining tokens.
    pub prompt: u64,
    /// Prompt plus output reserve: what a TPM limit reserves.
    pub total: u64,
}

enum Held {
    Local {
        limiter: Arc<TpmLimiter>,
        reservation: TpmReservation,
    },
    /// `claim.cost` tokens were taken from the shared bucket.
    Shared {
        shared: Arc<dyn SharedRuntime>,
        claim: BucketClaim,
    },
}

/// One request's reservation on one TPM limit; see the module doc.
pub struct TpmHold {
    held: Option<Held>,
    /// What a hold dropped unsettled is settled with.
    on_drop: u64,
}

impl std::fmt::Debug for TpmHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmHold")
            .field("reserved", &self.reserved())
            .field("on_drop", &self.on_drop)
            .finish()
    }
}

impl TpmHold {
    pub(super) fn local(
        limiter: Arc<TpmLimiter>,
        reservation: TpmReservation,
        on_drop: u64,
    ) -> Self {
        Self {
            held: Some(Held::Local {
                limiter,
                reservation,
            }),
            on_drop,
        }
    }

    pub(super) fn shared(shared: Arc<dyn SharedRuntime>, claim: BucketClaim, on_drop: u64) -> Self {
        Self {
            held: Some(Held::Shared { shared, claim }),
            on_drop,
        }
    }

    /// Tokens reserved.
    pub fn reserved(&self) -> u64 {
        match &self.held {
            Some(Held::Local { reservation, .. }) => reservation.tokens(),
            Some(Held::Shared { claim, .. }) => claim.cost,
            None => 0,
        }
    }

    /// Settles with the tokens the request really used (0: nothing was billed).
    pub fn settle(mut self, actual: u64) {
        self.settle_now(actual);
    }

    fn settle_now(&mut self, actual: u64) {
        match self.held.take() {
            None => {}
            Some(Held::Local {
                limiter,
                reservation,
            }) => {
                limiter.settle(reservation, actual, Instant::now());
            }
            Some(Held::Shared { shared, mut claim }) => {
                let reserved = claim.cost;
                if actual == reserved {
                    return;
                }
                let refund = actual < reserved;
                claim.cost = reserved.abs_diff(actual);
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move {
                    let claims = [claim];
                    if refund {
                        shared.refund(&claims).await;
                    } else {
                        shared.charge(&claims).await;
                    }
                });
            }
        }
    }
}

impl Drop for TpmHold {
    fn drop(&mut self) {
        self.settle_now(self.on_drop);
    }
}
