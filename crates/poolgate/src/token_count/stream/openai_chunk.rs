//! An exact fast reader for the common shape of an OpenAI chat or completions stream chunk: one
//! strict pass over the bytes that checks the whole chunk is JSON and notes where the generated
//! texts are, without building serde's structs (a `Vec` of choices, field matching through
//! visitors, `IgnoredAny` for every other field).
//!
//! It gives up ([`Fallback`]) on anything it does not read exactly as the serde path does — a
//! `\u` escape anywhere, an escaped key, a duplicate field it reads, a field of an unexpected
//! type, nesting deeper than [`MAX_DEPTH`], more than [`MAX_PIECES`] texts, and any JSON it finds
//! invalid — and the caller then runs the serde parse. So it only ever answers for a chunk
//! serde accepts too, with the same texts in the same order: per choice `text`, then
//! `delta.content`, `delta.refusal`, `delta.reasoning_content`, then each tool call's
//! `function.name` and `function.arguments`.

/// Texts one chunk may carry before the serde path takes it (a chunk has one, usually).
const MAX_PIECES: usize = 8;
/// Nesting the fast path follows (serde_json's limit is 128).
const MAX_DEPTH: usize = 32;

/// Not the common shape, or not JSON this reader vouches for: parse it with serde.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fallback;

type Step<T = ()> = Result<T, Fallback>;

/// A text found: where serde would yield it, and where its string content is.
#[derive(Clone, Copy, Default)]
struct Piece {
    choice: u32,
    /// 0 `text`, 1 `content`, 2 `refusal`, 3 `reasoning_content`, then per tool call `j`:
    /// `4 + 2j` its name, `5 + 2j` its arguments.
    order: u32,
    start: usize,
    end: usize,
    escaped: bool,
}

/// Calls `each` with every text of the chunk `data`, in serde's order — or does nothing and
/// says [`Fallback`].
pub(super) fn openai_texts(data: &str, mut each: impl FnMut(&str)) -> Step {
    let mut scanner = Scanner {
        bytes: data.as_bytes(),
        at: 0,
        pieces: [Piece::default(); MAX_PIECES],
        found: 0,
    };
    scanner.chunk()?;
    let pieces = &mut scanner.pieces[..scanner.found];
    pieces.sort_unstable_by_key(|piece| (piece.choice, piece.order));
    for piece in pieces.iter() {
        // The ranges are a string's content between two quotes: always in `data`.
        let raw = data.get(piece.start..piece.end).unwrap_or_default();
        if piece.escaped {
            each(&unescape(raw));
        } else {
            each(raw);
        }
    }
    Ok(())
}

/// A string's content with its escapes resolved (the scanner let only the one-letter escapes
/// through, never `\u`).
fn unescape(raw: &str) -> String {
    let mut text = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        let resolved = match chars.next() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            // `"`, `\` and `/` stand for themselves.
            Some(other) => other,
            None => break,
        };
        text.push(resolved);
    }
    text
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    pieces: [Piece; MAX_PIECES],
    found: usize,
}

impl<'a> Scanner<'a> {
    /// The whole chunk: one object, whitespace around it.
    fn chunk(&mut self) -> Step {
        self.space();
        let mut choices = false;
        self.object(0, |s, key| {
            if key != b"choices" {
                return s.skip(1);
            }
            once(&mut choices)?;
            s.space();
            if s.peek() != Some(b'[') {
                return Err(Fallback);
            }
            s.array(1, |s, index| s.choice(index, 2))
        })?;
        self.space();
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Fallback)
        }
    }

    fn choice(&mut self, index: u32, depth: usize) -> Step {
        self.space();
        if self.peek() != Some(b'{') {
            return Err(Fallback);
        }
        let (mut delta, mut text) = (false, false);
        self.object(depth, |s, key| match key {
            b"delta" => {
                once(&mut delta)?;
                s.null_or(b'{', |s| s.delta(index, depth + 1))
            }
            b"text" => {
                once(&mut text)?;
                s.text(index, 0)
            }
            _ => s.skip(depth + 1),
        })
    }

    fn delta(&mut self, index: u32, depth: usize) -> Step {
        let mut seen = [false; 4];
        self.object(depth, |s, key| match key {
            b"content" => {
                once(&mut seen[0])?;
                s.text(index, 1)
            }
            b"refusal" => {
                once(&mut seen[1])?;
                s.text(index, 2)
            }
            b"reasoning_content" => {
                once(&mut seen[2])?;
                s.text(index, 3)
            }
            b"tool_calls" => {
                once(&mut seen[3])?;
                s.null_or(b'[', |s| {
                    s.array(depth + 1, |s, call| s.tool_call(index, call, depth + 2))
                })
            }
            _ => s.skip(depth + 1),
        })
    }

    fn tool_call(&mut self, index: u32, call: u32, depth: usize) -> Step {
        self.space();
        if self.peek() != Some(b'{') {
            return Err(Fallback);
        }
        let name = call
            .checked_mul(2)
            .and_then(|order| order.checked_add(4))
            .ok_or(Fallback)?;
        let mut function = false;
        self.object(depth, |s, key| {
            if key != b"function" {
                return s.skip(depth + 1);
            }
            once(&mut function)?;
            s.null_or(b'{', |s| {
                let (mut seen_name, mut seen_arguments) = (false, false);
                s.object(depth + 1, |s, key| match key {
                    b"name" => {
                        once(&mut seen_name)?;
                        s.text(index, name)
                    }
                    b"arguments" => {
                        once(&mut seen_arguments)?;
                        s.text(index, name + 1)
                    }
                    _ => s.skip(depth + 2),
                })
            })
        })
    }

    /// A text field's value: a string (noted) or `null`.
    fn text(&mut self, choice: u32, order: u32) -> Step {
        self.space();
        if self.peek() == Some(b'n') {
            return self.literal(b"null");
        }
        let (start, end, escaped) = self.string()?;
        let piece = self.pieces.get_mut(self.found).ok_or(Fallback)?;
        *piece = Piece {
            choice,
            order,
            start,
            end,
            escaped,
        };
        self.found += 1;
        Ok(())
    }

    /// `null`, or a value starting with `open` read by `read`.
    fn null_or(&mut self, open: u8, read: impl FnOnce(&mut Self) -> Step) -> Step {
        self.space();
        match self.peek() {
            Some(b'n') => self.literal(b"null"),
            Some(byte) if byte == open => read(self),
            _ => Err(Fallback),
        }
    }

    /// Any JSON value, checked and passed over.
    fn skip(&mut self, depth: usize) -> Step {
        self.space();
        match self.peek().ok_or(Fallback)? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth, |s, _| s.skip(depth + 1)),
            b'[' => self.array(depth, |s, _| s.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Fallback),
        }
    }

    /// `{`, then `"key": value` pairs (`field` reads each value), `}`. Keys with an escape are
    /// left to serde.
    fn object(&mut self, depth: usize, mut field: impl FnMut(&mut Self, &'a [u8]) -> Step) -> Step {
        if depth > MAX_DEPTH {
            return Err(Fallback);
        }
        self.byte(b'{')?;
        self.space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.space();
            let (start, end, escaped) = self.string()?;
            if escaped {
                return Err(Fallback);
            }
            let key = self.bytes.get(start..end).ok_or(Fallback)?;
            self.space();
            self.byte(b':')?;
            field(self, key)?;
            self.space();
            match self.next() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                _ => return Err(Fallback),
            }
        }
    }

    /// `[`, values (`item` reads each, with its index), `]`.
    fn array(&mut self, depth: usize, mut item: impl FnMut(&mut Self, u32) -> Step) -> Step {
        if depth > MAX_DEPTH {
            return Err(Fallback);
        }
        self.byte(b'[')?;
        self.space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        let mut index: u32 = 0;
        loop {
            item(self, index)?;
            index = index.checked_add(1).ok_or(Fallback)?;
            self.space();
            match self.next() {
                Some(b',') => continue,
                Some(b']') => return Ok(()),
                _ => return Err(Fallback),
            }
        }
    }

    /// A string: its content's range and whether it has escapes. Control characters and `\u`
    /// escapes are left to serde.
    fn string(&mut self) -> Step<(usize, usize, bool)> {
        self.byte(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            match *self.bytes.get(self.at).ok_or(Fallback)? {
                b'"' => {
                    self.at += 1;
                    return Ok((start, self.at - 1, escaped));
                }
                b'\\' => match self.bytes.get(self.at + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                        escaped = true;
                        self.at += 2;
                    }
                    _ => return Err(Fallback),
                },
                0x00..=0x1f => return Err(Fallback),
                _ => self.at += 1,
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Step {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Fallback),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn some_digits(&mut self) -> Step {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(Fallback);
        }
        self.digits();
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Step {
        if self
            .bytes
            .get(self.at..)
            .is_some_and(|rest| rest.starts_with(word))
        {
            self.at += word.len();
            Ok(())
        } else {
            Err(Fallback)
        }
    }

    fn byte(&mut self, wanted: u8) -> Step {
        if self.next() == Some(wanted) {
            Ok(())
        } else {
            Err(Fallback)
        }
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }
}

/// A field read once; a second time is left to serde (which refuses it).
fn once(seen: &mut bool) -> Step {
    if std::mem::replace(seen, true) {
        Err(Fallback)
    } else {
        Ok(())
    }
}
