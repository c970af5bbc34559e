//! Fixtures for unit tests across the crate.

use super::*;

/// An enabled OpenAI-format backend named `name` in `primary`, serving `gpt-4o` as
/// `gpt-4o-2024-08-06`, with a placeholder sealed key and default health.
pub fn backend_record(name: &str) -> BackendRecord {
    let mut model_mappings = ModelMappings::new();
    model_mappings.insert(
        CanonicalModel::new("gpt-4o"),
        ModelMapping {
            upstream_model: UpstreamModel::new("gpt-4o-2024-08-06"),
        },
    );
    BackendRecord {
        id: BackendId::generate(),
        name: name.to_owned(),
        label: "Label".to_owned(),
        api_base_url: "http://127.0.0.1:9/v1".to_owned(),
        api_key_sealed: "pgenc:v1:1:nonce:ct".to_owned(),
        api_key_mask: "sk-…abcd".to_owned(),
        api: ApiKind::Openai,
        timeout_seconds: 30,
        rpm_limit: 60,
        weight: 1,
        pool: PoolName::new("primary"),
        enabled: true,
        model_mappings,
        source: Source::Api,
        metadata: serde_json::json!({"team": "a"}),
        health: PersistedHealth::default(),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        responses: None,
        api_version: None,
        tpm_limit: 1_000,
        http_version: HttpVersion::Auto,
    }
}

/// A valid backend input named `name` (key `sk-<name>-key-000001`) serving `m` as `up-m`.
pub fn backend_input(name: &str) -> BackendInput {
    BackendInput {
        name: name.to_owned(),
        label: None,
        api_base_url: "http://127.0.0.1:9/v1".into(),
        api_key: secrecy::SecretString::from(format!("sk-{name}-key-000001")),
        api: None,
        timeout_seconds: None,
        rpm_limit: None,
        weight: None,
        pool: None,
        enabled: None,
        model_mappings: [("m".to_owned(), MappingInput::Short("up-m".into()))].into(),
        metadata: None,
        responses: None,
        api_version: None,
        tpm_limit: None,
        http_version: None,
    }
}

/// A successful streamed chat completion's record, its id and time told apart by `i`.
pub fn usage_record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req_{i:05}"),
        ts_ms: 1_700_000_000_000 + i64::try_from(i).unwrap(),
        client_key_id: Some("key_abc".into()),
        endpoint: "chat.completions".into(),
        canonical_model: Some("gpt-4o".into()),
        backend_id: Some("bkd_0123456789abcdef".into()),
        upstream_model: Some("gpt-4o-2024-08-06".into()),
        pool: Some("primary".into()),
        attempts: 1,
        status: 200,
        outcome: Outcome::Success,
        error_kind: None,
        prompt_tokens: Some(12),
        completion_tokens: Some(34),
        total_tokens: Some(46),
        cached_tokens: Some(3),
        latency_ms: 420,
        ttfb_ms: Some(90),
        streamed: true,
        tokens_estimated: false,
        cost: None,
        cache_write_tokens: None,
    }
}
