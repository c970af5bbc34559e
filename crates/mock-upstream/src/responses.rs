//! The mock's Responses API state: the responses it made (for `GET` / `DELETE` / `cancel`, and
//! to check `previous_response_id` as OpenAI does — an id from another key is unknown), and a
//! prompt cache that reports `cached_tokens` when a prompt comes back to the same instance, so
//! tests can see sticky routing pay off.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use crate::wire::responses::{ResponseObject, CACHED_TOKENS};

/// Kept responses and prompts; past this the oldest state is dropped wholesale (benchmarks run
/// long and must stay flat in memory).
const MAX_KEPT: usize = 100_000;

#[derive(Default)]
pub(crate) struct ResponseStore {
    stored: Mutex<HashMap<String, ResponseObject>>,
    prompts: Mutex<HashSet<String>>,
}

/// Why a cancel was refused.
pub(crate) enum CancelError {
    NotFound,
    NotBackground,
}

impl ResponseStore {
    pub(crate) fn knows(&self, id: &str) -> bool {
        self.stored.lock().contains_key(id)
    }

    /// `cached_tokens` for a prompt: [`CACHED_TOKENS`] if this instance saw it before, else 0.
    pub(crate) fn cached_tokens(&self, prompt: String) -> u64 {
        let mut prompts = self.prompts.lock();
        if prompts.len() >= MAX_KEPT {
            prompts.clear();
        }
        if prompts.insert(prompt) {
            0
        } else {
            CACHED_TOKENS
        }
    }

    pub(crate) fn keep(&self, response: ResponseObject) {
        let mut stored = self.stored.lock();
        if stored.len() >= MAX_KEPT {
            stored.clear();
        }
        stored.insert(response.id.clone(), response);
    }

    pub(crate) fn get(&self, id: &str) -> Option<Bytes> {
        self.stored.lock().get(id).map(ResponseObject::to_bytes)
    }

    pub(crate) fn delete(&self, id: &str) -> bool {
        self.stored.lock().remove(id).is_some()
    }

    /// Cancels a background response (its status becomes `cancelled`).
    pub(crate) fn cancel(&self, id: &str) -> Result<Bytes, CancelError> {
        let mut stored = self.stored.lock();
        let response = stored.get_mut(id).ok_or(CancelError::NotFound)?;
        if !response.background {
            return Err(CancelError::NotBackground);
        }
        response.cancel();
        Ok(response.to_bytes())
    }

    /// Ids of the responses kept, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.stored.lock().keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// What identifies a prompt for the cache: `prompt_cache_key`, else the instructions and the
/// first input item.
pub(crate) fn prompt_key(
    prompt_cache_key: Option<&str>,
    instructions: Option<&Value>,
    input: Option<&Value>,
) -> String {
    if let Some(key) = prompt_cache_key {
        return format!("key:{key}");
    }
    let first = match input {
        Some(Value::Array(items)) => items.first(),
        other => other,
    };
    format!(
        "prefix:{}|{}",
        instructions.map(Value::to_string).unwrap_or_default(),
        first.map(Value::to_string).unwrap_or_default()
    )
}
