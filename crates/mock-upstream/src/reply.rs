//! What the mock answers: the scriptable [`Reply`] and the shape of a streamed answer, [`StreamSpec`].

/// One scripted answer. Each request pops the next queued `Reply`; an empty queue uses the default.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Normal success for the endpoint hit: an SSE stream (the server's default [`StreamSpec`],
    /// 3 chunks and no gap unless configured otherwise) if the request had `"stream": true`,
    /// else the endpoint's JSON body.
    Ok,
    /// Success with this content text (JSON or stream, as the request asks).
    Content(String),
    /// An SSE stream regardless of what the request asked for. Endpoints that have no stream
    /// format (`/v1/embeddings`, `/v1/models`) answer as for [`Reply::Ok`].
    Stream(StreamSpec),
    /// Any status with this JSON body, sent verbatim, plus extra headers.
    Status {
        status: u16,
        body: serde_json::Value,
        headers: Vec<(String, String)>,
    },
    /// An error in the native shape of the endpoint hit: OpenAI's
    /// `{"error":{"message","type","param","code"}}`, or Anthropic's
    /// `{"type":"error","error":{"type","message"}}` on `/v1/messages`. The error `type` follows
    /// from the status (429 gives `rate_limit_error` on Anthropic, and so on).
    Error {
        status: u16,
        message: String,
        headers: Vec<(String, String)>,
    },
    /// Wait this long before sending response headers, then behave as the inner reply.
    Delay { ms: u64, then: Box<Reply> },
    /// Accept the request and never answer; the connection stays open until the client gives up.
    Hang,
    /// Close the TCP connection without any HTTP response (a crashed upstream); over HTTP/2
    /// this ends every stream of that connection.
    Drop,
}

// === impl Reply ===

impl Reply {
    /// `status` with a JSON `body` sent verbatim.
    pub fn status(status: u16, body: serde_json::Value) -> Reply {
        Reply::Status {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// An error in the endpoint's native shape, with a generic message.
    pub fn error(status: u16) -> Reply {
        Reply::Error {
            status,
            message: format!("mock-upstream: scripted {status} error"),
            headers: Vec::new(),
        }
    }

    /// 429 in the endpoint's native error shape, with `retry-after` when given.
    pub fn rate_limited(retry_after_secs: Option<u64>) -> Reply {
        Reply::Error {
            status: 429,
            message: "mock-upstream: rate limit reached".to_owned(),
            headers: retry_after_secs
                .map(|secs| ("retry-after".to_owned(), secs.to_string()))
                .into_iter()
                .collect(),
        }
    }

    /// 500 in the endpoint's native error shape.
    pub fn server_error() -> Reply {
        Reply::error(500)
    }

    /// 529 `overloaded_error` (Anthropic's overload status) in the endpoint's native error shape.
    pub fn overloaded() -> Reply {
        Reply::error(529)
    }

    /// 401 in the endpoint's native error shape.
    pub fn unauthorized() -> Reply {
        Reply::error(401)
    }

    /// Success with this content text.
    pub fn content(text: impl Into<String>) -> Reply {
        Reply::Content(text.into())
    }

    /// A forced stream of `chunks` content chunks, `gap_ms` apart.
    pub fn stream(chunks: usize, gap_ms: u64) -> Reply {
        Reply::Stream(StreamSpec::new(chunks).gap_ms(gap_ms))
    }

    /// This reply, after waiting `ms` before the response headers.
    pub fn delayed(self, ms: u64) -> Reply {
        Reply::Delay {
            ms,
            then: Box::new(self),
        }
    }

    /// Adds a response header (for [`Reply::Status`] and [`Reply::Error`]; ignored otherwise).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        match &mut self {
            Reply::Status { headers, .. } | Reply::Error { headers, .. } => {
                headers.push((name.into(), value.into()));
            }
            Reply::Delay { then, .. } => {
                let inner = std::mem::replace(then.as_mut(), Reply::Ok);
                **then = inner.with_header(name, value);
            }
            _ => {}
        }
        self
    }
}

/// Token figures every chat / Messages answer reports instead of the defaults (set with
/// `MockUpstream::set_usage`): OpenAI's `prompt_tokens` (cache reads included, reported as
/// `prompt_tokens_details.cached_tokens`) and `completion_tokens`; Anthropic's `input_tokens`
/// is `prompt_tokens − cached_tokens − cache_write_tokens`, with `cache_read_input_tokens` and
/// `cache_creation_input_tokens` beside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportedUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
}

/// How a streamed answer is cut and paced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// Number of content delta chunks.
    pub chunks: usize,
    /// Delay before each content chunk; other events follow without a delay (but still in their
    /// own write).
    pub gap_ms: u64,
    /// Delay before the first event after the content (the finish chunk, then the usage chunk,
    /// or Anthropic's `message_delta`): a usage frame that comes late.
    pub tail_gap_ms: u64,
    /// Abort the connection (body error: no terminating chunk, no `[DONE]`/`message_stop`) after
    /// sending this many content chunks. Values `>= chunks` die after the last content chunk.
    pub die_after: Option<usize>,
    /// Fall silent after sending this many content chunks: nothing more is sent and the
    /// connection stays open (a hung upstream) until the client leaves.
    pub stall_after: Option<usize>,
    /// Text split over the chunks at word boundaries (concatenating the deltas gives it back);
    /// default `"chunk0 chunk1 ..."`, one word per chunk.
    pub content: Option<String>,
}

// === impl StreamSpec ===

impl Default for StreamSpec {
    fn default() -> StreamSpec {
        StreamSpec {
            chunks: 3,
            gap_ms: 0,
            tail_gap_ms: 0,
            die_after: None,
            stall_after: None,
            content: None,
        }
    }
}

impl StreamSpec {
    /// `chunks` content chunks, no gap, no content override, no abort.
    pub fn new(chunks: usize) -> StreamSpec {
        StreamSpec {
            chunks,
            ..StreamSpec::default()
        }
    }

    /// Sets the delay before each content chunk.
    pub fn gap_ms(mut self, gap_ms: u64) -> StreamSpec {
        self.gap_ms = gap_ms;
        self
    }

    /// Sets the delay before the events that follow the content (usage comes late).
    pub fn tail_gap_ms(mut self, tail_gap_ms: u64) -> StreamSpec {
        self.tail_gap_ms = tail_gap_ms;
        self
    }

    /// Aborts the connection after this many content chunks.
    pub fn die_after(mut self, chunks: usize) -> StreamSpec {
        self.die_after = Some(chunks);
        self
    }

    /// Falls silent (connection open, nothing more sent) after this many content chunks.
    pub fn stall_after(mut self, chunks: usize) -> StreamSpec {
        self.stall_after = Some(chunks);
        self
    }

    /// Splits this text over the chunks.
    pub fn content(mut self, text: impl Into<String>) -> StreamSpec {
        self.content = Some(text.into());
        self
    }

    /// The content pieces, one per chunk; they concatenate to the full text.
    pub(crate) fn pieces(&self, content_override: Option<&str>) -> Vec<String> {
        match content_override.or(self.content.as_deref()) {
            Some(text) => split_words(text, self.chunks),
            None => (0..self.chunks)
                .map(|i| {
                    if i == 0 {
                        "chunk0".to_owned()
                    } else {
                        format!(" chunk{i}")
                    }
                })
                .collect(),
        }
    }
}

/// Splits `text` into `parts` pieces at word boundaries (each word carries its leading
/// whitespace, as tokenizers do); words are spread evenly, so with fewer words than parts some
/// pieces are empty. The pieces concatenate to `text`; `parts == 0` yields nothing.
fn split_words(text: &str, parts: usize) -> Vec<String> {
    if parts == 0 {
        return Vec::new();
    }
    // Byte offsets where a new word starts: the first byte, and every whitespace run that follows
    // a non-whitespace character (a word carries its leading whitespace).
    let mut starts = vec![0];
    let mut prev_word_char = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && prev_word_char {
            starts.push(i);
        }
        prev_word_char = !c.is_whitespace();
    }
    let words = starts.len();
    (0..parts)
        .map(|p| {
            let from = starts.get(p * words / parts).copied().unwrap_or(text.len());
            let to = starts
                .get((p + 1) * words / parts)
                .copied()
                .unwrap_or(text.len());
            text.get(from..to).unwrap_or_default().to_owned()
        })
        .collect()
}

/// Completion tokens reported for `text`: its number of whitespace-separated words.
pub(crate) fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pieces_are_numbered_words() {
        let pieces = StreamSpec::default().pieces(None);
        assert_eq!(pieces, ["chunk0", " chunk1", " chunk2"]);
        assert_eq!(count_tokens(&pieces.concat()), 3);
    }

    #[test]
    fn split_words_concatenates_back() {
        for text in [
            "",
            "one",
            "Hello brave new  world",
            "  lead",
            "trail ",
            "a b c d e f g",
        ] {
            for parts in 1..9 {
                let pieces = split_words(text, parts);
                assert_eq!(pieces.len(), parts, "{text:?} / {parts}");
                assert_eq!(pieces.concat(), text, "{text:?} / {parts}");
            }
        }
        assert_eq!(
            split_words("Hello brave new world", 2),
            ["Hello brave", " new world"]
        );
        assert!(split_words("x", 0).is_empty());
    }

    #[test]
    fn with_header_reaches_through_delay() {
        let reply = Reply::rate_limited(None).delayed(5).with_header("x-a", "1");
        let Reply::Delay { then, .. } = reply else {
            panic!("not a delay");
        };
        assert_eq!(
            *then,
            Reply::Error {
                status: 429,
                message: "mock-upstream: rate limit reached".to_owned(),
                headers: vec![("x-a".to_owned(), "1".to_owned())],
            }
        );
    }
}
