//! Secrets handling: upstream API keys sealed at rest, and poolgate's own client keys and admin token.
//!
//! - [`aead`] owns the master key and the sealed format of upstream API keys
//!   (`pgenc:v1:<key_version>:<nonce>:<ciphertext+tag>`, AES-256-GCM, the backend id as
//!   associated data), plus [`mask_secret`] for showing a key without revealing it.
//! - [`client_key`] owns poolgate client keys (`pgk-<id>-<secret>`, stored as the public id and
//!   SHA-256 of the secret, checked in constant time) and the admin bearer token.
//!
//! Nothing here logs, and no error message carries secret material. Plaintext secrets leave this
//! module only as [`secrecy::SecretString`].

pub mod aead;
pub mod client_key;

pub use aead::{mask_secret, sealed_key_version, CryptoError, MasterKey, Sealer};
pub use client_key::{
    generate_admin_token, generate_client_key, hash_secret, parse_client_key, token_matches,
    verify_secret, NewClientKey, TokenDigest,
};
