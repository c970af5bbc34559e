//! The rules for model names users write: mapping keys that are exact names or wildcards
//! (`claude-*`), the upstream templates of wildcards (`*`, `vendor-*`), and aliases (one name for
//! another canonical model). [`crate::routing::models`] resolves names with them; every entry
//! point (admin API, config file) validates with them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{validate_model_name, CanonicalModel, Invalid, Source};

/// A mapping key or alias that breaks the rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelNameError {
    #[error("`{0}`: `*` may only end a model pattern, once")]
    MisplacedWildcard(String),
    #[error("`{model}` maps exactly, so its upstream model `{upstream}` cannot be a `*` template")]
    TemplateOnExact { model: String, upstream: String },
    #[error("`{upstream}`: `*` may only end an upstream model template, once")]
    MisplacedTemplate { upstream: String },
    #[error("alias `{0}` is a wildcard; aliases name one model")]
    WildcardAlias(String),
    #[error("alias `{alias}` points to `{target}`, which is itself an alias")]
    AliasChain { alias: String, target: String },
    #[error("alias `{0}` points to itself")]
    SelfAlias(String),
    #[error("alias `{alias}` points to `{target}`, which is a wildcard; an alias names one model")]
    WildcardTarget { alias: String, target: String },
}

/// A mapping key: one model, or every model starting with a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelPattern<'a> {
    Exact(&'a str),
    /// `claude-*` → `claude-`; a lone `*` → `""` (every model).
    Prefix(&'a str),
}

impl<'a> ModelPattern<'a> {
    pub fn parse(key: &'a str) -> Result<ModelPattern<'a>, ModelNameError> {
        match key.find('*') {
            None => Ok(ModelPattern::Exact(key)),
            Some(at) if at + 1 == key.len() => Ok(ModelPattern::Prefix(&key[..at])),
            Some(_) => Err(ModelNameError::MisplacedWildcard(key.to_owned())),
        }
    }
}

/// The upstream side of a wildcard mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamTemplate<'a> {
    /// Every matching model goes to this one upstream model.
    Fixed(&'a str),
    /// This prefix, then what the `*` matched (`*` keeps the name, `vendor-*` renames it).
    Rest(&'a str),
}

impl<'a> UpstreamTemplate<'a> {
    /// The template of a mapping whose key is `pattern`; exact keys take no template.
    pub fn parse(
        pattern: ModelPattern<'_>,
        upstream: &'a str,
    ) -> Result<UpstreamTemplate<'a>, ModelNameError> {
        match (pattern, upstream.find('*')) {
            (_, None) => Ok(UpstreamTemplate::Fixed(upstream)),
            (ModelPattern::Exact(model), Some(_)) => Err(ModelNameError::TemplateOnExact {
                model: model.to_owned(),
                upstream: upstream.to_owned(),
            }),
            (ModelPattern::Prefix(_), Some(at)) if at + 1 == upstream.len() => {
                Ok(UpstreamTemplate::Rest(&upstream[..at]))
            }
            (ModelPattern::Prefix(_), Some(_)) => Err(ModelNameError::MisplacedTemplate {
                upstream: upstream.to_owned(),
            }),
        }
    }

    /// The fixed text of the template (what is always sent), for checks of its characters.
    pub fn fixed_part(self) -> &'a str {
        match self {
            UpstreamTemplate::Fixed(text) | UpstreamTemplate::Rest(text) => text,
        }
    }
}

/// An alias as stored: `alias` is served as the canonical model `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AliasRecord {
    pub alias: String,
    #[schema(value_type = String)]
    pub target: CanonicalModel,
    pub source: Source,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One alias on its own: no wildcard on either side, not itself.
pub fn check_alias(alias: &str, target: &str) -> Result<(), ModelNameError> {
    if alias.contains('*') {
        Err(ModelNameError::WildcardAlias(alias.to_owned()))
    } else if target.contains('*') {
        Err(ModelNameError::WildcardTarget {
            alias: alias.to_owned(),
            target: target.to_owned(),
        })
    } else if alias == target {
        Err(ModelNameError::SelfAlias(alias.to_owned()))
    } else {
        Ok(())
    }
}

/// A whole alias table: each alias on its own, and no alias pointing at another alias (one step
/// resolves every name). Err names the alias at fault.
pub fn check_alias_table(
    aliases: &BTreeMap<String, CanonicalModel>,
) -> Result<(), (String, ModelNameError)> {
    for (alias, target) in aliases {
        check_alias(alias, target.as_str()).map_err(|error| (alias.clone(), error))?;
        if aliases.contains_key(target.as_str()) {
            let error = ModelNameError::AliasChain {
                alias: alias.clone(),
                target: target.to_string(),
            };
            return Err((alias.clone(), error));
        }
    }
    Ok(())
}

/// [`check_alias_table`] with valid names, as a rule for what users hand us; `at` names an
/// alias's field in the caller's terms.
pub fn validate_alias_table(
    aliases: &BTreeMap<String, CanonicalModel>,
    at: &dyn Fn(&str) -> String,
) -> Result<(), Invalid> {
    for (alias, target) in aliases {
        validate_model_name(&at(alias), alias)?;
        validate_model_name(&at(alias), target.as_str())?;
    }
    check_alias_table(aliases).map_err(|(alias, error)| Invalid::new(at(&alias), error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_templates_follow_the_rules() {
        assert_eq!(
            ModelPattern::parse("gpt-4o"),
            Ok(ModelPattern::Exact("gpt-4o"))
        );
        assert_eq!(
            ModelPattern::parse("claude-*"),
            Ok(ModelPattern::Prefix("claude-"))
        );
        assert_eq!(ModelPattern::parse("*"), Ok(ModelPattern::Prefix("")));
        assert!(ModelPattern::parse("a*b").is_err());
        assert!(ModelPattern::parse("a**").is_err());
        let wildcard = ModelPattern::Prefix("openai/");
        assert_eq!(
            UpstreamTemplate::parse(wildcard, "*"),
            Ok(UpstreamTemplate::Rest(""))
        );
        assert_eq!(
            UpstreamTemplate::parse(wildcard, "fixed"),
            Ok(UpstreamTemplate::Fixed("fixed"))
        );
        assert!(UpstreamTemplate::parse(wildcard, "a*b").is_err());
        assert!(UpstreamTemplate::parse(ModelPattern::Exact("m"), "m-*").is_err());
    }

    #[test]
    fn alias_tables_refuse_chains_wildcards_and_self_references() {
        let at = |alias: &str| format!("aliases.{alias}");
        let table = |pairs: &[(&str, &str)]| -> BTreeMap<String, CanonicalModel> {
            pairs
                .iter()
                .map(|(a, t)| ((*a).to_owned(), CanonicalModel::new(*t)))
                .collect()
        };
        assert!(validate_alias_table(
            &table(&[("latest", "gpt-4o"), ("mini", "gpt-4o-mini")]),
            &at
        )
        .is_ok());
        let error = validate_alias_table(&table(&[("a", "b"), ("b", "c")]), &at).unwrap_err();
        assert_eq!(error.field, "aliases.a");
        assert!(error.message.contains("itself an alias"), "{error}");
        for pairs in [[("x*", "y")], [("x", "y*")], [("x", "x")]] {
            assert!(
                validate_alias_table(&table(&pairs), &at).is_err(),
                "{pairs:?}"
            );
        }
    }
}
