//! Poolgate client keys (`pgk-<id>-<secret>`) and the admin token: generation, parsing, hashing
//! and constant-time checks.
//!
//! A client key is `pgk-` + a 12-char public id (`[a-z0-9]`) + `-` + a 32-char secret
//! (`[A-Za-z0-9]`, about 190 bits from the OS RNG). Only the id and SHA-256 of the secret are
//! stored: the id finds the row, the hash is compared in constant time. A fast unsalted hash is
//! enough because the secret is random and long; there is nothing to brute-force.

use rand::distributions::{Alphanumeric, Distribution};
use rand::rngs::OsRng;
use rand::Rng;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const CLIENT_KEY_PREFIX: &str = "pgk-";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
/// `pgk-` + id + `-` + secret.
const CLIENT_KEY_LEN: usize = CLIENT_KEY_PREFIX.len() + ID_LEN + 1 + SECRET_LEN;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

const ADMIN_TOKEN_PREFIX: &str = "pga-";
const ADMIN_TOKEN_SECRET_LEN: usize = 40;

/// A freshly generated client key. `plaintext` is shown to the user once and never stored;
/// store `id` and `secret_hash`, and show `display_prefix` afterwards.
#[derive(Debug)]
pub struct NewClientKey {
    /// Public id: 12 chars of `[a-z0-9]`.
    pub id: String,
    /// The whole key, `pgk-<id>-<secret>`.
    pub plaintext: SecretString,
    /// SHA-256 of the secret part (see [`hash_secret`]).
    pub secret_hash: [u8; 32],
    /// `pgk-<id>-…`, safe to show.
    pub display_prefix: String,
}

/// Generates a client key from the OS RNG.
pub fn generate_client_key() -> NewClientKey {
    let mut id = String::with_capacity(ID_LEN);
    for _ in 0..ID_LEN {
        id.push(char::from(
            ID_ALPHABET[OsRng.gen_range(0..ID_ALPHABET.len())],
        ));
    }
    // Exact capacity: the secret is never left behind in a reallocated buffer.
    let mut plaintext = String::with_capacity(CLIENT_KEY_LEN);
    plaintext.push_str(CLIENT_KEY_PREFIX);
    plaintext.push_str(&id);
    plaintext.push('-');
    let secret_start = plaintext.len();
    push_alphanumeric(&mut plaintext, SECRET_LEN);
    let (_, secret) = plaintext.split_at(secret_start);
    let secret_hash = hash_secret(secret);
    let display_prefix = format!("{CLIENT_KEY_PREFIX}{id}-…");
    NewClientKey {
        id,
        plaintext: SecretString::from(plaintext),
        secret_hash,
        display_prefix,
    }
}

/// Splits a presented key into `(id, secret)` if it has exactly the client key shape; `None`
/// otherwise. Never panics.
pub fn parse_client_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(CLIENT_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let id_ok = id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (id_ok && secret_ok).then_some((id, secret))
}

/// SHA-256 of a client key's secret part, as stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time comparison of SHA-256(`secret`) with `stored_hash`; `false` if `stored_hash` is
/// not 32 bytes.
pub fn verify_secret(secret: &str, stored_hash: &[u8]) -> bool {
    if stored_hash.len() != 32 {
        return false;
    }
    hash_secret(secret).ct_eq(stored_hash).into()
}

/// Constant-time check of a presented bearer token against the configured admin token.
///
/// Compares SHA-256 digests, so neither the content nor the length of `expected` leaks through
/// timing. An empty `expected` never matches: a missing token must not open the admin API.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    TokenDigest::of(expected).matches(presented)
}

/// A token's SHA-256, computed once (the admin token's, when the data plane is built), so that
/// each check digests only the presented token (`None` for an empty token, which nothing
/// matches), and whether the token has a client key's shape.
#[derive(Clone)]
pub struct TokenDigest {
    digest: Option<[u8; 32]>,
    client_key_shaped: bool,
}

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        TokenDigest {
            digest: (!token.is_empty()).then(|| Sha256::digest(token.as_bytes()).into()),
            client_key_shaped: parse_client_key(token).is_some(),
        }
    }

    /// [`token_matches`] against the token this digest is of.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = Sha256::digest(presented.as_bytes());
        self.digest
            .as_ref()
            .is_some_and(|wanted| presented.as_slice().ct_eq(wanted).into())
    }

    /// Whether the token has a client key's shape (`pgk-<id>-<secret>`): when it has not, a
    /// presented client key cannot be it and needs no digest for that check.
    pub fn is_client_key_shaped(&self) -> bool {
        self.client_key_shaped
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// A fresh random admin token: `pga-` + 40 chars of `[A-Za-z0-9]`.
pub fn generate_admin_token() -> SecretString {
    let mut token = String::with_capacity(ADMIN_TOKEN_PREFIX.len() + ADMIN_TOKEN_SECRET_LEN);
    token.push_str(ADMIN_TOKEN_PREFIX);
    push_alphanumeric(&mut token, ADMIN_TOKEN_SECRET_LEN);
    SecretString::from(token)
}

/// Appends `len` uniformly random `[A-Za-z0-9]` chars from the OS RNG.
fn push_alphanumeric(out: &mut String, len: usize) {
    for byte in Alphanumeric.sample_iter(OsRng).take(len) {
        out.push(char::from(byte));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn generate_parse_verify_round_trip() {
        let key = generate_client_key();
        let plaintext = key.plaintext.expose_secret();
        assert_eq!(plaintext.len(), CLIENT_KEY_LEN);
        let (id, secret) = parse_client_key(plaintext).unwrap();
        assert_eq!(id, key.id);
        assert_eq!(secret.len(), SECRET_LEN);
        assert_eq!(plaintext, format!("pgk-{id}-{secret}"));
        assert_eq!(hash_secret(secret), key.secret_hash);
        assert!(verify_secret(secret, &key.secret_hash));
        assert_eq!(key.display_prefix, format!("pgk-{id}-…"));
        assert!(!key.display_prefix.contains(secret));
    }

    #[test]
    fn generated_keys_have_the_documented_alphabets() {
        for _ in 0..50 {
            let key = generate_client_key();
            assert_eq!(key.id.len(), ID_LEN);
            assert!(key
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            let (_, secret) = parse_client_key(key.plaintext.expose_secret()).unwrap();
            assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate_client_key();
        let b = generate_client_key();
        assert_ne!(a.id, b.id);
        assert_ne!(a.plaintext.expose_secret(), b.plaintext.expose_secret());
        assert_ne!(a.secret_hash, b.secret_hash);
    }

    #[test]
    fn debug_of_new_key_hides_the_secret() {
        let key = generate_client_key();
        let (_, secret) = parse_client_key(key.plaintext.expose_secret()).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains(secret));
        assert!(shown.contains(&key.id));
    }

    #[test]
    fn hash_secret_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let expected: [u8; 32] = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(hash_secret("abc"), expected);
    }

    #[test]
    fn verify_rejects_wrong_secret() {
        let key = generate_client_key();
        let (_, secret) = parse_client_key(key.plaintext.expose_secret()).unwrap();
        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if secret.starts_with('a') { "b" } else { "a" });
        assert!(!verify_secret(&wrong, &key.secret_hash));
        assert!(!verify_secret("", &key.secret_hash));
        assert!(!verify_secret(
            key.plaintext.expose_secret(),
            &key.secret_hash
        ));
        assert!(!verify_secret(&secret[..SECRET_LEN - 1], &key.secret_hash));
    }

    #[test]
    fn verify_rejects_wrong_length_hash() {
        let secret = "0123456789abcdefABCDEF0123456789";
        let hash = hash_secret(secret);
        assert!(verify_secret(secret, &hash));
        assert!(!verify_secret(secret, &hash[..31]));
        assert!(!verify_secret(secret, &[]));
        let mut longer = hash.to_vec();
        longer.push(0);
        assert!(!verify_secret(secret, &longer));
        let mut doubled = hash.to_vec();
        doubled.extend_from_slice(&hash);
        assert!(!verify_secret(secret, &doubled));
    }

    #[test]
    fn parse_accepts_exact_shape() {
        let key = "pgk-abcdefghij01-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
        assert_eq!(
            parse_client_key(key),
            Some(("abcdefghij01", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"))
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        let id = "abcdefghij01";
        let secret = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
        let cases = [
            String::new(),
            "pgk-".into(),
            "pgk--".into(),
            "pgk-abc-def".into(),
            format!("{id}-{secret}"),
            format!("PGK-{id}-{secret}"),
            format!("pga-{id}-{secret}"),
            format!("pgk_{id}_{secret}"),
            format!("pgk-{id}{secret}"),
            format!("pgk-{id}--{secret}"),
            format!("pgk-{}-{secret}", id.to_uppercase()),
            format!("pgk-{}-{secret}", &id[..11]),
            format!("pgk-{id}a-{secret}"),
            format!("pgk-{id}-{}", &secret[..31]),
            format!("pgk-{id}-{secret}A"),
            format!("pgk-{id}-{secret}-"),
            format!("pgk-{id}-{}-{}", &secret[..16], &secret[16..]),
            format!("pgk-{id}-{}_", &secret[..31]),
            format!("pgk-{id}-{}é", &secret[..30]),
            format!("pgk-abcdefghij0é-{}", &secret[1..]),
            format!(" pgk-{id}-{secret}"),
            format!("pgk-{id}-{secret} "),
            format!("pgk-{id}-{secret}\n"),
            format!("Bearer pgk-{id}-{secret}"),
            format!("pgk-{id}-{}", "\u{0}".repeat(32)),
        ];
        for case in &cases {
            assert_eq!(parse_client_key(case), None, "{case:?}");
        }
    }

    #[test]
    fn token_matches_cases() {
        let token = generate_admin_token();
        let token = token.expose_secret();
        assert!(token_matches(token, token));
        assert!(!token_matches("", token));
        assert!(!token_matches(&token[..token.len() - 1], token));
        assert!(!token_matches(&format!("{token}x"), token));
        assert!(!token_matches(&token.to_uppercase(), token));
        assert!(!token_matches(&format!("Bearer {token}"), token));
        // A missing admin token never matches, not even an empty presentation.
        assert!(!token_matches("", ""));
        assert!(!token_matches("anything", ""));
        assert!(!TokenDigest::of(token).is_client_key_shaped());
        let key = generate_client_key();
        let shaped = TokenDigest::of(key.plaintext.expose_secret());
        assert!(shaped.is_client_key_shaped());
        assert!(shaped.matches(key.plaintext.expose_secret()));
    }

    #[test]
    fn admin_token_shape() {
        let a = generate_admin_token();
        let b = generate_admin_token();
        let a = a.expose_secret();
        assert_eq!(a.len(), 44);
        let rest = a.strip_prefix("pga-").unwrap();
        assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, b.expose_secret());
    }

    proptest! {
        #[test]
        fn prop_parse_never_panics(input in any::<String>(), tail in "[A-Za-z0-9é_-]{0,60}") {
            if let Some((id, secret)) = parse_client_key(&input) {
                prop_assert_eq!(format!("pgk-{id}-{secret}"), input.clone());
            }
            let prefixed = format!("pgk-{tail}");
            if let Some((id, secret)) = parse_client_key(&prefixed) {
                prop_assert_eq!(format!("pgk-{id}-{secret}"), prefixed.clone());
                prop_assert_eq!(id.len(), ID_LEN);
                prop_assert_eq!(secret.len(), SECRET_LEN);
            }
        }

        #[test]
        fn prop_parse_accepts_every_valid_key(id in "[a-z0-9]{12}", secret in "[A-Za-z0-9]{32}") {
            let key = format!("pgk-{id}-{secret}");
            prop_assert_eq!(parse_client_key(&key), Some((id.as_str(), secret.as_str())));
        }

        #[test]
        fn prop_verify_only_accepts_the_hashed_secret(a in any::<String>(), b in any::<String>()) {
            prop_assert!(verify_secret(&a, &hash_secret(&a)));
            prop_assert_eq!(verify_secret(&b, &hash_secret(&a)), a == b);
        }

        #[test]
        fn prop_token_matches_is_equality(presented in any::<String>(), expected in any::<String>()) {
            prop_assert_eq!(
                token_matches(&presented, &expected),
                presented == expected && !expected.is_empty()
            );
            prop_assert_eq!(token_matches(&expected, &expected), !expected.is_empty());
        }
    }
}
