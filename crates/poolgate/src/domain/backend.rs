//! A backend as users describe it — an admin API body, a config file entry, a command line —
//! and the one set of rules that turns it into a [`BackendSpec`] (or, for a change, a
//! [`BackendChange`]). Every entry point validates here; the control plane builds the stored
//! record from the result.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{
    azure, normalize_base_url, not_null, validate_api_key, validate_mappings, validate_metadata,
    validate_model_name, validate_name, validate_rpm, validate_timeout, validate_tpm,
    validate_weight, ApiKind, BackendRecord, CanonicalModel, HttpVersion, Invalid, ModelMapping,
    ModelMappings, ModelPattern, PoolName, UpstreamModel, UpstreamTemplate,
};

/// Default `timeout_seconds` (time to first byte) of a backend.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 60;

/// The pool of a backend that names none.
pub const DEFAULT_POOL: &str = "primary";

/// A model mapping as users write it: `"gpt-4o"` or `{"upstream_model": "gpt-4o"}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(
    untagged,
    expecting = "an upstream model id (a string) or an object `{\"upstream_model\": \"…\"}`"
)]
pub enum MappingInput {
    Short(String),
    Full(ModelMapping),
}

impl MappingInput {
    fn into_mapping(self) -> ModelMapping {
        match self {
            MappingInput::Short(upstream) => ModelMapping {
                upstream_model: UpstreamModel::new(upstream),
            },
            MappingInput::Full(mapping) => mapping,
        }
    }
}

/// A new backend before validation (also the body of `POST /admin/api/backends`); absent
/// optional fields take their defaults.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateBackend)]
pub struct BackendInput {
    /// Unique; letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Default: the name.
    pub label: Option<String>,
    /// OpenAI-compatible: including `/v1` (e.g. `https://api.openai.com/v1`).
    pub api_base_url: String,
    /// Write-only.
    #[serde(deserialize_with = "secret")]
    #[schema(value_type = String)]
    pub api_key: SecretString,
    /// `openai` (default), `anthropic` or `azure`.
    pub api: Option<ApiKind>,
    /// Time to first byte, 1..=3600 (default 60).
    pub timeout_seconds: Option<i64>,
    /// 0 = unlimited (default).
    pub rpm_limit: Option<i64>,
    /// 1..=100 (default 1).
    pub weight: Option<i64>,
    /// Default `primary`.
    pub pool: Option<String>,
    pub enabled: Option<bool>,
    /// Canonical model (or a wildcard such as `claude-*`) -> `{"upstream_model": "…"}` or just
    /// the upstream id (`*` in a wildcard's upstream id stands for what the key's `*` matched).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub model_mappings: BTreeMap<String, MappingInput>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Whether the upstream has the Responses API (`/v1/responses` passes through; else it is
    /// translated). Default: on for `openai`; for `azure` on with the v1 base URL or an
    /// `api_version` from `2025-03-01-preview`; always off for `anthropic`.
    pub responses: Option<bool>,
    /// Azure only: the `api-version` of deployment URLs (default `2024-10-21`).
    pub api_version: Option<String>,
    /// Tokens per minute (prompt + output), 0..=150000000; 0 or absent = unlimited.
    pub tpm_limit: Option<i64>,
    /// HTTP version towards the upstream: `auto` (default: HTTP/1.1 on `http://`, ALPN on
    /// `https://`), `http1`, or `http2` (prior knowledge on `http://`, ALPN `h2` on `https://`;
    /// every stream to the host shares one connection).
    pub http_version: Option<HttpVersion>,
}

fn secret<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretString, D::Error> {
    String::deserialize(deserializer).map(SecretString::from)
}

/// A `PATCH`'s new key: left out keeps the current one; `null` is refused as for every field.
fn optional_secret<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SecretString>, D::Error> {
    not_null::<D, String>(deserializer).map(|key| key.map(SecretString::from))
}

/// A backend definition whose every rule holds (whether its pool exists is the store's to say).
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub name: String,
    pub label: String,
    /// Normalized: no trailing `/`.
    pub api_base_url: String,
    pub api_key: SecretString,
    pub api: ApiKind,
    pub timeout_seconds: u32,
    pub rpm_limit: u32,
    pub weight: u32,
    pub pool: PoolName,
    pub enabled: bool,
    pub model_mappings: ModelMappings,
    pub metadata: serde_json::Value,
    pub responses: Option<bool>,
    pub api_version: Option<String>,
    pub tpm_limit: u32,
    pub http_version: HttpVersion,
}

/// The path of a field in the caller's terms (`name`, `backends[2].name`, …).
pub type FieldPath<'a> = &'a dyn Fn(&str) -> String;

fn mappings(
    at: FieldPath<'_>,
    input: BTreeMap<String, MappingInput>,
) -> Result<ModelMappings, Invalid> {
    let mut mappings = ModelMappings::new();
    for (canonical, mapping) in input {
        validate_model_name(&at(&format!("model_mappings.{canonical}")), &canonical)?;
        mappings.insert(CanonicalModel::new(canonical), mapping.into_mapping());
    }
    validate_mappings(&at("model_mappings"), &mappings)?;
    Ok(mappings)
}

fn pool(at: FieldPath<'_>, name: &str) -> Result<PoolName, Invalid> {
    validate_name(&at("pool"), name)?;
    Ok(PoolName::new(name))
}

fn key(at: FieldPath<'_>, key: SecretString) -> Result<SecretString, Invalid> {
    validate_api_key(&at("api_key"), key.expose_secret())?;
    Ok(key)
}

fn metadata(at: FieldPath<'_>, metadata: serde_json::Value) -> Result<serde_json::Value, Invalid> {
    validate_metadata(&at("metadata"), &metadata)?;
    Ok(metadata)
}

impl BackendInput {
    /// Validates every field; `at` names a field in the caller's terms.
    pub fn validate(self, at: FieldPath<'_>) -> Result<BackendSpec, Invalid> {
        validate_name(&at("name"), &self.name)?;
        let api_base_url = normalize_base_url(&at("api_base_url"), &self.api_base_url)?;
        let api_key = key(at, self.api_key)?;
        let timeout = self
            .timeout_seconds
            .unwrap_or(i64::from(DEFAULT_TIMEOUT_SECONDS));
        let timeout_seconds = validate_timeout(&at("timeout_seconds"), timeout)?;
        let rpm_limit = validate_rpm(&at("rpm_limit"), self.rpm_limit.unwrap_or(0))?;
        let tpm_limit = validate_tpm(&at("tpm_limit"), self.tpm_limit.unwrap_or(0))?;
        let weight = validate_weight(&at("weight"), self.weight.unwrap_or(1))?;
        let model_mappings = mappings(at, self.model_mappings)?;
        let metadata = metadata(
            at,
            self.metadata
                .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new())),
        )?;
        let pool = pool(at, self.pool.as_deref().unwrap_or(DEFAULT_POOL))?;
        let api = self.api.unwrap_or(ApiKind::Openai);
        let api_fields = ApiFields {
            api,
            api_base_url: &api_base_url,
            responses: self.responses,
            api_version: self.api_version.as_deref(),
            model_mappings: &model_mappings,
        };
        api_fields.check(at)?;
        Ok(BackendSpec {
            label: self.label.unwrap_or_else(|| self.name.clone()),
            name: self.name,
            api_base_url,
            api_key,
            api,
            timeout_seconds,
            rpm_limit,
            weight,
            pool,
            enabled: self.enabled.unwrap_or(true),
            model_mappings,
            metadata,
            responses: self.responses,
            api_version: self.api_version,
            tpm_limit,
            http_version: self.http_version.unwrap_or_default(),
        })
    }
}

/// A change to a backend before validation (also the body of `PATCH /admin/api/backends/{id}`):
/// every field optional, absent = unchanged; `null` is refused (it would change nothing).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateBackend)]
pub struct BackendPatch {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub label: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub api_base_url: Option<String>,
    /// Write-only; absent keeps the current key.
    #[serde(default, deserialize_with = "optional_secret")]
    #[schema(value_type = String, nullable = false)]
    pub api_key: Option<SecretString>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub api: Option<ApiKind>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub timeout_seconds: Option<i64>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub rpm_limit: Option<i64>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub weight: Option<i64>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub pool: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
    /// Replaces the whole mapping table.
    #[schema(value_type = Option<Object>)]
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub model_mappings: Option<BTreeMap<String, MappingInput>>,
    #[schema(value_type = Option<Object>)]
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub responses: Option<bool>,
    /// Azure only.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub api_version: Option<String>,
    /// Tokens per minute; 0 = unlimited.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub tpm_limit: Option<i64>,
    /// `auto`, `http1` or `http2`.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub http_version: Option<HttpVersion>,
}

/// A validated change: the fields to set.
#[derive(Clone, Debug, Default)]
pub struct BackendChange {
    pub name: Option<String>,
    pub label: Option<String>,
    pub api_base_url: Option<String>,
    pub api_key: Option<SecretString>,
    pub api: Option<ApiKind>,
    pub timeout_seconds: Option<u32>,
    pub rpm_limit: Option<u32>,
    pub weight: Option<u32>,
    pub pool: Option<PoolName>,
    pub enabled: Option<bool>,
    pub model_mappings: Option<ModelMappings>,
    pub metadata: Option<serde_json::Value>,
    pub responses: Option<bool>,
    pub api_version: Option<String>,
    pub tpm_limit: Option<u32>,
    pub http_version: Option<HttpVersion>,
}

impl BackendPatch {
    /// Validates the fields given, with the same rules as [`BackendInput::validate`].
    pub fn validate(self, at: FieldPath<'_>) -> Result<BackendChange, Invalid> {
        if let Some(name) = &self.name {
            validate_name(&at("name"), name)?;
        }
        Ok(BackendChange {
            name: self.name,
            label: self.label,
            api_base_url: self
                .api_base_url
                .map(|url| normalize_base_url(&at("api_base_url"), &url))
                .transpose()?,
            api_key: self.api_key.map(|k| key(at, k)).transpose()?,
            api: self.api,
            timeout_seconds: self
                .timeout_seconds
                .map(|t| validate_timeout(&at("timeout_seconds"), t))
                .transpose()?,
            rpm_limit: self
                .rpm_limit
                .map(|r| validate_rpm(&at("rpm_limit"), r))
                .transpose()?,
            weight: self
                .weight
                .map(|w| validate_weight(&at("weight"), w))
                .transpose()?,
            enabled: self.enabled,
            model_mappings: self.model_mappings.map(|m| mappings(at, m)).transpose()?,
            metadata: self.metadata.map(|m| metadata(at, m)).transpose()?,
            pool: self.pool.map(|p| pool(at, &p)).transpose()?,
            responses: self.responses,
            api_version: self
                .api_version
                .map(|v| {
                    azure::validate_api_version(&at("api_version"), &v)?;
                    Ok::<_, Invalid>(v)
                })
                .transpose()?,
            tpm_limit: self
                .tpm_limit
                .map(|t| validate_tpm(&at("tpm_limit"), t))
                .transpose()?,
            http_version: self.http_version,
        })
    }
}

/// The fields whose rules depend on each other: the API kind, its URL form, the Responses
/// capability, Azure's `api_version` and the deployments named by the mappings. Checked for a
/// new backend and again for a changed one (after the change is applied).
pub struct ApiFields<'a> {
    pub api: ApiKind,
    pub api_base_url: &'a str,
    pub responses: Option<bool>,
    pub api_version: Option<&'a str>,
    pub model_mappings: &'a ModelMappings,
}

impl<'a> ApiFields<'a> {
    pub fn of(record: &'a BackendRecord) -> Self {
        Self {
            api: record.api,
            api_base_url: &record.api_base_url,
            responses: record.responses,
            api_version: record.api_version.as_deref(),
            model_mappings: &record.model_mappings,
        }
    }

    pub fn check(&self, at: FieldPath<'_>) -> Result<(), Invalid> {
        if let Some(version) = self.api_version {
            if self.api != ApiKind::Azure {
                return Err(Invalid::new(
                    at("api_version"),
                    "is only used by `azure` backends",
                ));
            }
            azure::validate_api_version(&at("api_version"), version)?;
        }
        match self.api {
            ApiKind::Anthropic if self.responses == Some(true) => Err(Invalid::new(
                at("responses"),
                "Anthropic backends have no Responses API (Responses clients are served by \
                 translation)",
            )),
            ApiKind::Azure => self.check_azure(at),
            _ => Ok(()),
        }
    }

    fn check_azure(&self, at: FieldPath<'_>) -> Result<(), Invalid> {
        if azure::is_v1_base(self.api_base_url) {
            return Ok(());
        }
        let version = self.api_version.unwrap_or(azure::DEFAULT_API_VERSION);
        if self.responses == Some(true) && !azure::version_has_responses(version) {
            return Err(Invalid::new(
                at("responses"),
                format!(
                    "Azure has the Responses API from `api_version` {} on (or with the v1 base \
                     URL `…/openai/v1`); this backend uses {version}",
                    azure::FIRST_RESPONSES_API_VERSION
                ),
            ));
        }
        // Deployment URLs put the upstream model into the path.
        for (model, mapping) in self.model_mappings {
            let upstream = mapping.upstream_model.as_str();
            let fixed = ModelPattern::parse(model.as_str())
                .ok()
                .and_then(|pattern| UpstreamTemplate::parse(pattern, upstream).ok())
                .map_or(upstream, UpstreamTemplate::fixed_part);
            let template_rest = fixed.len() < upstream.len();
            if !(azure::is_deployment(fixed) || template_rest && fixed.is_empty()) {
                return Err(Invalid::new(
                    at(&format!("model_mappings.{model}.upstream_model")),
                    "must be an Azure deployment name (1 to 64 letters, digits, `.`, `_`, `-`)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> BackendInput {
        BackendInput {
            api_base_url: "https://api.example.com/v1/".into(),
            model_mappings: BTreeMap::from([
                ("a".to_owned(), MappingInput::Short("up-a".into())),
                (
                    "b".to_owned(),
                    MappingInput::Full(ModelMapping {
                        upstream_model: UpstreamModel::new("up-b"),
                    }),
                ),
            ]),
            ..crate::domain::tests_support::backend_input("one")
        }
    }

    fn plain(field: &str) -> String {
        field.to_owned()
    }

    #[test]
    fn defaults_fill_the_absent_fields() {
        let spec = input().validate(&plain).unwrap();
        assert_eq!(spec.label, "one");
        assert_eq!(spec.api_base_url, "https://api.example.com/v1");
        assert_eq!(spec.api, ApiKind::Openai);
        assert_eq!(spec.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
        assert_eq!((spec.rpm_limit, spec.weight), (0, 1));
        assert_eq!(spec.pool.as_str(), DEFAULT_POOL);
        assert!(spec.enabled);
        assert_eq!(spec.metadata, serde_json::json!({}));
        assert_eq!(
            spec.model_mappings[&CanonicalModel::new("a")]
                .upstream_model
                .as_str(),
            "up-a"
        );
    }

    #[test]
    fn errors_name_the_field_in_the_callers_terms() {
        let in_file = |field: &str| format!("backends[3].{field}");
        let error = BackendInput {
            rpm_limit: Some(-1),
            ..input()
        }
        .validate(&in_file)
        .unwrap_err();
        assert_eq!(error.field, "backends[3].rpm_limit");
        let error = BackendInput {
            model_mappings: BTreeMap::from([("a b".to_owned(), MappingInput::Short("x".into()))]),
            ..input()
        }
        .validate(&plain)
        .unwrap_err();
        assert_eq!(error.field, "model_mappings.a b");
        let error = BackendInput {
            pool: Some("no pool".into()),
            ..input()
        }
        .validate(&plain)
        .unwrap_err();
        assert_eq!(error.field, "pool");
    }

    #[test]
    fn bodies_deserialize_with_unknown_fields_refused() {
        let input: BackendInput = serde_json::from_value(serde_json::json!({
            "name": "x", "api_base_url": "http://h/v1", "api_key": "sk-x-0001",
            "model_mappings": {"m": "up-m"}
        }))
        .unwrap();
        assert_eq!(input.api_key.expose_secret(), "sk-x-0001");
        assert!(
            format!("{input:?}").contains("REDACTED"),
            "the key is not printed"
        );
        let patch: BackendPatch = serde_json::from_value(serde_json::json!({"weight": 2})).unwrap();
        assert!(patch.api_key.is_none());
        assert!(serde_json::from_value::<BackendPatch>(serde_json::json!({"nope": 1})).is_err());
    }

    #[test]
    fn http_version_defaults_to_auto_and_refuses_unknown_values() {
        assert_eq!(
            input().validate(&plain).unwrap().http_version,
            HttpVersion::Auto
        );
        let body = |version: &str| {
            serde_json::json!({
                "name": "x", "api_base_url": "http://h/v1", "api_key": "sk-x-0001",
                "http_version": version
            })
        };
        let input: BackendInput = serde_json::from_value(body("http2")).unwrap();
        assert_eq!(
            input.validate(&plain).unwrap().http_version,
            HttpVersion::Http2
        );
        for bad in ["http3", "HTTP2", "h2", ""] {
            let error = serde_json::from_value::<BackendInput>(body(bad)).unwrap_err();
            assert!(
                error.to_string().contains("unknown variant"),
                "{bad}: {error}"
            );
        }
        let patch: BackendPatch =
            serde_json::from_value(serde_json::json!({"http_version": "http1"})).unwrap();
        let change = patch.validate(&plain).unwrap();
        assert_eq!(change.http_version, Some(HttpVersion::Http1));
    }

    #[test]
    fn a_patch_checks_only_what_it_sets() {
        let change = BackendPatch {
            weight: Some(7),
            api_base_url: Some("http://h/v1/".into()),
            ..BackendPatch::default()
        }
        .validate(&plain)
        .unwrap();
        assert_eq!(change.weight, Some(7));
        assert_eq!(change.api_base_url.as_deref(), Some("http://h/v1"));
        assert!(change.name.is_none() && change.pool.is_none());
        let error = BackendPatch {
            label: Some("fine".into()),
            weight: Some(1000),
            ..BackendPatch::default()
        }
        .validate(&plain)
        .unwrap_err();
        assert_eq!(error.field, "weight");
    }
}
