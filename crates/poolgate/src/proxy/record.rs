//! Exactly one usage record per client request: the [`UsageDraft`] filled in while the request
//! runs, and the [`CancelGuard`] that writes it as cancelled (499) when the client leaves first.
//! The draft also carries the request's [`RequestObservation`] (metrics, spans, access line), so
//! wherever the record is written the observation is finished with the same fields — the stream
//! relay's end and the cancel guard included. It holds the request's TPM reservations (the
//! client key's, and the serving backend's once an attempt succeeded) and settles them once,
//! where the record is finished, with the tokens the record bills; and its spend reservations
//! (the key's budget, the current attempt's backend cap), settled there with the record's cost.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::context::RequestContext;
use super::plan::Inbound;
use super::spend::SpendGuard;
use crate::domain::{Outcome, UsageRecord};
use crate::journal::Durable;
use crate::pricing::{BilledUsage, Nanodollars, PriceTable};
use crate::providers::{Endpoint, TokenUsage};
use crate::routing::{LiveBackend, Routed, Ticket};
use crate::runtime::TpmHold;
use crate::state::DataPlane;
use crate::telemetry::{
    AttemptEnd, AttemptResult, RequestEnd, RequestObservation, RequestStart, TokenCounts,
};
use crate::usage::UsageSink;

/// A usage record being filled in while the request runs, and the request's observation.
pub struct UsageDraft {
    pub record: UsageRecord,
    pub received: Instant,
    /// The backend of the latest attempt (for the routing headers).
    pub last_backend: Option<Arc<LiveBackend>>,
    /// The model the upstream says answered (read only while tracing).
    response_model: Option<String>,
    /// `None` once handed over to whoever finishes the request.
    observation: Option<RequestObservation>,
    /// When the request ended for the client, if its record is finished later (a stream whose
    /// upstream is still read for its usage after the client left).
    ended: Option<Instant>,
    /// TPM reservations settled by [`UsageDraft::finish`] (the key's, the serving backend's).
    tpm: Vec<TpmHold>,
    /// The prompt estimate: what the reservations settle with when the request was sent but no
    /// usage is known (the upstream may still bill the prompt).
    prompt_estimate: u64,
    /// The prices of the request's snapshot: the record's cost is computed when it is finished.
    prices: Arc<PriceTable>,
    /// The client key's budget reservation, settled with the cost when the record is finished
    /// (moves with the observation in [`UsageDraft::hand_over`]).
    spend: Option<SpendGuard>,
    /// The current attempt's reservation under its backend's monthly spend cap: released when
    /// the attempt fails, settled with the cost when the record is finished.
    backend_spend: Option<SpendGuard>,
    /// Handed over: whoever took it writes the record (the cancel guard must not).
    handed_over: bool,
}

/// Starts observing a request of `ctx`: the route's series when `inbound` names a routed model,
/// else (a call on a stored response included) the `(unrouted)` ones; `client_headers` are read for the W3C trace context.
/// Also returns the route found, for [`super::forward`] (the request's routing looks it up
/// once).
pub fn observe(
    data: &DataPlane,
    ctx: &RequestContext,
    endpoint: Endpoint,
    inbound: Option<&Inbound>,
    client_headers: &HeaderMap,
) -> (RequestObservation, Option<Routed>) {
    let observer = &data.observer;
    // A call on a stored response names no model (a lone `*` mapping would match its empty one).
    let routed = inbound
        .filter(|inbound| !inbound.is_response_call())
        .and_then(|inbound| ctx.live.routes.route(inbound.model.as_str()));
    let model = routed
        .as_ref()
        .map_or_else(|| observer.unrouted(), |routed| &routed.route.telemetry);
    let observation = observer.start_request(RequestStart {
        received: ctx.received,
        request_id: &ctx.request_id,
        model,
        operation: endpoint.into(),
        http_method: endpoint.client_method(),
        http_route: endpoint.client_path(),
        stream: inbound.is_some_and(|inbound| inbound.stream),
        headers: client_headers,
    });
    (observation, routed)
}

/// Observes a request refused before anyone was authenticated (no usage record: the caller is
/// unknown), so that metrics and the access log still count it.
pub fn observe_unauthenticated(
    data: &DataPlane,
    request_id: &str,
    received: Instant,
    endpoint: Endpoint,
    client_headers: &HeaderMap,
    status: u16,
    kind: &str,
) {
    data.observer
        .start_request(RequestStart {
            received,
            request_id,
            model: data.observer.unrouted(),
            operation: endpoint.into(),
            http_method: endpoint.client_method(),
            http_route: endpoint.client_path(),
            stream: false,
            headers: client_headers,
        })
        .finish(RequestEnd {
            request_id,
            client_key_id: None,
            canonical_model: None,
            status,
            outcome: Outcome::Error,
            error_kind: Some(kind),
            tokens: TokenCounts::default(),
            response_model: None,
            cost_usd: None,
            ended: None,
        });
}

impl UsageDraft {
    /// A new draft; the sink now owes one record for this request.
    pub fn new(
        sink: &UsageSink,
        ctx: &RequestContext,
        endpoint: Endpoint,
        model: Option<&str>,
        streamed: bool,
        observation: RequestObservation,
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
                tokens_estimated: false,
                cost: None,
                cache_write_tokens: None,
            },
            received: ctx.received,
            last_backend: None,
            response_model: None,
            observation: Some(observation),
            ended: None,
            tpm: Vec::new(),
            prompt_estimate: 0,
            prices: Arc::clone(&ctx.live.prices),
            spend: None,
            backend_spend: None,
            handed_over: false,
        }
    }

    /// The request's prompt estimate (see [`UsageDraft::settle_tokens`]).
    pub fn set_prompt_estimate(&mut self, prompt: u64) {
        self.prompt_estimate = prompt;
    }

    /// A TPM reservation to settle with this request's usage.
    pub fn hold_tokens(&mut self, hold: Option<TpmHold>) {
        if let Some(hold) = hold {
            self.tpm.push(hold);
        }
    }

    /// Holds the request's budget reservation until the record is finished.
    pub fn hold_spend(&mut self, guard: Option<SpendGuard>) {
        self.spend = guard;
    }

    /// Holds the current attempt's reservation under its backend's spend cap (one still held
    /// belongs to an attempt that did not serve: it is released).
    pub fn hold_backend_spend(&mut self, guard: Option<SpendGuard>) {
        self.release_backend_spend();
        self.backend_spend = guard;
    }

    /// The attempt did not serve the request: its backend's reservation is released.
    pub fn release_backend_spend(&mut self) {
        if let Some(guard) = self.backend_spend.take() {
            guard.settle(Nanodollars::ZERO);
        }
    }

    /// One more upstream attempt, to the ticket's backend.
    pub fn attempt(&mut self, ticket: &Ticket) {
        self.record.attempts += 1;
        self.record.backend_id = Some(ticket.backend.id().to_string());
        self.record.upstream_model = Some(ticket.upstream_model.to_string());
        self.record.pool = Some(ticket.pool.name.to_string());
        self.last_backend = Some(Arc::clone(&ticket.backend));
    }

    /// The attempt's request is built and about to be sent: its observation starts (a retry or
    /// failover is counted by the observer) and the trace context goes into its headers.
    pub fn start_attempt(
        &mut self,
        ticket: &Ticket,
        upstream_headers: &mut HeaderMap,
        started: Instant,
    ) {
        if let Some(observation) = &mut self.observation {
            observation.start_attempt_at(
                &ticket.telemetry,
                ticket.upstream_model.as_str(),
                started,
            );
            observation.inject_trace_context(upstream_headers);
        }
    }

    /// The attempt ended (phase **classify**); `status` is the upstream's, if it answered.
    pub fn end_attempt(&mut self, result: AttemptResult, status: Option<u16>) {
        if let Some(observation) = &mut self.observation {
            observation.end_attempt(AttemptEnd::result(result, status));
        }
    }

    /// Whether the request's spans are recorded (extra details are worth reading then).
    pub fn traced(&self) -> bool {
        self.observation
            .as_ref()
            .is_some_and(RequestObservation::traced)
    }

    pub fn set_response_model(&mut self, model: Option<String>) {
        self.response_model = model;
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
        self.record.cache_write_tokens = usage.cache_write_tokens;
    }

    /// Usage poolgate estimated (the stream ended before the upstream's final usage).
    pub fn set_estimated_usage(&mut self, usage: TokenUsage) {
        self.set_usage(usage);
        self.record.tokens_estimated = true;
    }

    /// The request is over for the client now; its latency is measured to here even if the
    /// record is finished later.
    pub fn stop_clock(&mut self) {
        self.ended.get_or_insert_with(Instant::now);
    }

    pub fn mark_first_byte(&mut self) {
        if self.record.ttfb_ms.is_none() {
            self.record.ttfb_ms = Some(millis(self.received.elapsed()));
        }
        if let Some(observation) = &mut self.observation {
            observation.first_byte();
        }
    }

    /// Hands the draft to whoever finishes the request (the stream relay, or a record written
    /// now): the record and the observation move. This one stays with the guard, spent: its
    /// record keeps the numbers (the attempt count the routing headers read) and drops the
    /// strings, so handing over allocates nothing (copying the record's strings was 0.65 % of
    /// poolgate's CPU, #13). A draft is handed over once.
    pub fn hand_over(&mut self) -> UsageDraft {
        debug_assert!(!self.handed_over, "a usage draft is handed over once");
        self.handed_over = true;
        let spent = spent(&self.record);
        UsageDraft {
            record: std::mem::replace(&mut self.record, spent),
            received: self.received,
            last_backend: self.last_backend.clone(),
            response_model: self.response_model.take(),
            observation: self.observation.take(),
            ended: self.ended,
            tpm: std::mem::take(&mut self.tpm),
            prompt_estimate: self.prompt_estimate,
            prices: Arc::clone(&self.prices),
            spend: self.spend.take(),
            backend_spend: self.backend_spend.take(),
            handed_over: false,
        }
    }

    /// The tokens the TPM reservations settle with: the record's (real or estimated) usage;
    /// without usage, the prompt estimate if the request reached an upstream that may bill it
    /// (answered, or the client left while it was in flight), else 0.
    fn settle_tokens(&mut self, outcome: Outcome) {
        if self.tpm.is_empty() {
            return;
        }
        let actual = match self.record.total_tokens {
            Some(total) => u64::from(total),
            None if self.record.attempts > 0
                && matches!(outcome, Outcome::Success | Outcome::Cancelled) =>
            {
                self.prompt_estimate
            }
            None => 0,
        };
        for hold in self.tpm.drain(..) {
            hold.settle(actual);
        }
    }

    /// The record's cost at the price of its upstream model (`None` without a price, or when
    /// no upstream was tried), its tokens split into the four billed kinds.
    fn cost(&self) -> Option<Nanodollars> {
        let record = &self.record;
        let found = self.prices.lookup(record.upstream_model.as_deref()?)?;
        let tokens = |value: Option<u32>| u64::from(value.unwrap_or(0));
        let prompt = tokens(record.prompt_tokens);
        let cached = tokens(record.cached_tokens).min(prompt);
        let written = tokens(record.cache_write_tokens).min(prompt - cached);
        let billed = BilledUsage {
            input_tokens: prompt - cached - written,
            cached_input_tokens: cached,
            cache_write_tokens: written,
            output_tokens: tokens(record.completion_tokens),
        };
        Some(found.entry.price.cost(&billed))
    }

    /// Completes the record, and with it the observation.
    pub fn finish(
        mut self,
        status: u16,
        outcome: Outcome,
        error_kind: Option<&str>,
    ) -> UsageRecord {
        self.record.status = status;
        self.record.outcome = outcome;
        self.record.error_kind = error_kind.map(str::to_owned);
        self.settle_tokens(outcome);
        let ended = self.ended.unwrap_or_else(Instant::now);
        self.record.latency_ms = millis(ended.saturating_duration_since(self.received));
        self.record.cost = self.cost();
        let cost = self.record.cost.unwrap_or(Nanodollars::ZERO);
        if let Some(guard) = self.spend.take() {
            guard.settle(cost);
        }
        // The serving backend's cap: its reservation settles with the cost; spend that went
        // through none (a call using no upstream tokens) is recorded as it is.
        match self.backend_spend.take() {
            Some(guard) => guard.settle(cost),
            None if cost > Nanodollars::ZERO => {
                if let Some(backend) = &self.last_backend {
                    super::spend::record_backend(backend, cost);
                }
            }
            None => {}
        }
        if let Some(observation) = self.observation.take() {
            let record = &self.record;
            observation.finish(RequestEnd {
                request_id: &record.request_id,
                client_key_id: record.client_key_id.as_deref(),
                canonical_model: record.canonical_model.as_deref(),
                status,
                outcome,
                error_kind,
                tokens: TokenCounts {
                    prompt: record.prompt_tokens,
                    completion: record.completion_tokens,
                    cached: record.cached_tokens,
                },
                response_model: self.response_model.as_deref(),
                cost_usd: record.cost.map(Nanodollars::as_usd_f64),
                ended: Some(ended),
            });
        }
        self.record
    }
}

/// What a handed-over draft keeps of its record: the numbers, no strings.
fn spent(record: &UsageRecord) -> UsageRecord {
    UsageRecord {
        request_id: String::new(),
        ts_ms: record.ts_ms,
        client_key_id: None,
        endpoint: String::new(),
        canonical_model: None,
        backend_id: None,
        upstream_model: None,
        pool: None,
        attempts: record.attempts,
        status: record.status,
        outcome: record.outcome,
        error_kind: None,
        prompt_tokens: record.prompt_tokens,
        completion_tokens: record.completion_tokens,
        total_tokens: record.total_tokens,
        cached_tokens: record.cached_tokens,
        latency_ms: record.latency_ms,
        ttfb_ms: record.ttfb_ms,
        streamed: record.streamed,
        tokens_estimated: record.tokens_estimated,
        cost: record.cost,
        cache_write_tokens: record.cache_write_tokens,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Records the request as cancelled (499) when its future is dropped before its draft was
/// handed over: the client went away while poolgate waited for an upstream. Once the draft is
/// handed over (to the stream relay, to the answer's own record, to [`CancelGuard::record`]),
/// whoever took it writes the record — also when the client leaves while the answer waits for
/// its record's journal write.
pub struct CancelGuard<'s> {
    sink: &'s UsageSink,
    pub draft: UsageDraft,
}

impl<'s> CancelGuard<'s> {
    pub fn new(sink: &'s UsageSink, draft: UsageDraft) -> Self {
        Self { sink, draft }
    }

    /// Writes the request's record now (and not again on drop); await the result before the
    /// answer goes out.
    pub fn record(&mut self, status: u16, outcome: Outcome, error_kind: Option<&str>) -> Durable {
        let record = self.draft.hand_over().finish(status, outcome, error_kind);
        self.sink.record(record)
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.draft.handed_over {
            let record =
                self.draft
                    .hand_over()
                    .finish(499, Outcome::Cancelled, Some("client_closed"));
            // The client is gone: no answer to hold back.
            drop(self.sink.record(record));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageQueue;

    fn draft() -> UsageDraft {
        UsageDraft {
            record: UsageRecord {
                request_id: "req_guarded".into(),
                ts_ms: 1_700_000_000_000,
                client_key_id: Some("key_abc".into()),
                endpoint: "chat.completions".into(),
                canonical_model: Some("gpt-4o".into()),
                backend_id: None,
                upstream_model: None,
                pool: None,
                attempts: 1,
                status: 0,
                outcome: Outcome::Error,
                error_kind: None,
                prompt_tokens: None,
                completion_tokens: None,
                total_tokens: None,
                cached_tokens: None,
                latency_ms: 0,
                ttfb_ms: None,
                streamed: false,
                tokens_estimated: false,
                cost: None,
                cache_write_tokens: None,
            },
            received: Instant::now(),
            last_backend: None,
            response_model: None,
            observation: None,
            ended: None,
            tpm: Vec::new(),
            prompt_estimate: 0,
            prices: Arc::new(PriceTable::default()),
            spend: None,
            backend_spend: None,
            handed_over: false,
        }
    }

    /// Every record queued so far.
    fn queued(queue: &mut UsageQueue) -> Vec<UsageRecord> {
        std::iter::from_fn(|| queue.rx.try_recv().ok())
            .map(|queued| queued.record)
            .collect()
    }

    #[test]
    fn a_request_dropped_before_its_draft_was_handed_over_is_recorded_cancelled() {
        let (sink, mut queue) = crate::usage::channel(None, 16);
        drop(CancelGuard::new(&sink, draft()));
        let records = queued(&mut queue);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].status, 499);
        assert_eq!(records[0].outcome, Outcome::Cancelled);
        assert_eq!(records[0].error_kind.as_deref(), Some("client_closed"));
    }

    /// Session 11's fix: a client that leaves while its answer waits for the record's journal
    /// write drops the handler's future — the `Durable` and the guard with it. The answer's
    /// record stays the only one (the guard used to add a second, cancelled record).
    #[test]
    fn a_client_leaving_while_its_answer_waits_for_the_journal_leaves_one_record() {
        let (sink, mut queue) = crate::usage::channel(None, 16);
        let mut guard = CancelGuard::new(&sink, draft());
        let durable = guard.record(200, Outcome::Success, None);
        drop(durable);
        drop(guard);
        let records = queued(&mut queue);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].status, 200);
        assert_eq!(records[0].outcome, Outcome::Success);
    }

    #[test]
    fn a_draft_handed_to_the_stream_relay_is_recorded_by_the_relay_not_the_guard() {
        let (sink, mut queue) = crate::usage::channel(None, 16);
        let mut guard = CancelGuard::new(&sink, draft());
        let relayed = guard.draft.hand_over();
        drop(guard);
        assert!(queued(&mut queue).is_empty());
        // The relay finishes it when the stream ends.
        drop(sink.record(relayed.finish(200, Outcome::Success, None)));
        assert_eq!(queued(&mut queue).len(), 1);
    }
}
