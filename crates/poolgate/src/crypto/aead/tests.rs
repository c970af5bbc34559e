//! Tests of `aead`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use secrecy::ExposeSecret;

use super::*;

/// Key `00 01 .. 1f`, as standard base64.
const KAT_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// `sk-ant-api03-héllo-wörld` sealed with [`KAT_KEY`], version 7, aad `backend-42` and nonce
/// `64 65 .. 6f`, computed independently with Python's `cryptography` AESGCM.
const KAT_SEALED: &str =
    "pgenc:v1:7:ZGVmZ2hpamtsbW5v:O3DzBxede_9OC2_b9w2pVC6uaSf8r0UAy7WrdMbTaklQjaNu3GHXKPzZ";
const KAT_PLAINTEXT: &str = "sk-ant-api03-héllo-wörld";

fn sealer(version: u32) -> Sealer {
    Sealer::new(MasterKey::generate(), version)
}

fn kat_sealer() -> Sealer {
    Sealer::new(MasterKey::from_base64(KAT_KEY).unwrap(), 7)
}

fn reassemble(version: &str, nonce: &[u8], ciphertext: &[u8]) -> String {
    format!(
        "pgenc:v1:{version}:{}:{}",
        URL_SAFE_NO_PAD.encode(nonce),
        URL_SAFE_NO_PAD.encode(ciphertext)
    )
}

fn key_bytes(key: &MasterKey) -> [u8; KEY_LEN] {
    *key.bytes.expose_secret()
}

// --- seal / open ---

#[test]
fn round_trip() {
    let s = sealer(1);
    let sealed = s.seal("backend-1", "sk-live-abcdef123456").unwrap();
    let opened = s.open("backend-1", &sealed).unwrap();
    assert_eq!(opened.expose_secret(), "sk-live-abcdef123456");
}

#[test]
fn round_trip_empty_plaintext_and_aad() {
    let s = sealer(1);
    let sealed = s.seal("", "").unwrap();
    assert_eq!(s.open("", &sealed).unwrap().expose_secret(), "");
}

#[test]
fn known_answer_matches_independent_implementation() {
    let s = kat_sealer();
    let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 100 + i as u8);
    assert_eq!(
        s.seal_with_nonce(nonce, "backend-42", KAT_PLAINTEXT)
            .unwrap(),
        KAT_SEALED
    );
    assert_eq!(
        s.open("backend-42", KAT_SEALED).unwrap().expose_secret(),
        KAT_PLAINTEXT
    );
}

#[test]
fn sealed_format_and_version() {
    let s = sealer(42);
    let sealed = s.seal("b", "secret").unwrap();
    assert!(sealed.starts_with("pgenc:v1:42:"), "{sealed}");
    assert_eq!(sealed.split(':').count(), 5);
    assert!(sealed.is_ascii());
    let parts = SealedParts::parse(&sealed).unwrap();
    assert_eq!(parts.version, 42);
    assert_eq!(parts.ciphertext.len(), "secret".len() + TAG_LEN);
    assert_eq!(sealed_key_version(&sealed), Ok(42));
    assert_eq!(sealed_key_version(KAT_SEALED), Ok(7));
}

#[test]
fn two_seals_differ() {
    let s = sealer(1);
    let a = s.seal("b", "same plaintext").unwrap();
    let b = s.seal("b", "same plaintext").unwrap();
    assert_ne!(a, b);
    assert_ne!(
        SealedParts::parse(&a).unwrap().nonce,
        SealedParts::parse(&b).unwrap().nonce
    );
}

#[test]
fn plaintext_not_in_sealed_string() {
    let s = sealer(1);
    let plaintext = "sk-proj-VERYSECRETVALUE0123456789";
    let sealed = s.seal("b", plaintext).unwrap();
    assert!(!sealed.contains(plaintext));
    assert!(!sealed.contains("VERYSECRET"));
    for encoded in [
        STANDARD.encode(plaintext),
        URL_SAFE.encode(plaintext),
        URL_SAFE_NO_PAD.encode(plaintext),
    ] {
        assert!(!sealed.contains(&encoded[..16]));
    }
}

#[test]
fn tampering_any_byte_fails_with_decrypt() {
    let s = kat_sealer();
    let parts = SealedParts::parse(KAT_SEALED).unwrap();
    for i in 0..NONCE_LEN {
        let mut nonce = parts.nonce;
        nonce[i] ^= 0x01;
        let tampered = reassemble("7", &nonce, &parts.ciphertext);
        assert_eq!(
            s.open("backend-42", &tampered).unwrap_err(),
            CryptoError::Decrypt,
            "nonce byte {i}"
        );
    }
    for i in 0..parts.ciphertext.len() {
        let mut ciphertext = parts.ciphertext.clone();
        ciphertext[i] ^= 0x80;
        let tampered = reassemble("7", &parts.nonce, &ciphertext);
        assert_eq!(
            s.open("backend-42", &tampered).unwrap_err(),
            CryptoError::Decrypt,
            "ciphertext byte {i}"
        );
    }
}

#[test]
fn truncated_or_extended_ciphertext_fails() {
    let s = kat_sealer();
    let parts = SealedParts::parse(KAT_SEALED).unwrap();
    let shorter = &parts.ciphertext[..parts.ciphertext.len() - 1];
    let mut longer = parts.ciphertext.clone();
    longer.push(0);
    for ciphertext in [shorter, &longer[..]] {
        let tampered = reassemble("7", &parts.nonce, ciphertext);
        assert_eq!(
            s.open("backend-42", &tampered).unwrap_err(),
            CryptoError::Decrypt
        );
    }
}

#[test]
fn copied_to_another_aad_fails() {
    let s = sealer(1);
    let sealed = s.seal("backend-1", "sk-abc").unwrap();
    for other in ["backend-2", "backend-1 ", "", "Backend-1", "backend-10"] {
        assert_eq!(s.open(other, &sealed).unwrap_err(), CryptoError::Decrypt);
    }
}

#[test]
fn wrong_master_key_fails() {
    let sealed = sealer(1).seal("b", "sk-abc").unwrap();
    assert_eq!(
        sealer(1).open("b", &sealed).unwrap_err(),
        CryptoError::Decrypt
    );
}

#[test]
fn wrong_version_is_reported() {
    let sealed = sealer(1).seal("b", "sk-abc").unwrap();
    let err = sealer(2).open("b", &sealed).unwrap_err();
    assert_eq!(
        err,
        CryptoError::WrongKeyVersion {
            found: 1,
            expected: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "stored secret was sealed with key version 1, but the master key is version 2"
    );
}

#[test]
fn editing_the_version_field_fails_authentication() {
    let key = MasterKey::from_base64(KAT_KEY).unwrap();
    let v8 = Sealer::new(key, 8);
    let edited = KAT_SEALED.replacen(":7:", ":8:", 1);
    assert_eq!(
        v8.open("backend-42", &edited).unwrap_err(),
        CryptoError::Decrypt
    );
}

#[test]
fn malformed_strings_are_rejected() {
    let s = kat_sealer();
    let good = SealedParts::parse(KAT_SEALED).unwrap();
    let nonce = URL_SAFE_NO_PAD.encode(good.nonce);
    let ct = URL_SAFE_NO_PAD.encode(&good.ciphertext);
    let cases = [
        String::new(),
        "pgenc".into(),
        "pgenc:v1:".into(),
        "pgenc:v1:7".into(),
        "pgenc:v1:7:".into(),
        "pgenc:v1:7::".into(),
        format!("pgenc:v1:7:{nonce}"),
        format!("pgenc:v1:7:{nonce}:"),
        format!("pgenc:v1:7:{nonce}:{ct}:"),
        format!("pgenc:v1:7:{nonce}:{ct}:extra"),
        format!("pgenc:v2:7:{nonce}:{ct}"),
        format!("PGENC:v1:7:{nonce}:{ct}"),
        format!(" pgenc:v1:7:{nonce}:{ct}"),
        format!("pgenc:v1:7:{nonce}:{ct} "),
        format!("pgenc:v1:7:{nonce}:{ct}\n"),
        format!("pgenc:v1::{nonce}:{ct}"),
        format!("pgenc:v1:+7:{nonce}:{ct}"),
        format!("pgenc:v1:-7:{nonce}:{ct}"),
        format!("pgenc:v1:07:{nonce}:{ct}"),
        format!("pgenc:v1:7.0:{nonce}:{ct}"),
        format!("pgenc:v1:4294967296:{nonce}:{ct}"),
        format!("pgenc:v1:٧:{nonce}:{ct}"),
        format!("pgenc:v1:7:{nonce}=:{ct}"),
        format!("pgenc:v1:7:{nonce}:{ct}="),
        // Standard (not URL-safe) alphabet.
        format!("pgenc:v1:7:{}:{ct}", STANDARD.encode([0xfb_u8; NONCE_LEN])),
        format!("pgenc:v1:7:{}:{ct}", &nonce[..nonce.len() - 1]),
        format!("pgenc:v1:7:{}:{ct}", URL_SAFE_NO_PAD.encode([0_u8; 11])),
        format!("pgenc:v1:7:{}:{ct}", URL_SAFE_NO_PAD.encode([0_u8; 13])),
        format!("pgenc:v1:7:{nonce}:{}", URL_SAFE_NO_PAD.encode([0_u8; 15])),
        format!("pgenc:v1:7:{nonce}:{}", &ct[..ct.len() - 1]),
        format!("pgenc:v1:7:{nonce}:{ct}é"),
        format!("pgenc:v1:7:{nonce}:{}", ct.replace('_', "/")),
        "pgenc:v1:7:é:é".into(),
        "pgenc:v1:7:::".into(),
        "\u{0}".into(),
    ];
    for case in &cases {
        assert_eq!(
            s.open("backend-42", case).unwrap_err(),
            CryptoError::Malformed,
            "{case:?}"
        );
        assert_eq!(
            sealed_key_version(case),
            Err(CryptoError::Malformed),
            "{case:?}"
        );
    }
}

#[test]
fn version_zero_and_max_round_trip() {
    for version in [0, u32::MAX] {
        let s = sealer(version);
        let sealed = s.seal("b", "x").unwrap();
        assert_eq!(sealed_key_version(&sealed), Ok(version));
        assert_eq!(s.open("b", &sealed).unwrap().expose_secret(), "x");
    }
}

// --- master key ---

#[test]
fn master_key_base64_round_trip() {
    let key = MasterKey::generate();
    let text = key.to_base64();
    assert_eq!(text.expose_secret().len(), 44);
    let again = MasterKey::from_base64(text.expose_secret()).unwrap();
    assert_eq!(key_bytes(&again), key_bytes(&key));
    assert_eq!(again.fingerprint(), key.fingerprint());
}

#[test]
fn master_key_from_base64_trims_and_accepts_missing_padding() {
    let expected: [u8; KEY_LEN] = std::array::from_fn(|i| i as u8);
    for text in [
        KAT_KEY.to_owned(),
        format!("{KAT_KEY}\n"),
        format!("  {KAT_KEY}\r\n"),
        format!("\t{KAT_KEY} "),
        KAT_KEY.trim_end_matches('=').to_owned(),
    ] {
        let key = MasterKey::from_base64(&text).unwrap();
        assert_eq!(key_bytes(&key), expected, "{text:?}");
    }
}

#[test]
fn master_key_rejects_bad_input_without_echoing_it() {
    let cases = [
        String::new(),
        "   ".into(),
        STANDARD.encode([7_u8; 31]),
        STANDARD.encode([7_u8; 33]),
        STANDARD.encode([7_u8; 64]),
        URL_SAFE.encode([0xfb_u8; 32]),
        to_hex(&[7_u8; 32]),
        format!("{KAT_KEY}{KAT_KEY}"),
        KAT_KEY.replacen('A', "!", 1),
        KAT_KEY.replacen('A', "é", 1),
        format!("{} {}", &KAT_KEY[..20], &KAT_KEY[20..]),
    ];
    for text in &cases {
        let err = MasterKey::from_base64(text).unwrap_err();
        assert_eq!(err, CryptoError::BadMasterKey, "{text:?}");
        assert_eq!(
            err.to_string(),
            "master key must be base64 of exactly 32 bytes"
        );
    }
}

#[test]
fn fingerprint_known_answers() {
    let zeros = MasterKey::from_base64(&STANDARD.encode([0_u8; 32])).unwrap();
    assert_eq!(zeros.fingerprint(), "bd27d97eb76020af");
    let counting = MasterKey::from_base64(KAT_KEY).unwrap();
    assert_eq!(counting.fingerprint(), "cd3d399ff2f578fd");
}

#[test]
fn fingerprint_stable_and_distinct() {
    let key = MasterKey::generate();
    let fp = key.fingerprint();
    assert_eq!(fp.len(), FINGERPRINT_HEX_LEN);
    assert!(fp
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(key.fingerprint(), fp);
    assert_ne!(MasterKey::generate().fingerprint(), fp);
    let s = Sealer::new(key, 3);
    assert_eq!(s.fingerprint(), fp);
    assert_eq!(s.version(), 3);
}

#[test]
fn debug_does_not_reveal_the_key() {
    let key = MasterKey::generate();
    let bytes = key_bytes(&key);
    let fp = key.fingerprint();
    let forbidden = [
        STANDARD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        to_hex(&bytes),
        format!("{bytes:?}"),
        format!("{:?}", &bytes[..4])
            .trim_end_matches(']')
            .to_owned(),
        STANDARD.encode(&bytes[..12]),
    ];
    let key_debug = format!("{key:?}");
    assert_eq!(key_debug, format!("MasterKey(fingerprint={fp})"));
    let sealer_debug = format!("{:?}", Sealer::new(key, 5));
    assert_eq!(
        sealer_debug,
        format!("Sealer {{ version: 5, fingerprint: \"{fp}\" }}")
    );
    let sealer_pretty = format!(
        "{:#?}",
        Sealer::new(MasterKey::from_base64(KAT_KEY).unwrap(), 1)
    );
    assert!(!sealer_pretty.contains("AAECAwQF"));
    for shown in [&key_debug, &sealer_debug] {
        for secret in &forbidden {
            assert!(
                !shown.contains(secret.as_str()),
                "{shown} contains {secret}"
            );
        }
    }
}

#[test]
fn error_messages_carry_no_secret_material() {
    let s = kat_sealer();
    let errors = [
        s.open("backend-1", KAT_SEALED).unwrap_err(),
        s.open("backend-42", "pgenc:v1:7:x:y").unwrap_err(),
        sealer(9).open("backend-42", KAT_SEALED).unwrap_err(),
        MasterKey::from_base64("c2stc2VjcmV0").unwrap_err(),
    ];
    for err in errors {
        let shown = format!("{err} {err:?}");
        for secret in [
            KAT_KEY,
            KAT_PLAINTEXT,
            KAT_SEALED,
            "c2stc2VjcmV0",
            "backend",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}

// --- mask_secret ---

#[test]
fn mask_secret_cases() {
    let cases = [
        ("", "****"),
        ("a", "****"),
        ("abcde", "****"),
        ("abcdef", "…ef"),
        ("abcdefghijk", "…jk"),
        ("abcdefghijkl", "abc…ijkl"),
        ("sk-0123456789abcd", "sk-…abcd"),
        ("sk-ant-api03-xxxxxxxxxxxxxxxxxxxxxxxxWXYZ", "sk-…WXYZ"),
        ("ééééé", "****"),
        ("éééééé", "…éé"),
        ("日本語のキーです秘密鍵一二三", "日本語…鍵一二三"),
        ("🔑🔑🔑abcdefgh🗝", "🔑🔑🔑…fgh🗝"),
    ];
    for (input, expected) in cases {
        assert_eq!(mask_secret(input), expected, "{input:?}");
    }
}

// --- properties ---

/// Splits a mask into the original characters it shows (head, tail), by its shape: `****`,
/// `…` + 2 chars, or 3 chars + `…` + 4 chars (the original may itself contain `…`).
fn shown_chars(mask: &str) -> (String, String) {
    let chars: Vec<char> = mask.chars().collect();
    match chars.len() {
        4 => {
            assert_eq!(mask, "****");
            (String::new(), String::new())
        }
        3 => {
            assert_eq!(chars[0], '…');
            (String::new(), chars[1..].iter().collect())
        }
        8 => {
            assert_eq!(chars[3], '…');
            (chars[..3].iter().collect(), chars[4..].iter().collect())
        }
        n => panic!("unexpected mask length {n}: {mask:?}"),
    }
}

proptest! {
    #[test]
    fn prop_round_trip(plaintext in any::<String>(), aad in any::<String>(), version in any::<u32>()) {
        let s = sealer(version);
        let sealed = s.seal(&aad, &plaintext).unwrap();
        prop_assert_eq!(sealed_key_version(&sealed), Ok(version));
        let opened = s.open(&aad, &sealed).unwrap();
        prop_assert_eq!(opened.expose_secret(), plaintext.as_str());
    }

    #[test]
    fn prop_flipping_any_ciphertext_bit_fails(
        plaintext in any::<String>(),
        aad in any::<String>(),
        bit in any::<prop::sample::Index>(),
    ) {
        let s = sealer(1);
        let sealed = s.seal(&aad, &plaintext).unwrap();
        let parts = SealedParts::parse(&sealed).unwrap();
        let mut ciphertext = parts.ciphertext.clone();
        let bit = bit.index(ciphertext.len() * 8);
        ciphertext[bit / 8] ^= 1 << (bit % 8);
        let tampered = reassemble("1", &parts.nonce, &ciphertext);
        prop_assert_eq!(s.open(&aad, &tampered).unwrap_err(), CryptoError::Decrypt);
    }

    #[test]
    fn prop_flipping_any_nonce_bit_fails(plaintext in any::<String>(), bit in 0..NONCE_LEN * 8) {
        let s = sealer(1);
        let sealed = s.seal("b", &plaintext).unwrap();
        let parts = SealedParts::parse(&sealed).unwrap();
        let mut nonce = parts.nonce;
        nonce[bit / 8] ^= 1 << (bit % 8);
        let tampered = reassemble("1", &nonce, &parts.ciphertext);
        prop_assert_eq!(s.open("b", &tampered).unwrap_err(), CryptoError::Decrypt);
    }

    #[test]
    fn prop_open_never_panics(garbage in any::<String>(), tail in "[A-Za-z0-9_:=+/-]{0,80}") {
        let s = sealer(1);
        prop_assert!(s.open("b", &garbage).is_err());
        let _ = sealed_key_version(&garbage);
        let prefixed = format!("pgenc:v1:{tail}");
        prop_assert!(s.open("b", &prefixed).is_err());
        let _ = sealed_key_version(&prefixed);
    }

    #[test]
    fn prop_master_key_parse_never_panics(text in any::<String>()) {
        let _ = MasterKey::from_base64(&text);
    }

    #[test]
    fn prop_mask_secret_shows_at_most_seven_chars(plaintext in any::<String>()) {
        let mask = mask_secret(&plaintext);
        let (head, tail) = shown_chars(&mask);
        prop_assert!(head.chars().count() + tail.chars().count() <= 7);
        prop_assert!(plaintext.starts_with(&head));
        prop_assert!(plaintext.ends_with(&tail));
    }
}
