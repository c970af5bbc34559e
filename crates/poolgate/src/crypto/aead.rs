//! Upstream API keys at rest: AES-256-GCM under a versioned master key, and display masking.
//!
//! A sealed secret is one printable string, safe to store in a text column:
//!
//! ```text
//! pgenc:v1:<key_version>:<nonce>:<ciphertext+tag>
//! ```
//!
//! - `key_version` is the decimal version of the master key that sealed it (canonical form: no
//!   sign, no leading zeros), so rotation tooling can find rows still under an old key
//!   ([`sealed_key_version`]) and [`Sealer::open`] can say "wrong key version" instead of a bare
//!   authentication failure.
//! - `nonce` is 96 random bits from the OS, fresh for every [`Sealer::seal`]; `ciphertext+tag` is
//!   the AES-256-GCM output. Both are base64url without padding.
//! - The associated data is `pgenc:v1:<key_version>:<aad>`, where `aad` is the backend id. So a
//!   sealed key copied to another backend's row, or with its version field edited, fails
//!   authentication. (The version is terminated by `:` and only holds digits, so this encoding is
//!   unambiguous.)
//!
//! The cipher is built from the key for each call rather than kept alive: the expanded AES key is
//! as good as the key, and `aes-gcm` is not built with its `zeroize` feature here, so a long-lived
//! cipher would leave it in memory for the life of the process. Expanding a key costs well under a
//! microsecond, and sealing/opening only happens on admin edits and snapshot builds.

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Every sealed string starts with this; it is also the start of the associated data.
const SEALED_PREFIX: &str = "pgenc:v1:";

/// Domain separation for [`MasterKey::fingerprint`].
const FINGERPRINT_DOMAIN: &[u8] = b"poolgate/master-key-fingerprint/v1";

/// Number of hex characters in a fingerprint (64 bits of the digest).
const FINGERPRINT_HEX_LEN: usize = 16;

/// Standard base64 alphabet; `=` padding accepted but not required when decoding.
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a master key could not be loaded or a secret could not be sealed or opened.
///
/// Messages never contain key material, plaintext or the sealed string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("master key must be base64 of exactly 32 bytes")]
    BadMasterKey,
    #[error("stored secret is malformed")]
    Malformed,
    #[error(
        "stored secret was sealed with key version {found}, but the master key is version {expected}"
    )]
    WrongKeyVersion { found: u32, expected: u32 },
    #[error(
        "stored secret failed authentication (wrong master key, tampered, or copied from another row)"
    )]
    Decrypt,
    /// AES-GCM refused to encrypt (only possible for plaintexts of many gigabytes).
    #[error("secret could not be encrypted")]
    Encrypt,
    /// The operating system's random number generator failed.
    #[error("the operating system random number generator failed")]
    Randomness,
}

// === impl MasterKey ===

/// 32-byte AES-256 master key.
///
/// Zeroized on drop. `Debug` prints only the public fingerprint; there is deliberately no
/// `Display`, `Serialize` or `Clone`.
pub struct MasterKey {
    bytes: SecretBox<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> MasterKey {
        MasterKey {
            bytes: SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| OsRng.fill_bytes(key)),
        }
    }

    /// Parses standard base64 (padding optional) of exactly 32 bytes; surrounding whitespace and
    /// newlines are ignored.
    pub fn from_base64(text: &str) -> Result<MasterKey, CryptoError> {
        let decoded = Zeroizing::new(
            STANDARD_LENIENT
                .decode(text.trim())
                .map_err(|_| CryptoError::BadMasterKey)?,
        );
        let decoded: &[u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadMasterKey)?;
        Ok(MasterKey {
            bytes: SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| *key = *decoded),
        })
    }

    /// Standard base64 (with padding) of the key, e.g. to print once after `generate`.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD_LENIENT.encode(self.bytes.expose_secret()))
    }

    /// Stable public fingerprint, to check "is this the key the database was created with":
    /// the first 16 hex characters of SHA-256(`poolgate/master-key-fingerprint/v1` || key).
    ///
    /// 64 bits of a domain-separated hash reveal nothing usable about a 256-bit key.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::new()
            .chain_update(FINGERPRINT_DOMAIN)
            .chain_update(self.bytes.expose_secret())
            .finalize();
        to_hex(&digest).chars().take(FINGERPRINT_HEX_LEN).collect()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.bytes.expose_secret().into())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(fingerprint={})", self.fingerprint())
    }
}

// === impl Sealer ===

/// A master key together with its version number (incremented by every rotation).
///
/// `Debug` prints the version and fingerprint only.
pub struct Sealer {
    key: MasterKey,
    version: u32,
}

impl Sealer {
    pub fn new(key: MasterKey, version: u32) -> Sealer {
        Sealer { key, version }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The master key's public fingerprint (see [`MasterKey::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint()
    }

    /// Encrypts `plaintext` with AES-256-GCM under a fresh random 96-bit nonce, binding `aad`
    /// (the backend id) and this key version as associated data.
    ///
    /// Output: `pgenc:v1:<key_version>:<base64url nonce>:<base64url ciphertext+tag>`.
    pub fn seal(&self, aad: &str, plaintext: &str) -> Result<String, CryptoError> {
        let mut nonce = [0_u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| CryptoError::Randomness)?;
        self.seal_with_nonce(nonce, aad, plaintext)
    }

    fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &str,
        plaintext: &str,
    ) -> Result<String, CryptoError> {
        // Exact capacity, so appending the tag never reallocates and strands a plaintext copy.
        let mut buffer = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
        buffer.extend_from_slice(plaintext.as_bytes());
        self.key
            .cipher()
            .encrypt_in_place(
                &nonce.into(),
                &associated_data(self.version, aad),
                &mut *buffer,
            )
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(format!(
            "{SEALED_PREFIX}{}:{}:{}",
            self.version,
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(buffer.as_slice()),
        ))
    }

    /// Reverses [`Sealer::seal`].
    ///
    /// Errors: [`CryptoError::Malformed`] if `sealed` is not in the sealed format (or decrypts to
    /// something that is not UTF-8); [`CryptoError::WrongKeyVersion`] if it was sealed under
    /// another key version; [`CryptoError::Decrypt`] if authentication fails (wrong key,
    /// tampering, or a different `aad`).
    pub fn open(&self, aad: &str, sealed: &str) -> Result<SecretString, CryptoError> {
        let parts = SealedParts::parse(sealed)?;
        if parts.version != self.version {
            return Err(CryptoError::WrongKeyVersion {
                found: parts.version,
                expected: self.version,
            });
        }
        let mut buffer = Zeroizing::new(parts.ciphertext);
        self.key
            .cipher()
            .decrypt_in_place(
                &parts.nonce.into(),
                &associated_data(parts.version, aad),
                &mut *buffer,
            )
            .map_err(|_| CryptoError::Decrypt)?;
        let text = std::str::from_utf8(&buffer).map_err(|_| CryptoError::Malformed)?;
        // `From<&str>` copies into an exact-size allocation; `buffer` is zeroized on drop.
        Ok(SecretString::from(text))
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// Key version recorded in a sealed string (for rotation tooling), or
/// [`CryptoError::Malformed`] if the string is not in the sealed format.
pub fn sealed_key_version(sealed: &str) -> Result<u32, CryptoError> {
    SealedParts::parse(sealed).map(|parts| parts.version)
}

// === impl SealedParts ===

/// The decoded fields of a sealed string.
struct SealedParts {
    version: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl SealedParts {
    fn parse(sealed: &str) -> Result<SealedParts, CryptoError> {
        let rest = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(CryptoError::Malformed)?;
        let mut fields = rest.split(':');
        let (Some(version), Some(nonce), Some(ciphertext), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(CryptoError::Malformed);
        };
        let version = parse_version(version).ok_or(CryptoError::Malformed)?;
        let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| CryptoError::Malformed)?
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(ciphertext)
            .map_err(|_| CryptoError::Malformed)?;
        if ciphertext.len() < TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        Ok(SealedParts {
            version,
            nonce,
            ciphertext,
        })
    }
}

/// A canonical decimal `u32`: digits only, no leading zeros (except `0` itself).
fn parse_version(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

fn associated_data(version: u32, aad: &str) -> Vec<u8> {
    format!("{SEALED_PREFIX}{version}:{aad}").into_bytes()
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

// === mask_secret ===

/// Display mask for an API key.
///
/// At least 12 chars: the first 3 and last 4 around an ellipsis (`sk-…abcd`). 6 to 11 chars: an
/// ellipsis and the last 2 (`…cd`). Shorter: `****`. Counts `char`s, so non-ASCII input never
/// splits a character; at most 7 characters of the original are ever shown.
pub fn mask_secret(plaintext: &str) -> String {
    let count = plaintext.chars().count();
    if count >= 12 {
        let head: String = plaintext.chars().take(3).collect();
        let tail: String = plaintext.chars().skip(count - 4).collect();
        format!("{head}…{tail}")
    } else if count >= 6 {
        let tail: String = plaintext.chars().skip(count - 2).collect();
        format!("…{tail}")
    } else {
        "****".to_owned()
    }
}

#[cfg(test)]
mod tests;
