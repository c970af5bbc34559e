//! Exactly one usage record per client request: the [`UsageDraft`] filled in while the request
//! runs, and the [`CancelGuard`] that writes it as cancelled (499) when the client leaves first.

use std::time::Duration;

use tokio::time::Instant;

use super::context::RequestContext;
use crate::domain::{Outcome, UsageRecord};
use crate::providers::{Endpoint, TokenUsage};
use crate::routing::Ticket;
use crate::usage::UsageSink;

/// A usage record being filled in while the request runs.
#[derive(Clone)]
pub struct UsageDraft {
    pub record: UsageRecord,
    pub received: Instant,
}

impl UsageDraft {
    /// A new draft; the sink now owes one record for this request.
    pub fn new(
        sink: &UsageSink,
        ctx: &RequestContext,
        endpoint: Endpoint,
        model: Option<&str>,
        streamed: bool,
    ) -> Self {
        sink.open();
        Self {
            record: UsageRecord {
                request_id: ctx.request_id.clone(),
                ts_ms: ctx.received_ms,
                client_key_id: Some(ctx.caller_id()),
                endpoint: endpoint.name().to_owned(),
                canonical_model: model.map(str::to_owned),
                backend_id: None,
                upstream_model: None,
                pool: None,
                attempts: 0,
                status: 0,
                outcome: Outcome::Error,
                error_kind: None,
                prompt_tokens: None,
                completion_tokens: None,
                total_tokens: None,
                cached_tokens: None,
                latency_ms: 0,
                ttfb_ms: None,
                streamed,
            },
            received: ctx.received,
        }
    }

    /// One more upstream attempt, to the ticket's backend.
    pub fn attempt(&mut self, ticket: &Ticket) {
        self.record.attempts += 1;
        self.record.backend_id = Some(ticket.backend.id().to_string());
        self.record.upstream_model = Some(ticket.upstream_model.to_string());
        self.record.pool = Some(ticket.pool.name.to_string());
    }

    pub fn set_usage(&mut self, usage: TokenUsage) {
        self.record.prompt_tokens = Some(usage.prompt_tokens);
        self.record.completion_tokens = Some(usage.completion_tokens);
        self.record.total_tokens = Some(if usage.total_tokens == 0 {
            usage.prompt_tokens.saturating_add(usage.completion_tokens)
        } else {
            usage.total_tokens
        });
        self.record.cached_tokens = usage.cached_tokens();
    }

    pub fn mark_first_byte(&mut self) {
        if self.record.ttfb_ms.is_none() {
            self.record.ttfb_ms = Some(millis(self.received.elapsed()));
        }
    }

    /// Completes the record.
    pub fn finish(
        mut self,
        status: u16,
        outcome: Outcome,
        error_kind: Option<&str>,
    ) -> UsageRecord {
        self.record.status = status;
        self.record.outcome = outcome;
        self.record.error_kind = error_kind.map(str::to_owned);
        self.record.latency_ms = millis(self.received.elapsed());
        self.record
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Records the request as cancelled (499) when its future is dropped before it finished: the
/// client went away while poolgate waited for an upstream.
pub struct CancelGuard<'s> {
    sink: &'s UsageSink,
    pub draft: UsageDraft,
    armed: bool,
}

impl<'s> CancelGuard<'s> {
    pub fn new(sink: &'s UsageSink, draft: UsageDraft) -> Self {
        Self {
            sink,
            draft,
            armed: true,
        }
    }

    /// Someone else (the stream relay) writes the record now.
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Writes the request's record now (and not again on drop).
    pub fn record(&mut self, status: u16, outcome: Outcome, error_kind: Option<&str>) {
        self.armed = false;
        let record = self.draft.clone().finish(status, outcome, error_kind);
        self.sink.record(record);
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let record = self
                .draft
                .clone()
                .finish(499, Outcome::Cancelled, Some("client_closed"));
            self.sink.record(record);
        }
    }
}
