//! Responses client, Responses-capable backend: the stream passes through byte for byte; on the
//! way the mapper reads the response id (for response affinity), the usage of the terminal event
//! and the last `sequence_number`, so a failure poolgate notices itself (stall, broken
//! connection, shutdown) continues the numbering with `error` and `response.failed`.

use bytes::{Bytes, BytesMut};

use super::builder::ResponseBuilder;
use super::{new_response_id, SseEvent};
use crate::providers::responses::response::{RequestEcho, ResponseUsage};
use crate::providers::responses::{event_type, sequence_number, summary_of_event};
use crate::providers::TokenUsage;
use crate::translate::{Mapped, StreamMapper};

/// Called once with the response id the backend assigned.
pub type ResponseIdHook = Box<dyn FnMut(&str) + Send>;

pub struct ResponsesPassthrough {
    response_id: Option<String>,
    model: String,
    created_at: i64,
    usage: Option<ResponseUsage>,
    last_seq: Option<u64>,
    failed: bool,
    done: bool,
    /// Read the usage of the terminal event (not for replays of a stored response).
    count_usage: bool,
    on_response_id: Option<ResponseIdHook>,
}

impl Default for ResponsesPassthrough {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponsesPassthrough {
    pub fn new() -> Self {
        Self {
            response_id: None,
            model: String::new(),
            // Until the upstream says when it created the response.
            created_at: chrono::Utc::now().timestamp(),
            usage: None,
            last_seq: None,
            failed: false,
            done: false,
            count_usage: true,
            on_response_id: None,
        }
    }

    /// Reports no usage: the stream replays a stored response (`GET …?stream=true`), whose
    /// tokens were counted when it was made.
    pub fn without_usage(mut self) -> Self {
        self.count_usage = false;
        self
    }

    /// Calls `hook` with the response id as soon as `response.created` passes.
    pub fn with_response_id_hook(mut self, hook: ResponseIdHook) -> Self {
        self.on_response_id = Some(hook);
        self
    }

    /// The id of the response, once `response.created` passed.
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }

    fn read_lifecycle(&mut self, data: &str) {
        let Some(summary) = summary_of_event(data) else {
            return;
        };
        if let Some(usage) = summary.usage {
            self.usage = Some(usage);
        }
        if let Some(model) = summary.model {
            self.model = model;
        }
        if let Some(created_at) = summary.created_at {
            // Seconds since the epoch: well inside i64.
            #[expect(clippy::cast_possible_truncation, reason = "seconds since the epoch")]
            let seconds = created_at as i64;
            self.created_at = seconds;
        }
        if self.response_id.is_none() {
            if let Some(id) = summary.id {
                if let Some(hook) = self.on_response_id.as_mut() {
                    hook(&id);
                }
                self.response_id = Some(id);
            }
        }
    }
}

impl StreamMapper for ResponsesPassthrough {
    fn map(&mut self, event: &SseEvent, _out: &mut BytesMut) -> Mapped {
        let Some(data) = event.data.as_deref() else {
            return Mapped::Pass;
        };
        if let Some(seq) = sequence_number(data) {
            self.last_seq = Some(seq);
        }
        let kind = match event.event.as_deref().filter(|name| !name.is_empty()) {
            Some(name) => name,
            None => event_type(data).unwrap_or_default(),
        };
        match kind {
            "response.created" | "response.queued" | "response.in_progress"
                if self.response_id.is_none() =>
            {
                self.read_lifecycle(data);
            }
            "response.completed" | "response.incomplete" => {
                self.done = true;
                self.read_lifecycle(data);
            }
            "response.failed" => {
                self.done = true;
                self.failed = true;
                self.read_lifecycle(data);
            }
            "error" => self.failed = true,
            _ => {}
        }
        Mapped::Pass
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage
            .filter(|_| self.count_usage)
            .map(|u| u.token_usage())
    }

    fn upstream_failed(&self) -> bool {
        self.failed
    }

    fn completed(&self) -> bool {
        self.done
    }

    fn error_event(&self, code: &str, message: &str) -> Bytes {
        let builder = match &self.response_id {
            Some(id) => ResponseBuilder::resume(
                id.clone(),
                self.model.clone(),
                self.created_at,
                self.last_seq.map_or(0, |seq| seq + 1),
            ),
            // Nothing from the upstream yet: the failure starts the stream itself.
            None => ResponseBuilder::new(
                new_response_id(),
                self.model.clone(),
                self.created_at,
                RequestEcho::default(),
                true,
            ),
        };
        builder.failure_events(code, message)
    }
}
