use std::borrow::Cow;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::*;

const KEY: &str = "sk-proj-Q8f2mZ7xK1pL9vT4nB6cR3wY0hJ5dG";

fn scrubbed(key: &str, text: &str) -> String {
    String::from_utf8(KeyScrubber::new(key).scrub(text.as_bytes()).into_owned()).unwrap()
}

#[test]
fn text_without_the_key_is_returned_as_is_without_a_copy() {
    let scrubber = KeyScrubber::new(KEY);
    let text = br#"{"error":{"message":"model not found","type":"invalid_request_error"}}"#;
    assert!(matches!(scrubber.scrub(text), Cow::Borrowed(_)));
    assert!(!scrubber.is_present(text));
    let body = Bytes::from_static(text);
    let same = scrubber.scrub_bytes(body.clone());
    assert_eq!(
        same.as_ptr(),
        body.as_ptr(),
        "no copy when nothing was found"
    );
}

#[test]
fn raw_and_bearer_echoes_are_removed() {
    let text = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {KEY}","headers":{{"authorization":"Bearer {KEY}"}}}}}}"#
    );
    let out = scrubbed(KEY, &text);
    assert!(!out.contains(KEY));
    assert!(out.contains("Incorrect API key provided: [REDACTED]"));
    assert!(out.contains("\"Bearer [REDACTED]\""));
    serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
}

#[test]
fn partial_echoes_of_twelve_characters_or_more_are_removed() {
    let head = &KEY[..20];
    let tail = &KEY[KEY.len() - 12..];
    let out = scrubbed(KEY, &format!("key {head}… and …{tail} end"));
    assert_eq!(out, "key [REDACTED]… and …[REDACTED] end");
    // Eleven characters are left alone (OpenAI's own `sk-proj-****abcd` mask stays readable).
    let eleven = &KEY[5..16];
    assert_eq!(scrubbed(KEY, &format!("x{eleven}x")), format!("x{eleven}x"));
    let masked = format!("sk-proj-********{}", &KEY[KEY.len() - 4..]);
    assert_eq!(scrubbed(KEY, &masked), masked);
}

#[test]
fn basic_auth_forms_are_removed_whatever_the_user() {
    for user in ["", "u", "us", "user", "apikey", "x-api-key-user"] {
        for plain in [format!("{user}:{KEY}"), format!("{KEY}:"), KEY.to_owned()] {
            for encoded in [STANDARD.encode(&plain), URL_SAFE.encode(&plain)] {
                let out = scrubbed(KEY, &format!("Authorization: Basic {encoded}, next"));
                assert_eq!(out, "Authorization: Basic [REDACTED], next", "{plain}");
            }
        }
    }
}

#[test]
fn url_encoded_and_json_escaped_forms_are_removed() {
    let key = r#"k3y/with+sp"ecial\chars=2024~ok"#;
    let upper = "k3y%2Fwith%2Bsp%22ecial%5Cchars%3D2024~ok";
    let lower = "k3y%2fwith%2bsp%22ecial%5cchars%3d2024~ok";
    let json = serde_json::to_string(key).unwrap();
    let json_slash = json.replace('/', "\\/");
    for form in [
        upper,
        lower,
        json.trim_matches('"'),
        json_slash.trim_matches('"'),
    ] {
        let out = scrubbed(key, &format!("before {form} after"));
        assert_eq!(out, "before [REDACTED] after", "{form}");
    }
    let unicode = "clé-secrète-0123456789";
    let escaped = r"cl\u00e9-secr\u00e8te-0123456789";
    assert_eq!(scrubbed(unicode, escaped), "[REDACTED]");
}

#[test]
fn placeholder_keys_are_not_scrubbed_and_short_keys_only_whole() {
    assert_eq!(
        scrubbed("ollama", "try `ollama pull llama3`"),
        "try `ollama pull llama3`"
    );
    assert_eq!(scrubbed("EMPTY", "EMPTY"), "EMPTY");
    // 9 characters: the whole key, not its parts.
    assert_eq!(
        scrubbed("abcd12345", "id abcd12345 / abcd1234"),
        "id [REDACTED] / abcd1234"
    );
}

#[test]
fn header_values_are_scrubbed() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-echo",
        HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    KeyScrubber::new(KEY).scrub_headers(&mut headers);
    assert_eq!(headers["x-echo"], "Bearer [REDACTED]");
    assert_eq!(headers["content-type"], "application/json");
}

#[test]
fn adjacent_and_repeated_echoes_become_one_redaction_each() {
    let out = scrubbed(KEY, &format!("{KEY}{KEY} and {KEY}"));
    assert_eq!(out, "[REDACTED] and [REDACTED]");
}

/// A key as upstreams issue them: a prefix and random URL-safe characters.
fn key_strategy() -> impl Strategy<Value = String> {
    ("(sk-|sk-ant-api03-|AIza|)", "[A-Za-z0-9_\\-]{14,80}").prop_map(|(p, r)| format!("{p}{r}"))
}

/// The forms an upstream might echo the key in.
fn echo(key: &str, form: u8, user: &str) -> String {
    match form % 6 {
        0 => key.to_owned(),
        1 => format!("Bearer {key}"),
        2 => format!("Basic {}", STANDARD.encode(format!("{user}:{key}"))),
        3 => format!("Basic {}", STANDARD.encode(format!("{key}:"))),
        4 => percent_encode(key, (form / 6).is_multiple_of(2)),
        _ => serde_json::to_string(key).unwrap(),
    }
}

proptest! {
    #[test]
    fn no_form_of_the_key_survives(
        key in key_strategy(),
        before in "\\PC{0,60}",
        after in "\\PC{0,60}",
        user in "[a-z0-9]{0,9}",
        form in any::<u8>(),
    ) {
        let echoed = echo(&key, form, &user);
        let text = format!("{before}{echoed}{after}");
        let scrubber = KeyScrubber::new(&key);
        prop_assert!(scrubber.is_present(text.as_bytes()));
        let out = scrubber.scrub(text.as_bytes());
        let out = String::from_utf8_lossy(&out);
        prop_assert!(!out.contains(&key), "{out}");
        prop_assert!(!out.contains(&echoed), "{out}");
        for window in key.as_bytes().windows(PARTIAL_ECHO_LEN) {
            let window = std::str::from_utf8(window).unwrap();
            prop_assert!(!out.contains(window), "{window} left in {out}");
        }
    }

    #[test]
    fn scrubbing_never_panics_and_leaves_keyless_text_alone(
        key in "\\PC{0,40}",
        text in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let scrubber = KeyScrubber::new(&key);
        let out = scrubber.scrub(&text);
        if !scrubber.is_present(&text) {
            prop_assert_eq!(out.as_ref(), text.as_slice());
        }
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&text) {
            headers.insert("x-any", value);
            scrubber.scrub_headers(&mut headers);
        }
    }
}
