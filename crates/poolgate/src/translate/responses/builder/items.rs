//! The content steps of [`ResponseBuilder`]: text and refusal parts of message items, function
//! calls and their arguments, reasoning summaries.

use bytes::BytesMut;

use super::ResponseBuilder;
use crate::providers::responses::events::StreamEvent;
use crate::providers::responses::request::{FunctionCall, ItemStatus, ReasoningItem, SummaryText};
use crate::providers::responses::response::{OutputContent, OutputItem};

impl ResponseBuilder {
    // === text ===

    /// Appends text to the open `output_text` part, opening a message item and a part first if
    /// needed.
    pub fn text(&mut self, out: &mut BytesMut, delta: &str) {
        let (output_index, content_index) = self.open_text_part(out);
        let item_id = self.item_id(output_index);
        if let Some(OutputContent::OutputText { text, .. }) = self
            .message_mut(output_index)
            .and_then(|m| m.content.get_mut(content_index))
        {
            text.push_str(delta);
        }
        self.emit(
            out,
            StreamEvent::OutputTextDelta {
                item_id,
                output_index,
                content_index,
                delta: delta.to_owned(),
                logprobs: Vec::new(),
            },
        );
    }

    /// Ends the open text part (`output_text.done`, `content_part.done`); the message item stays
    /// open, so the next text becomes its next part.
    pub fn close_text_part(&mut self, out: &mut BytesMut) {
        let Some(content_index) = self.text_part.take() else {
            return;
        };
        let output_index = self.response.output.len() - 1;
        let item_id = self.item_id(output_index);
        let Some(part) = self
            .message_mut(output_index)
            .and_then(|m| m.content.get(content_index))
            .cloned()
        else {
            return;
        };
        if let OutputContent::OutputText { text, .. } = &part {
            self.emit(
                out,
                StreamEvent::OutputTextDone {
                    item_id: item_id.clone(),
                    output_index,
                    content_index,
                    text: text.clone(),
                    logprobs: Vec::new(),
                },
            );
        }
        self.emit(
            out,
            StreamEvent::ContentPartDone {
                item_id,
                output_index,
                content_index,
                part,
            },
        );
    }

    /// A whole `refusal` part in the current message item.
    pub fn refusal(&mut self, out: &mut BytesMut, refusal: &str) {
        self.close_text_part(out);
        let output_index = self.open_message(out);
        let item_id = self.item_id(output_index);
        let part = OutputContent::Refusal {
            refusal: refusal.to_owned(),
        };
        let Some(message) = self.message_mut(output_index) else {
            return;
        };
        message.content.push(part.clone());
        let content_index = message.content.len() - 1;
        self.emit(
            out,
            StreamEvent::ContentPartAdded {
                item_id: item_id.clone(),
                output_index,
                content_index,
                part: part.clone(),
            },
        );
        self.emit(
            out,
            StreamEvent::ContentPartDone {
                item_id,
                output_index,
                content_index,
                part,
            },
        );
    }

    // === function calls ===

    /// Opens a function call item for upstream key `key` (the open message item, if any, ends).
    pub fn start_function_call(&mut self, out: &mut BytesMut, key: u32, call_id: &str, name: &str) {
        self.close_message(out, ItemStatus::Completed);
        let output_index = self.response.output.len();
        let item = FunctionCall {
            id: Some(self.new_item_id("fc", output_index)),
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            arguments: String::new(),
            status: Some(ItemStatus::InProgress),
        };
        self.push_item(out, OutputItem::FunctionCall(item));
        self.keyed.push((key, output_index));
    }

    /// Whether a function call or reasoning item was opened for `key`.
    pub fn has_key(&self, key: u32) -> bool {
        self.keyed.iter().any(|(k, _)| *k == key)
    }

    /// Appends to the arguments of the function call opened for `key` (ignored if none is open).
    pub fn function_arguments(&mut self, out: &mut BytesMut, key: u32, delta: &str) {
        let Some((output_index, OutputItem::FunctionCall(call))) = self.open_keyed_mut(key) else {
            return;
        };
        call.arguments.push_str(delta);
        let item_id = call.id.clone().unwrap_or_default();
        self.emit(
            out,
            StreamEvent::FunctionCallArgumentsDelta {
                item_id,
                output_index,
                delta: delta.to_owned(),
            },
        );
    }

    // === reasoning ===

    /// Opens a reasoning item for upstream key `key` (the open message item, if any, ends).
    pub fn start_reasoning(&mut self, out: &mut BytesMut, key: u32) {
        self.close_message(out, ItemStatus::Completed);
        let output_index = self.response.output.len();
        let item = ReasoningItem {
            id: Some(self.new_item_id("rs", output_index)),
            summary: Vec::new(),
            content: None,
            encrypted_content: None,
            status: Some(ItemStatus::InProgress),
        };
        self.push_item(out, OutputItem::Reasoning(item));
        self.keyed.push((key, output_index));
    }

    /// Appends reasoning text (as a summary) to the reasoning item opened for `key`.
    pub fn reasoning_text(&mut self, out: &mut BytesMut, key: u32, delta: &str) {
        let Some((output_index, OutputItem::Reasoning(item))) = self.open_keyed_mut(key) else {
            return;
        };
        let item_id = item.id.clone().unwrap_or_default();
        let first = item.summary.is_empty();
        if first {
            item.summary.push(SummaryText {
                text: String::new(),
            });
        }
        let summary_index = item.summary.len() - 1;
        if let Some(summary) = item.summary.last_mut() {
            summary.text.push_str(delta);
        }
        if first {
            self.emit(
                out,
                StreamEvent::ReasoningSummaryPartAdded {
                    item_id: item_id.clone(),
                    output_index,
                    summary_index,
                    part: SummaryText {
                        text: String::new(),
                    },
                },
            );
        }
        self.emit(
            out,
            StreamEvent::ReasoningSummaryTextDelta {
                item_id,
                output_index,
                summary_index,
                delta: delta.to_owned(),
            },
        );
    }
}
