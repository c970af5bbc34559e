//! Which model names poolgate serves, and as what upstream: aliases (one name for another
//! canonical model, `gpt-4o-latest` → `gpt-4o`) and each backend's mappings, exact or wildcard
//! (`claude-*` → the same name upstream, `openai/*` → the name without the prefix). Pure logic,
//! built from the alias table and the backends' mappings; the rules for what may be written are
//! [`crate::domain::models`]'.
//!
//! # Rules
//! 1. The requested name is looked up in the aliases first; an alias names its canonical model
//!    (one step: an alias of an alias is refused when the table is written).
//! 2. The most specific mapping wins, across all backends: if any backend maps the canonical
//!    model exactly, the backends that do are its candidates; otherwise the backends whose
//!    longest matching wildcard is the longest (`openai/gpt-*` over `openai/*` over `*`). Less
//!    specific matches never join (as in LiteLLM's router or a longest-prefix route table);
//!    to let a wildcard backend take part for a model mapped exactly elsewhere, map it exactly
//!    too. Inside one backend the same order picks its upstream model.
//! 3. A wildcard key ends in one `*` (a lone `*` matches everything). Its upstream model is a
//!    template: ending in `*`, the matched rest goes there (`claude-*` → `claude-*` keeps the
//!    name, `openai/*` → `*` strips the prefix, `my-*` → `vendor-*` renames it); without `*`,
//!    every matching name goes to that one upstream model.
//!
//! `/v1/models` lists what can be named concretely ([`ModelCatalog::listed`]): every exact
//! mapping, every alias whose target is served, and those targets even when only a wildcard
//! serves them. A wildcard alone lists nothing: its names are not known in advance.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::domain::ModelNameError;
use crate::domain::{
    models::check_alias_table, BackendId, CanonicalModel, ModelMappings, ModelPattern,
    UpstreamModel, UpstreamTemplate,
};

/// How a backend matched the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchKind {
    /// By a wildcard with this many characters before the `*`.
    Wildcard {
        prefix_len: usize,
    },
    Exact,
}

impl MatchKind {
    /// The `model` label of `model` matched this way: the name itself when mapped exactly, the
    /// wildcard that matched otherwise (`claude-*`), so that metric series stay bounded by the
    /// configured mappings whatever names clients send.
    pub fn label(self, model: &str) -> String {
        match self {
            MatchKind::Exact => model.to_owned(),
            MatchKind::Wildcard { prefix_len } => {
                let prefix = model.get(..prefix_len).unwrap_or_default();
                format!("{prefix}*")
            }
        }
    }
}

/// The upstream side of a wildcard mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Template {
    /// Every matching model goes to this one upstream model.
    Fixed(String),
    /// This prefix, then what the `*` matched.
    Rest(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Wildcard {
    prefix: String,
    template: Template,
}

/// One backend's mappings, ready to resolve names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendModels {
    pub backend: BackendId,
    exact: BTreeMap<String, UpstreamModel>,
    /// Longest prefix first.
    wildcards: Vec<Wildcard>,
}

impl BackendModels {
    /// Reads a backend's `model_mappings`, where keys ending in `*` are wildcards.
    pub fn new(backend: BackendId, mappings: &ModelMappings) -> Result<Self, ModelNameError> {
        let mut exact = BTreeMap::new();
        let mut wildcards = Vec::new();
        for (key, mapping) in mappings {
            let pattern = ModelPattern::parse(key.as_str())?;
            let template = UpstreamTemplate::parse(pattern, mapping.upstream_model.as_str())?;
            match (pattern, template) {
                (ModelPattern::Exact(model), _) => {
                    exact.insert(model.to_owned(), mapping.upstream_model.clone());
                }
                (ModelPattern::Prefix(prefix), template) => wildcards.push(Wildcard {
                    prefix: prefix.to_owned(),
                    template: match template {
                        UpstreamTemplate::Fixed(up) => Template::Fixed(up.to_owned()),
                        UpstreamTemplate::Rest(up) => Template::Rest(up.to_owned()),
                    },
                }),
            }
        }
        wildcards.sort_by_key(|w| std::cmp::Reverse(w.prefix.len()));
        Ok(Self {
            backend,
            exact,
            wildcards,
        })
    }

    /// The upstream model this backend serves `model` as, and how it matched.
    pub fn upstream_for(&self, model: &str) -> Option<(UpstreamModel, MatchKind)> {
        if let Some(upstream) = self.exact.get(model) {
            return Some((upstream.clone(), MatchKind::Exact));
        }
        let wildcard = self
            .wildcards
            .iter()
            .find(|w| model.starts_with(w.prefix.as_str()))?;
        let upstream = match &wildcard.template {
            Template::Fixed(upstream) => upstream.clone(),
            Template::Rest(prefix) => format!("{prefix}{}", &model[wildcard.prefix.len()..]),
        };
        let kind = MatchKind::Wildcard {
            prefix_len: wildcard.prefix.len(),
        };
        Some((UpstreamModel::new(upstream), kind))
    }

    /// The exactly mapped model names.
    pub fn exact_models(&self) -> impl Iterator<Item = &str> {
        self.exact.keys().map(String::as_str)
    }
}

/// One backend serving the resolved model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBackend {
    pub backend: BackendId,
    pub upstream_model: UpstreamModel,
    pub matched: MatchKind,
}

/// A requested name, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The name after alias resolution (the route's key, the usage record's model).
    pub canonical: CanonicalModel,
    /// The requested name was an alias.
    pub via_alias: bool,
    /// Every backend that serves it, in catalog order.
    pub backends: Vec<ResolvedBackend>,
}

/// One entry of `/v1/models`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedModel {
    pub id: String,
    /// Set for aliases: the model they name.
    pub alias_of: Option<CanonicalModel>,
}

/// Aliases and every backend's mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelCatalog {
    aliases: BTreeMap<String, CanonicalModel>,
    backends: Vec<BackendModels>,
}

impl ModelCatalog {
    /// Checks the aliases (one model each, no chains, no self-reference).
    pub fn new(
        aliases: impl IntoIterator<Item = (String, CanonicalModel)>,
        backends: Vec<BackendModels>,
    ) -> Result<Self, ModelNameError> {
        let aliases: BTreeMap<String, CanonicalModel> = aliases.into_iter().collect();
        check_alias_table(&aliases).map_err(|(_, error)| error)?;
        Ok(Self { aliases, backends })
    }

    /// The aliases, by name.
    pub fn aliases(&self) -> &BTreeMap<String, CanonicalModel> {
        &self.aliases
    }

    /// The canonical name of `requested` (itself unless it is an alias).
    pub fn canonical(&self, requested: &str) -> CanonicalModel {
        self.aliases
            .get(requested)
            .cloned()
            .unwrap_or_else(|| CanonicalModel::new(requested))
    }

    /// The backends serving `requested` by the most specific mapping any backend has for it,
    /// with the upstream model for each.
    pub fn resolve(&self, requested: &str) -> Resolution {
        let canonical = self.canonical(requested);
        let mut backends: Vec<ResolvedBackend> = self
            .backends
            .iter()
            .filter_map(|models| {
                let (upstream_model, matched) = models.upstream_for(canonical.as_str())?;
                Some(ResolvedBackend {
                    backend: models.backend.clone(),
                    upstream_model,
                    matched,
                })
            })
            .collect();
        if let Some(best) = backends.iter().map(|b| b.matched).max() {
            backends.retain(|b| b.matched == best);
        }
        Resolution {
            via_alias: canonical.as_str() != requested,
            canonical,
            backends,
        }
    }

    /// Aliases whose name is also mapped exactly by a backend: the alias wins, the mapping is
    /// never used (worth a warning where aliases and mappings are edited).
    pub fn shadowed_mappings(&self) -> Vec<&str> {
        self.aliases
            .keys()
            .filter(|alias| {
                self.backends
                    .iter()
                    .any(|b| b.exact_models().any(|m| m == alias.as_str()))
            })
            .map(String::as_str)
            .collect()
    }

    /// What `/v1/models` shows, sorted by id.
    pub fn listed(&self) -> Vec<ListedModel> {
        let mut served: BTreeSet<&str> = self
            .backends
            .iter()
            .flat_map(BackendModels::exact_models)
            .filter(|model| !self.aliases.contains_key(*model))
            .collect();
        let mut listed = Vec::new();
        for (alias, target) in &self.aliases {
            if self
                .backends
                .iter()
                .any(|b| b.upstream_for(target.as_str()).is_some())
            {
                served.insert(target.as_str());
                listed.push(ListedModel {
                    id: alias.clone(),
                    alias_of: Some(target.clone()),
                });
            }
        }
        listed.extend(served.into_iter().map(|id| ListedModel {
            id: id.to_owned(),
            alias_of: None,
        }));
        listed.sort();
        listed
    }
}

#[cfg(test)]
mod tests;
