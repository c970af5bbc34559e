//! Tests of `sse`.

use super::*;
use proptest::prelude::*;

/// Feeds `chunks` one by one; returns the events and what `finish` gave.
fn frame_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, Option<SseEvent>) {
    let mut framer = SseFramer::new();
    let mut out = Vec::new();
    for chunk in chunks {
        framer
            .push(Bytes::copy_from_slice(chunk), &mut out)
            .expect("push");
    }
    (out, framer.finish())
}

fn frame(input: &[u8]) -> Vec<SseEvent> {
    let (events, rest) = frame_chunks(&[input]);
    assert_eq!(rest, None, "unexpected pending bytes");
    events
}

type Parsed = (Option<String>, Option<String>, Option<String>);

fn parsed(e: &SseEvent) -> Parsed {
    (e.event.clone(), e.data.clone(), e.id.clone())
}

fn data(events: &[SseEvent]) -> Vec<Option<&str>> {
    events.iter().map(|e| e.data.as_deref()).collect()
}

fn raws(events: &[SseEvent]) -> Vec<&[u8]> {
    events.iter().map(|e| &e.raw[..]).collect()
}

#[test]
fn lf_endings() {
    let events = frame(b"event: a\ndata: 1\n\ndata: 2\n\n");
    assert_eq!(
        raws(&events),
        [&b"event: a\ndata: 1\n\n"[..], &b"data: 2\n\n"[..]]
    );
    assert_eq!(events[0].event.as_deref(), Some("a"));
    assert_eq!(events[1].event, None);
    assert_eq!(data(&events), [Some("1"), Some("2")]);
}

#[test]
fn crlf_endings() {
    let events = frame(b"data: 1\r\n\r\ndata: 2\r\n\r\n");
    assert_eq!(
        raws(&events),
        [&b"data: 1\r\n\r\n"[..], &b"data: 2\r\n\r\n"[..]]
    );
    assert_eq!(data(&events), [Some("1"), Some("2")]);
}

#[test]
fn cr_only_endings() {
    let events = frame(b"data: 1\rdata: 2\r\rdata: 3\r\r");
    assert_eq!(
        raws(&events),
        [&b"data: 1\rdata: 2\r\r"[..], &b"data: 3\r\r"[..]]
    );
    assert_eq!(data(&events), [Some("1\n2"), Some("3")]);
}

#[test]
fn mixed_endings() {
    let events = frame(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\n\r");
    assert_eq!(data(&events), [Some("a\nb\nc"), Some("d")]);
    assert_eq!(events[1].raw, &b"data: d\n\r"[..]);
}

#[test]
fn comment_only_block_is_an_event() {
    let events = frame(b": keep-alive\n\ndata: x\n\n");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].raw, &b": keep-alive\n\n"[..]);
    assert_eq!(parsed(&events[0]), (None, None, None));
    assert_eq!(events[1].data.as_deref(), Some("x"));
}

#[test]
fn lone_blank_line_is_an_empty_event() {
    let events = frame(b"\ndata: x\n\n\n");
    assert_eq!(raws(&events), [&b"\n"[..], &b"data: x\n\n"[..], &b"\n"[..]]);
    assert_eq!(data(&events), [None, Some("x"), None]);
}

#[test]
fn multi_line_data_is_joined_with_lf() {
    let events = frame(b"data: {\"a\":\ndata:  1}\ndata\ndata:\n\n");
    assert_eq!(data(&events), [Some("{\"a\":\n 1}\n\n")]);
}

#[test]
fn at_most_one_space_after_colon_is_removed() {
    let events = frame(b"data:x\n\ndata: x\n\ndata:  x\n\ndata:\tx\n\n");
    assert_eq!(
        data(&events),
        [Some("x"), Some("x"), Some(" x"), Some("\tx")]
    );
}

#[test]
fn field_without_colon_has_empty_value() {
    let events = frame(b"data\n\nevent\ndata: y\n\n");
    assert_eq!(events[0].data.as_deref(), Some(""));
    assert_eq!(events[1].event.as_deref(), Some(""));
    assert_eq!(events[1].data.as_deref(), Some("y"));
}

#[test]
fn unknown_fields_and_comments_are_ignored() {
    let events = frame(b"retry: 10\nfoo: bar\n: note\nDATA: no\ndata: yes\n\n");
    assert_eq!(parsed(&events[0]), (None, Some("yes".into()), None));
}

#[test]
fn last_event_and_id_win() {
    let events = frame(b"event: a\nid: 1\nevent: b\nid: 2\nid: bad\0\ndata: x\n\n");
    assert_eq!(
        parsed(&events[0]),
        (Some("b".into()), Some("x".into()), Some("2".into()))
    );
}

#[test]
fn anthropic_style_event() {
    let input = b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":5}}\n\n";
    let events = frame(input);
    assert_eq!(events[0].event.as_deref(), Some("message_delta"));
    assert_eq!(
        events[0].data.as_deref(),
        Some("{\"usage\":{\"output_tokens\":5}}")
    );
}

#[test]
fn bom_at_start_is_ignored_but_kept_in_raw() {
    let input = b"\xEF\xBB\xBFdata: x\n\n\xEF\xBB\xBFdata: y\n\n";
    let events = frame(input);
    assert_eq!(events[0].raw, &b"\xEF\xBB\xBFdata: x\n\n"[..]);
    assert_eq!(events[0].data.as_deref(), Some("x"));
    // Only at the start of the stream: later, it makes an unknown field name.
    assert_eq!(events[1].data, None);

    let (events, rest) = frame_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]);
    assert_eq!(rest, None);
    assert_eq!(data(&events), [Some("x")]);
    assert_eq!(events[0].raw, &b"\xEF\xBB\xBFdata: x\n\n"[..]);
}

#[test]
fn done_marker() {
    let events = frame(b"data: {}\n\ndata: [DONE]\n\n");
    assert!(!events[0].is_done());
    assert!(events[1].is_done());
}

#[test]
fn utf8_char_split_across_chunks() {
    let input = "data: é€😀\n\n".as_bytes();
    for cut in 6..input.len() {
        let (events, rest) = frame_chunks(&[&input[..cut], &input[cut..]]);
        assert_eq!(rest, None);
        assert_eq!(data(&events), [Some("é€😀")], "cut at {cut}");
        assert_eq!(events[0].raw, input);
    }
}

#[test]
fn invalid_utf8_is_decoded_lossily() {
    let events = frame(b"data: a\xFFb\xE2\x82\n\n");
    assert_eq!(events[0].data.as_deref(), Some("a\u{FFFD}b\u{FFFD}"));
}

#[test]
fn cr_lf_split_inside_an_event_is_one_line_end() {
    let (events, rest) = frame_chunks(&[b"data: a\r", b"\ndata: b\r\n\r\n"]);
    assert_eq!(rest, None);
    assert_eq!(data(&events), [Some("a\nb")]);
    assert_eq!(events[0].raw, &b"data: a\r\ndata: b\r\n\r\n"[..]);

    // Also when nothing is buffered: the event starts in the second chunk.
    let (events, rest) = frame_chunks(&[b"data: a\r\n\r", b"\ndata: b\r", b"\n\r\n"]);
    assert_eq!(rest, None);
    assert_eq!(data(&events), [Some("a"), Some("b")]);
}

#[test]
fn cr_lf_split_at_the_blank_line_dispatches_at_once() {
    let mut framer = SseFramer::new();
    let mut out = Vec::new();
    framer
        .push(Bytes::from_static(b"data: a\r\n\r"), &mut out)
        .unwrap();
    assert_eq!(raws(&out), [&b"data: a\r\n\r"[..]]);
    framer
        .push(Bytes::from_static(b"\ndata: b\r\n\r\n"), &mut out)
        .unwrap();
    // The LF completing the CRLF leads the next event and is not a blank line.
    assert_eq!(raws(&out)[1], &b"\ndata: b\r\n\r\n"[..]);
    assert_eq!(data(&out), [Some("a"), Some("b")]);
    assert_eq!(framer.finish(), None);
}

#[test]
fn cr_lf_split_at_the_end_of_the_stream() {
    let (events, rest) = frame_chunks(&[b"data: a\r\n\r", b"\n"]);
    assert_eq!(data(&events), [Some("a")]);
    let rest = rest.unwrap();
    assert_eq!(rest.raw, &b"\n"[..]);
    assert_eq!(parsed(&rest), (None, None, None));
}

#[test]
fn empty_chunks_change_nothing() {
    let (events, rest) = frame_chunks(&[b"data: a\r", b"", b"\n", b"", b"\r\n"]);
    assert_eq!(rest, None);
    assert_eq!(data(&events), [Some("a")]);
}

#[test]
fn one_byte_chunks() {
    let input = b"event: e\r\ndata: 1\r\n\r\n: c\n\ndata: 2\r\r";
    let chunks: Vec<&[u8]> = input.chunks(1).collect();
    let (events, rest) = frame_chunks(&chunks);
    assert_eq!(rest, None);
    assert_eq!(data(&events), data(&frame(input)));
    assert_eq!(events.concat_raw(), input);
}

#[test]
fn events_inside_one_chunk_are_not_copied() {
    let chunk = Bytes::from_static(b"data: 1\n\ndata: 2\n\ndata: 3");
    let range = chunk.as_ptr_range();
    let mut framer = SseFramer::new();
    let mut out = Vec::new();
    framer.push(chunk.clone(), &mut out).unwrap();
    assert_eq!(out.len(), 2);
    for event in &out {
        assert!(range.contains(&event.raw.as_ptr()));
    }
    // The tail was buffered; its event is copied, and the rest of the next chunk is sliced.
    let next = Bytes::from_static(b"\n\ndata: 4\n\n");
    let next_range = next.as_ptr_range();
    framer.push(next, &mut out).unwrap();
    assert_eq!(data(&out), [Some("1"), Some("2"), Some("3"), Some("4")]);
    assert_eq!(out[2].raw, &b"data: 3\n\n"[..]);
    assert!(next_range.contains(&out[3].raw.as_ptr()));
}

#[test]
fn event_too_large_is_an_error() {
    // Buffered across chunks.
    let mut framer = SseFramer::with_max_event_bytes(16);
    let mut out = Vec::new();
    framer
        .push(Bytes::from_static(b"data: 1\n\ndata: 0123"), &mut out)
        .unwrap();
    let err = framer
        .push(Bytes::from_static(b"4567890"), &mut out)
        .unwrap_err();
    assert!(matches!(err, SseError::EventTooLarge { limit: 16 }));
    assert_eq!(
        err.to_string(),
        "an SSE event exceeded the limit of 16 bytes"
    );
    assert_eq!(data(&out), [Some("1")]);
    // Sticky.
    assert!(framer.push(Bytes::from_static(b"\n\n"), &mut out).is_err());
    assert_eq!(framer.finish(), None);

    // Inside one chunk: the events before the big one are still delivered.
    let mut framer = SseFramer::with_max_event_bytes(16);
    let mut out = Vec::new();
    let result = framer.push(
        Bytes::from_static(b"data: 1\n\ndata: 0123456789\n\n"),
        &mut out,
    );
    assert!(result.is_err());
    assert_eq!(data(&out), [Some("1")]);

    // Exactly at the limit is fine.
    let mut framer = SseFramer::with_max_event_bytes(9);
    let mut out = Vec::new();
    framer
        .push(Bytes::from_static(b"data: 1\n\n"), &mut out)
        .unwrap();
    framer.push(Bytes::from_static(b"data"), &mut out).unwrap();
    framer
        .push(Bytes::from_static(b": 2\n\n"), &mut out)
        .unwrap();
    assert_eq!(data(&out), [Some("1"), Some("2")]);
}

#[test]
fn finish_returns_the_partial_event_parsed() {
    let (events, rest) = frame_chunks(&[b"data: 1\n\nevent: usage\ndata: {\"a\"", b":1}"]);
    assert_eq!(data(&events), [Some("1")]);
    let rest = rest.unwrap();
    assert_eq!(rest.raw, &b"event: usage\ndata: {\"a\":1}"[..]);
    assert_eq!(rest.event.as_deref(), Some("usage"));
    assert_eq!(rest.data.as_deref(), Some("{\"a\":1}"));

    let (_, rest) = frame_chunks(&[b"data: 1\n"]);
    assert_eq!(rest.unwrap().data.as_deref(), Some("1"));

    let (_, rest) = frame_chunks(&[b"data: 1\n\n"]);
    assert_eq!(rest, None);
    assert_eq!(SseFramer::default().finish(), None);
}

#[test]
fn encode_event_format() {
    assert_eq!(
        encode_event(Some("message_stop"), "{}"),
        &b"event: message_stop\ndata: {}\n\n"[..]
    );
    assert_eq!(encode_event(None, "a\nb"), &b"data: a\ndata: b\n\n"[..]);
    assert_eq!(encode_event(None, ""), &b"data: \n\n"[..]);
    assert_eq!(
        encode_event(Some("x\r\ny"), "a\r\nb\rc\n"),
        &b"event: xy\ndata: a\ndata: b\ndata: c\ndata: \n\n"[..]
    );
    let events = frame(&encode_event(None, " lead\r\nx\n"));
    assert_eq!(data(&events), [Some(" lead\nx\n")]);
}

trait ConcatRaw {
    fn concat_raw(&self) -> Vec<u8>;
}

impl ConcatRaw for [SseEvent] {
    fn concat_raw(&self) -> Vec<u8> {
        self.iter().flat_map(|e| e.raw.iter().copied()).collect()
    }
}

/// Bytes built from SSE-ish tokens, so line ends, field names, BOMs and broken UTF-8 are
/// common, with arbitrary bytes mixed in.
fn sse_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b":".to_vec()),
        Just(b" ".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event".to_vec()),
        Just(b"id".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just(BOM.to_vec()),
        Just("é€😀".as_bytes().to_vec()),
        Just(b"\xE2\x82".to_vec()),
        Just(b"\xFF\0".to_vec()),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(token, 0..64).prop_map(|tokens| tokens.concat())
}

/// Cuts `input` at the given points (in any order, duplicates allowed).
fn split_at_points<'a>(input: &'a [u8], points: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p.index(input.len() + 1)).collect();
    cuts.push(0);
    cuts.push(input.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

/// End offsets of each event's `raw` in the input.
fn ends(events: &[SseEvent]) -> Vec<usize> {
    events
        .iter()
        .scan(0, |end, e| {
            *end += e.raw.len();
            Some(*end)
        })
        .collect()
}

proptest! {
    #[test]
    fn raw_is_lossless_and_framing_ignores_chunking(
        input in sse_ish_bytes(),
        points in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let (whole, whole_rest) = frame_chunks(&[&input]);
        let chunks = split_at_points(&input, &points);
        let (split, split_rest) = frame_chunks(&chunks);

        for (events, rest) in [(&whole, &whole_rest), (&split, &split_rest)] {
            let mut bytes = events.concat_raw();
            if let Some(rest) = rest {
                prop_assert!(!rest.raw.is_empty());
                bytes.extend_from_slice(&rest.raw);
            }
            prop_assert_eq!(&bytes, &input);
        }

        let whole_parsed: Vec<Parsed> = whole.iter().map(parsed).collect();
        let split_parsed: Vec<Parsed> = split.iter().map(parsed).collect();
        prop_assert_eq!(whole_parsed, split_parsed);
        // An event boundary moves only past the LF of a CRLF split between chunks.
        for (w, s) in ends(&whole).into_iter().zip(ends(&split)) {
            prop_assert!(w == s || (w == s + 1 && input[s - 1] == b'\r' && input[s] == b'\n'));
        }
        // ... which at the very end leaves that LF for `finish`.
        let empty = (None, None, None);
        let whole_rest = whole_rest.as_ref().map_or(empty.clone(), parsed);
        let split_rest = split_rest.as_ref().map_or(empty, parsed);
        prop_assert_eq!(whole_rest, split_rest);
    }

    #[test]
    fn encoded_events_round_trip(
        events in prop::collection::vec(
            (
                prop::option::of("[^\r\n]{0,8}"),
                prop::collection::vec("[^\r\n]{0,12}", 1..4).prop_map(|l| l.join("\n")),
                0..3u8,
            ),
            0..8,
        ),
        points in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut input = Vec::new();
        for (name, data, style) in &events {
            let encoded = encode_event(name.as_deref(), data);
            let line_end: &[u8] = match style {
                0 => b"\n",
                1 => b"\r\n",
                _ => b"\r",
            };
            for &b in encoded.iter() {
                if b == b'\n' {
                    input.extend_from_slice(line_end);
                } else {
                    input.push(b);
                }
            }
        }
        let chunks = split_at_points(&input, &points);
        let (framed, rest) = frame_chunks(&chunks);
        prop_assert_eq!(rest.filter(|r| r.raw != b"\n"[..]), None);
        let got: Vec<(Option<String>, Option<String>)> =
            framed.iter().map(|e| (e.event.clone(), e.data.clone())).collect();
        let want: Vec<(Option<String>, Option<String>)> =
            events.into_iter().map(|(name, data, _)| (name, Some(data))).collect();
        prop_assert_eq!(got, want);
    }
}
