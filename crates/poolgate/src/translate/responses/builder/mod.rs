//! Builds a Response object step by step — text, function calls, reasoning — and, when
//! streaming, writes the typed event for each step with its `sequence_number`, `output_index`
//! and `content_index`. The JSON converters drive the same builder without writing events.
//!
//! Event order for one answer: `response.created`, `response.in_progress`; per message item
//! `output_item.added`, per text part `content_part.added`, `output_text.delta`…,
//! `output_text.done`, `content_part.done`, then `output_item.done`; per function call
//! `output_item.added`, `function_call_arguments.delta`…, `.done`, `output_item.done`; per
//! reasoning item `output_item.added`, `reasoning_summary_part.added`,
//! `reasoning_summary_text.delta`…, `.done`, `reasoning_summary_part.done`, `output_item.done`;
//! last `response.completed` (or `.incomplete`) with the whole output and usage — or, on a
//! failure, `error` then `response.failed`.
//!
//! The builder keeps the answer's text (the final events repeat it whole); the stream itself is
//! forwarded event by event.

use bytes::{Bytes, BytesMut};

use super::{encode_event, Finish};
use crate::providers::responses::events::{SequencedEvent, StreamEvent};
use crate::providers::responses::request::{FunctionCall, ItemStatus, ReasoningItem};
use crate::providers::responses::response::{
    IncompleteDetails, OutputContent, OutputItem, OutputMessage, RequestEcho, Response,
    ResponseError, ResponseStatus, ResponseUsage,
};
use crate::providers::responses::tagged::Tagged;

mod items;

/// One answer being built. See the module docs for the events it writes.
pub struct ResponseBuilder {
    response: Response,
    /// Write events (streams) or only build the object (JSON answers).
    emit: bool,
    /// The next `sequence_number`.
    seq: u64,
    /// `open[i]`: output item `i` is still in progress.
    open: Vec<bool>,
    /// Content index of the open text part of the last (message) item.
    text_part: Option<usize>,
    /// Upstream key (tool call index, content block index) → output index.
    keyed: Vec<(u32, usize)>,
    started: bool,
    finished: bool,
    /// The answer ended in `response.failed`.
    failed: bool,
}

/// What a stream that ended with no answer event at all says.
const NO_ANSWER: &str = "the upstream ended the stream without an answer";

impl ResponseBuilder {
    pub fn new(
        response_id: String,
        model: String,
        created_at: i64,
        echo: RequestEcho,
        emit: bool,
    ) -> Self {
        Self {
            response: Response {
                id: response_id,
                object: "response".to_owned(),
                created_at,
                status: ResponseStatus::InProgress,
                error: None,
                incomplete_details: None,
                model,
                output: Vec::new(),
                usage: None,
                previous_response_id: None,
                echo,
            },
            emit,
            seq: 0,
            open: Vec::new(),
            text_part: None,
            keyed: Vec::new(),
            started: false,
            finished: false,
            failed: false,
        }
    }

    /// A builder for a stream an upstream already started (`response.created` was sent, the
    /// next event is number `next_seq`): only for writing its failure.
    pub fn resume(response_id: String, model: String, created_at: i64, next_seq: u64) -> Self {
        let mut builder = Self::new(response_id, model, created_at, RequestEcho::default(), true);
        builder.started = true;
        builder.seq = next_seq;
        builder
    }

    pub fn response_id(&self) -> &str {
        &self.response.id
    }

    pub fn started(&self) -> bool {
        self.started
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The answer ended in `response.failed`.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The answer ended and did not fail.
    pub fn succeeded(&self) -> bool {
        self.finished && !self.failed
    }

    /// Sets the model (streams learn it from the first upstream event), before [`start`](Self::start).
    pub fn set_model(&mut self, model: &str) {
        if !self.started && !model.is_empty() {
            model.clone_into(&mut self.response.model);
        }
    }

    /// `response.created` and `response.in_progress` (once).
    pub fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let snapshot = Box::new(self.response.clone());
        self.emit(
            out,
            StreamEvent::Created {
                response: snapshot.clone(),
            },
        );
        self.emit(out, StreamEvent::InProgress { response: snapshot });
    }

    // === closing ===

    /// Ends the item opened for `key` (function call or reasoning).
    pub fn close_keyed(&mut self, out: &mut BytesMut, key: u32) {
        if let Some(output_index) = self.open_keyed(key) {
            self.close_item(out, output_index, ItemStatus::Completed);
        }
    }

    /// Ends every open item with `status`.
    pub fn close_all(&mut self, out: &mut BytesMut, status: ItemStatus) {
        for output_index in 0..self.open.len() {
            if self.open[output_index] {
                self.close_item(out, output_index, status);
            }
        }
    }

    /// Ends the answer: closes what is open, then `response.completed` (or `.incomplete`) with
    /// the whole output and `usage`.
    pub fn complete(&mut self, out: &mut BytesMut, finish: Finish, usage: Option<ResponseUsage>) {
        if self.finished {
            return;
        }
        self.start(out);
        self.close_all(out, finish.item_status());
        self.finished = true;
        self.response.usage = usage;
        match finish {
            Finish::Completed => self.response.status = ResponseStatus::Completed,
            Finish::Incomplete(reason) => {
                self.response.status = ResponseStatus::Incomplete;
                self.response.incomplete_details = Some(IncompleteDetails {
                    reason: reason.to_owned(),
                });
            }
        }
        if self.emit {
            let response = Box::new(self.response.clone());
            let event = match finish {
                Finish::Completed => StreamEvent::Completed { response },
                Finish::Incomplete(_) => StreamEvent::Incomplete { response },
            };
            self.emit(out, event);
        }
    }

    /// The clean end of the upstream stream: [`complete`](Self::complete), or a failure if the
    /// upstream sent nothing that started the answer.
    pub fn end(&mut self, out: &mut BytesMut, finish: Finish, usage: Option<ResponseUsage>) {
        if !self.started {
            self.fail(out, "upstream_stream_error", NO_ANSWER);
        } else {
            self.complete(out, finish, usage);
        }
    }

    /// Ends the answer as failed: `error` then `response.failed` (after `response.created` if
    /// nothing was sent yet). Nothing is written after it.
    pub fn fail(&mut self, out: &mut BytesMut, code: &str, message: &str) {
        if self.finished {
            return;
        }
        out.extend_from_slice(&self.failure_events(code, message));
        self.finished = true;
        self.failed = true;
    }

    /// The events [`fail`](Self::fail) would write, without changing the builder (for a failure
    /// noticed outside the mapper, when nothing else will be written).
    pub fn failure_events(&self, code: &str, message: &str) -> Bytes {
        let mut out = BytesMut::new();
        let mut seq = self.seq;
        let mut write = |out: &mut BytesMut, event: StreamEvent| {
            write_event(
                out,
                &SequencedEvent {
                    event,
                    sequence_number: seq,
                },
            );
            seq += 1;
        };
        if !self.started {
            write(
                &mut out,
                StreamEvent::Created {
                    response: Box::new(self.response.clone()),
                },
            );
        }
        write(
            &mut out,
            StreamEvent::Error {
                code: Some(code.to_owned()),
                message: message.to_owned(),
                param: None,
            },
        );
        let mut failed = self.response.clone();
        failed.status = ResponseStatus::Failed;
        failed.error = Some(ResponseError {
            code: "server_error".to_owned(),
            message: message.to_owned(),
        });
        write(
            &mut out,
            StreamEvent::Failed {
                response: Box::new(failed),
            },
        );
        out.freeze()
    }

    /// The Response object built so far (the whole answer after [`complete`](Self::complete)).
    pub fn into_response(self) -> Response {
        self.response
    }

    // === internals ===

    fn emit(&mut self, out: &mut BytesMut, event: StreamEvent) {
        if self.emit {
            write_event(
                out,
                &SequencedEvent {
                    event,
                    sequence_number: self.seq,
                },
            );
        }
        self.seq += 1;
    }

    /// `msg_…`, `fc_…` or `rs_…`: the kind, the response id's suffix and the output index.
    fn new_item_id(&self, prefix: &str, output_index: usize) -> String {
        let base = self
            .response
            .id
            .strip_prefix("resp_")
            .unwrap_or(&self.response.id);
        format!("{prefix}_{base}_{output_index}")
    }

    /// The id of output item `output_index`.
    fn item_id(&self, output_index: usize) -> String {
        match self.response.output.get(output_index) {
            Some(Tagged::Known(OutputItem::Message(message))) => message.id.clone(),
            Some(Tagged::Known(OutputItem::FunctionCall(FunctionCall { id, .. })))
            | Some(Tagged::Known(OutputItem::Reasoning(ReasoningItem { id, .. }))) => {
                id.clone().unwrap_or_default()
            }
            _ => String::new(),
        }
    }

    fn push_item(&mut self, out: &mut BytesMut, item: OutputItem) {
        let output_index = self.response.output.len();
        self.response.output.push(Tagged::Known(item.clone()));
        self.open.push(true);
        self.emit(
            out,
            StreamEvent::OutputItemAdded {
                output_index,
                item: Tagged::Known(item),
            },
        );
    }

    fn message_mut(&mut self, output_index: usize) -> Option<&mut OutputMessage> {
        match self.response.output.get_mut(output_index) {
            Some(Tagged::Known(OutputItem::Message(message))) => Some(message),
            _ => None,
        }
    }

    /// The output index of the open message item: the last item, or a new one.
    fn open_message(&mut self, out: &mut BytesMut) -> usize {
        if let Some(last) = self.response.output.len().checked_sub(1) {
            if self.open[last] && self.message_mut(last).is_some() {
                return last;
            }
        }
        let output_index = self.response.output.len();
        let message = OutputMessage {
            id: self.new_item_id("msg", output_index),
            role: "assistant".to_owned(),
            status: ItemStatus::InProgress,
            content: Vec::new(),
        };
        self.push_item(out, OutputItem::Message(message));
        output_index
    }

    fn open_text_part(&mut self, out: &mut BytesMut) -> (usize, usize) {
        let output_index = self.open_message(out);
        if let Some(content_index) = self.text_part {
            return (output_index, content_index);
        }
        let item_id = self.item_id(output_index);
        let content_index = match self.message_mut(output_index) {
            Some(message) => {
                message.content.push(OutputContent::text(""));
                message.content.len() - 1
            }
            None => 0,
        };
        self.text_part = Some(content_index);
        self.emit(
            out,
            StreamEvent::ContentPartAdded {
                item_id,
                output_index,
                content_index,
                part: OutputContent::text(""),
            },
        );
        (output_index, content_index)
    }

    fn open_keyed(&self, key: u32) -> Option<usize> {
        self.keyed
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, index)| *index)
            .filter(|index| self.open.get(*index).copied().unwrap_or(false))
    }

    fn open_keyed_mut(&mut self, key: u32) -> Option<(usize, &mut OutputItem)> {
        let output_index = self.open_keyed(key)?;
        match self.response.output.get_mut(output_index) {
            Some(Tagged::Known(item)) => Some((output_index, item)),
            _ => None,
        }
    }

    fn close_message(&mut self, out: &mut BytesMut, status: ItemStatus) {
        if let Some(last) = self.response.output.len().checked_sub(1) {
            if self.open[last] && self.message_mut(last).is_some() {
                self.close_item(out, last, status);
            }
        }
    }

    fn close_item(&mut self, out: &mut BytesMut, output_index: usize, status: ItemStatus) {
        if !self.open.get(output_index).copied().unwrap_or(false) {
            return;
        }
        if self.message_mut(output_index).is_some() && output_index + 1 == self.open.len() {
            self.close_text_part(out);
        }
        self.open[output_index] = false;
        let item_id = self.item_id(output_index);
        let Some(Tagged::Known(item)) = self.response.output.get_mut(output_index) else {
            return;
        };
        let mut pre: Vec<StreamEvent> = Vec::new();
        match item {
            OutputItem::Message(message) => message.status = status,
            OutputItem::FunctionCall(call) => {
                call.status = Some(status);
                pre.push(StreamEvent::FunctionCallArgumentsDone {
                    item_id,
                    output_index,
                    name: Some(call.name.clone()),
                    arguments: call.arguments.clone(),
                });
            }
            OutputItem::Reasoning(reasoning) => {
                reasoning.status = Some(status);
                for (summary_index, part) in reasoning.summary.iter().enumerate() {
                    pre.push(StreamEvent::ReasoningSummaryTextDone {
                        item_id: item_id.clone(),
                        output_index,
                        summary_index,
                        text: part.text.clone(),
                    });
                    pre.push(StreamEvent::ReasoningSummaryPartDone {
                        item_id: item_id.clone(),
                        output_index,
                        summary_index,
                        part: part.clone(),
                    });
                }
            }
        }
        let done = item.clone();
        for event in pre {
            self.emit(out, event);
        }
        self.emit(
            out,
            StreamEvent::OutputItemDone {
                output_index,
                item: Tagged::Known(done),
            },
        );
    }
}

/// `event: {type}` + `data: {json}`.
fn write_event(out: &mut BytesMut, event: &SequencedEvent) {
    if let Ok(json) = serde_json::to_string(event) {
        out.extend_from_slice(&encode_event(Some(event.event.name()), &json));
    }
}
