//! Affinity keys: which source wins, what the leading-messages hash covers, for each format.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::*;

fn config(sources: &[&str], leading_turns: usize) -> StickySettings {
    StickySettings {
        sources: sources
            .iter()
            .map(|s| KeySource::parse(s).unwrap())
            .collect(),
        leading_turns,
        ..StickySettings::default()
    }
}

fn key(config: &StickySettings, headers: &HeaderMap, body: &Value) -> Option<AffinityKey> {
    affinity_key(
        config,
        &CanonicalModel::new("gpt-4o"),
        headers,
        body.to_string().as_bytes(),
    )
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

#[test]
fn sources_parse_and_bad_ones_are_named() {
    assert_eq!(
        KeySource::parse("header:X-Session-Id").unwrap(),
        KeySource::Header(HeaderName::from_static("x-session-id"))
    );
    assert!(KeySource::parse("header:bad name")
        .unwrap_err()
        .contains("bad name"));
    assert!(KeySource::parse("cookie").unwrap_err().contains("cookie"));
}

#[test]
fn first_source_with_a_value_wins() {
    let cfg = config(&["prompt_cache_key", "header:x-session-id", "user"], 1);
    let mut headers = HeaderMap::new();
    headers.insert("x-session-id", HeaderValue::from_static("s-1"));
    let with_pck = key(
        &cfg,
        &headers,
        &json!({"prompt_cache_key": "k", "user": "u"}),
    )
    .unwrap();
    let with_header = key(&cfg, &headers, &json!({"user": "u"})).unwrap();
    let with_user = key(&cfg, &no_headers(), &json!({"user": "u"})).unwrap();
    assert_ne!(with_pck, with_header);
    assert_ne!(with_header, with_user);
    // The same value from another source is another key.
    let user_only = config(&["user"], 1);
    let pck_only = config(&["prompt_cache_key"], 1);
    assert_ne!(
        key(&user_only, &no_headers(), &json!({"user": "x"})),
        key(&pck_only, &no_headers(), &json!({"prompt_cache_key": "x"}))
    );
    assert_eq!(key(&cfg, &no_headers(), &json!({"user": ""})), None);
    assert_eq!(key(&cfg, &no_headers(), &json!({})), None);
}

#[test]
fn keys_depend_on_the_model() {
    let cfg = config(&["user"], 1);
    let body = json!({"user": "u"}).to_string();
    let a = affinity_key(
        &cfg,
        &CanonicalModel::new("a"),
        &no_headers(),
        body.as_bytes(),
    );
    let b = affinity_key(
        &cfg,
        &CanonicalModel::new("b"),
        &no_headers(),
        body.as_bytes(),
    );
    assert_ne!(a, b);
}

#[test]
fn anthropic_user_is_metadata_user_id() {
    let cfg = config(&["user"], 1);
    assert_eq!(
        key(&cfg, &no_headers(), &json!({"metadata": {"user_id": "u"}})),
        key(&cfg, &no_headers(), &json!({"user": "u"}))
    );
}

#[test]
fn a_conversation_keeps_its_leading_key_as_it_grows() {
    let cfg = config(&["leading_messages"], 1);
    let first = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Plan a trip"}
    ]});
    let later = json!({"model": "gpt-4o", "temperature": 0.3, "messages": [
        {"content": "You are terse.", "role": "system"},
        {"role": "user", "content": "Plan a trip"},
        {"role": "assistant", "content": "Where to?"},
        {"role": "user", "content": "Rome"}
    ]});
    let other = json!({"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Plan a party"}
    ]});
    let k = key(&cfg, &no_headers(), &first).unwrap();
    assert_eq!(
        key(&cfg, &no_headers(), &later),
        Some(k),
        "key order and later turns do not matter"
    );
    assert_ne!(key(&cfg, &no_headers(), &other), Some(k));
    // Two leading turns: the second request differs from the first, later ones agree.
    let two = config(&["leading_messages"], 2);
    assert_ne!(
        key(&two, &no_headers(), &first),
        key(&two, &no_headers(), &later)
    );
}

#[test]
fn leading_messages_read_every_format() {
    let cfg = config(&["leading_messages"], 1);
    let messages = json!({"system": "Be brief.", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]});
    let messages_later = json!({"system": "Be brief.", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "More"}]});
    assert_eq!(
        key(&cfg, &no_headers(), &messages),
        key(&cfg, &no_headers(), &messages_later)
    );
    let other_system =
        json!({"system": "Be long.", "messages": [{"role": "user", "content": "Hi"}]});
    assert_ne!(
        key(&cfg, &no_headers(), &messages),
        key(&cfg, &no_headers(), &other_system)
    );

    let responses = json!({"instructions": "Be brief.", "input": [
        {"role": "developer", "content": "Use metric."},
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]});
    let responses_later = json!({"instructions": "Be brief.", "input": [
        {"role": "developer", "content": "Use metric."},
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"}]});
    assert!(key(&cfg, &no_headers(), &responses).is_some());
    assert_eq!(
        key(&cfg, &no_headers(), &responses),
        key(&cfg, &no_headers(), &responses_later)
    );
    let string_input = json!({"input": "Hi"});
    assert!(key(&cfg, &no_headers(), &string_input).is_some());
    assert_eq!(key(&cfg, &no_headers(), &json!({"input": []})), None);
}

#[test]
fn only_the_leading_turns_count() {
    let cfg = config(&["leading_messages"], MAX_LEADING_TURNS);
    let turns: Vec<Value> = (0..1000)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("turn {i}")}))
        .collect();
    let short: Vec<Value> = turns[..MAX_LEADING_TURNS].to_vec();
    assert_eq!(
        key(&cfg, &no_headers(), &json!({"messages": turns})),
        key(&cfg, &no_headers(), &json!({"messages": short}))
    );
}

#[test]
fn a_body_that_is_not_json_yields_no_body_key() {
    let cfg = config(&["leading_messages", "user"], 1);
    let key = affinity_key(&cfg, &CanonicalModel::new("m"), &no_headers(), b"not json");
    assert_eq!(key, None);
}
