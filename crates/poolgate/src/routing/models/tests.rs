//! Precedence rules of aliases, exact and wildcard mappings: examples, then properties against a
//! brute-force reference.

use proptest::prelude::*;

use super::*;
use crate::domain::ModelMapping;

fn mappings(pairs: &[(&str, &str)]) -> ModelMappings {
    pairs
        .iter()
        .map(|(key, upstream)| {
            (
                CanonicalModel::new(*key),
                ModelMapping {
                    upstream_model: UpstreamModel::new(*upstream),
                },
            )
        })
        .collect()
}

fn backend(id: &str, pairs: &[(&str, &str)]) -> BackendModels {
    BackendModels::new(BackendId::new(id), &mappings(pairs)).unwrap()
}

fn upstream(models: &BackendModels, model: &str) -> Option<String> {
    models.upstream_for(model).map(|(u, _)| u.to_string())
}

#[test]
fn wildcards_keep_strip_rename_or_fix_the_name() {
    let b = backend(
        "b",
        &[
            ("claude-*", "claude-*"),
            ("openai/*", "*"),
            ("my-*", "vendor-*"),
            ("legacy-*", "gpt-4o-mini"),
        ],
    );
    assert_eq!(
        upstream(&b, "claude-sonnet-4-5").as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(upstream(&b, "openai/gpt-4o").as_deref(), Some("gpt-4o"));
    assert_eq!(upstream(&b, "my-model").as_deref(), Some("vendor-model"));
    assert_eq!(
        upstream(&b, "legacy-davinci").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(upstream(&b, "gpt-4o"), None);
    // The prefix itself matches too (an empty rest).
    assert_eq!(upstream(&b, "openai/").as_deref(), Some(""));
}

#[test]
fn exact_beats_wildcard_and_longer_beats_shorter() {
    let b = backend(
        "b",
        &[
            ("*", "*"),
            ("openai/*", "*"),
            ("openai/gpt-4*", "azure-gpt-4*"),
            ("openai/gpt-4o", "gpt-4o-2024-08-06"),
        ],
    );
    assert_eq!(
        b.upstream_for("openai/gpt-4o"),
        Some((UpstreamModel::new("gpt-4o-2024-08-06"), MatchKind::Exact))
    );
    assert_eq!(
        b.upstream_for("openai/gpt-4.1"),
        Some((
            UpstreamModel::new("azure-gpt-4.1"),
            MatchKind::Wildcard { prefix_len: 12 }
        ))
    );
    assert_eq!(upstream(&b, "openai/o3").as_deref(), Some("o3"));
    assert_eq!(
        b.upstream_for("mistral-large"),
        Some((
            UpstreamModel::new("mistral-large"),
            MatchKind::Wildcard { prefix_len: 0 }
        ))
    );
}

#[test]
fn bad_patterns_are_refused() {
    for (key, up) in [("a*b", "x"), ("**", "*"), ("*a", "a")] {
        assert!(
            matches!(
                BackendModels::new(BackendId::new("b"), &mappings(&[(key, up)])),
                Err(ModelNameError::MisplacedWildcard(_))
            ),
            "{key}"
        );
    }
    assert!(matches!(
        BackendModels::new(BackendId::new("b"), &mappings(&[("gpt-4o", "gpt-*")])),
        Err(ModelNameError::TemplateOnExact { .. })
    ));
    assert!(matches!(
        BackendModels::new(BackendId::new("b"), &mappings(&[("gpt-*", "a*b")])),
        Err(ModelNameError::MisplacedTemplate { .. })
    ));
}

#[test]
fn aliases_resolve_first_then_the_most_specific_mapping_wins_across_backends() {
    let catalog = ModelCatalog::new(
        [
            ("gpt-4o-latest".to_owned(), CanonicalModel::new("gpt-4o")),
            (
                "sonnet".to_owned(),
                CanonicalModel::new("claude-sonnet-4-5"),
            ),
        ],
        vec![
            backend("openai", &[("gpt-4o", "gpt-4o-2024-08-06")]),
            backend("azure", &[("gpt-*", "gpt-*")]),
            backend("anthropic", &[("claude-*", "claude-*")]),
        ],
    )
    .unwrap();
    let resolved = catalog.resolve("gpt-4o-latest");
    assert_eq!(resolved.canonical.as_str(), "gpt-4o");
    assert!(resolved.via_alias);
    // The exact mapping wins: the wildcard backend does not join.
    assert_eq!(
        resolved.backends,
        vec![ResolvedBackend {
            backend: BackendId::new("openai"),
            upstream_model: UpstreamModel::new("gpt-4o-2024-08-06"),
            matched: MatchKind::Exact,
        }]
    );
    // Without an exact mapping anywhere, the wildcard serves it.
    let mini = catalog.resolve("gpt-4o-mini");
    assert_eq!(mini.backends.len(), 1);
    assert_eq!(mini.backends[0].backend.as_str(), "azure");
    assert_eq!(mini.backends[0].upstream_model.as_str(), "gpt-4o-mini");
    let sonnet = catalog.resolve("sonnet");
    assert_eq!(sonnet.backends.len(), 1);
    assert_eq!(
        sonnet.backends[0].upstream_model.as_str(),
        "claude-sonnet-4-5"
    );
    let direct = catalog.resolve("claude-opus-4-1");
    assert!(!direct.via_alias);
    assert_eq!(direct.backends[0].backend.as_str(), "anthropic");
    assert!(catalog.resolve("llama-3").backends.is_empty());
}

#[test]
fn the_longest_wildcard_across_backends_wins_and_equal_ones_share() {
    let catalog = ModelCatalog::new(
        [],
        vec![
            backend("catch-all", &[("*", "*")]),
            backend("openai-1", &[("openai/*", "*")]),
            backend("openai-2", &[("openai/*", "*")]),
            backend("gpt", &[("openai/gpt-*", "gpt-*")]),
        ],
    )
    .unwrap();
    let ids = |model: &str| -> Vec<String> {
        catalog
            .resolve(model)
            .backends
            .into_iter()
            .map(|b| b.backend.to_string())
            .collect()
    };
    assert_eq!(ids("openai/gpt-4o"), ["gpt"]);
    assert_eq!(ids("openai/o3"), ["openai-1", "openai-2"]);
    assert_eq!(ids("mistral"), ["catch-all"]);
}

#[test]
fn alias_tables_are_checked() {
    let catalog = |pairs: &[(&str, &str)]| {
        ModelCatalog::new(
            pairs
                .iter()
                .map(|(a, t)| ((*a).to_owned(), CanonicalModel::new(*t))),
            Vec::new(),
        )
    };
    assert!(matches!(
        catalog(&[("a", "b"), ("b", "c")]),
        Err(ModelNameError::AliasChain { .. })
    ));
    assert!(matches!(
        catalog(&[("a", "a")]),
        Err(ModelNameError::SelfAlias(_))
    ));
    assert!(matches!(
        catalog(&[("gpt-*", "gpt-4o")]),
        Err(ModelNameError::WildcardAlias(_))
    ));
    assert!(catalog(&[("a", "c"), ("b", "c")]).is_ok());
}

#[test]
fn models_list_shows_concrete_names_and_served_aliases() {
    let catalog = ModelCatalog::new(
        [
            ("gpt-4o-latest".to_owned(), CanonicalModel::new("gpt-4o")),
            (
                "sonnet".to_owned(),
                CanonicalModel::new("claude-sonnet-4-5"),
            ),
            (
                "ghost".to_owned(),
                CanonicalModel::new("nothing-serves-this"),
            ),
            ("shadow".to_owned(), CanonicalModel::new("gpt-4o")),
        ],
        vec![
            backend(
                "a",
                &[
                    ("gpt-4o", "gpt-4o"),
                    ("shadow", "x"),
                    ("embed", "text-embedding-3-small"),
                ],
            ),
            backend(
                "b",
                &[("gpt-4o", "gpt-4o-2024-08-06"), ("claude-*", "claude-*")],
            ),
        ],
    )
    .unwrap();
    let listed: Vec<(String, Option<String>)> = catalog
        .listed()
        .into_iter()
        .map(|m| (m.id, m.alias_of.map(|t| t.to_string())))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("claude-sonnet-4-5".to_owned(), None),
            ("embed".to_owned(), None),
            ("gpt-4o".to_owned(), None),
            ("gpt-4o-latest".to_owned(), Some("gpt-4o".to_owned())),
            ("shadow".to_owned(), Some("gpt-4o".to_owned())),
            ("sonnet".to_owned(), Some("claude-sonnet-4-5".to_owned())),
        ]
    );
    assert_eq!(catalog.shadowed_mappings(), ["shadow"]);
}

// === properties ===

/// Short names over a small alphabet, so that prefixes collide often.
fn name() -> impl Strategy<Value = String> {
    "[ab/-]{0,4}"
}

/// A mapping key (exact or `prefix*`) and its upstream side (fixed or `prefix*` template).
fn mapping() -> impl Strategy<Value = (String, String)> {
    (name(), any::<bool>(), name(), any::<bool>()).prop_map(|(key, wild, up, template)| {
        if wild {
            (
                format!("{key}*"),
                if template { format!("{up}*") } else { up },
            )
        } else {
            (key, up)
        }
    })
}

/// The rules, written the slow way: exact, else the longest matching wildcard.
fn reference(pairs: &[(String, String)], model: &str) -> Option<String> {
    let table: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, u)| (k.as_str(), u.as_str()))
        .collect();
    if let Some(up) = table.get(model).filter(|_| !model.contains('*')) {
        return Some((*up).to_owned());
    }
    let (key, up) = table
        .iter()
        .filter_map(|(k, u)| Some((k.strip_suffix('*')?, *u)))
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())?;
    Some(match up.strip_suffix('*') {
        Some(up_prefix) => format!("{up_prefix}{}", &model[key.len()..]),
        None => up.to_owned(),
    })
}

proptest! {
    #[test]
    fn resolution_follows_the_precedence_rules(
        pairs in proptest::collection::vec(mapping(), 0..8),
        model in name(),
    ) {
        let table: BTreeMap<String, String> = pairs.iter().cloned().collect();
        let pairs: Vec<(String, String)> = table.into_iter().collect();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, u)| (k.as_str(), u.as_str())).collect();
        let models = backend("b", &refs);
        prop_assert_eq!(upstream(&models, &model), reference(&pairs, &model));
        if let Some((_, kind)) = models.upstream_for(&model) {
            prop_assert_eq!(kind == MatchKind::Exact, pairs.iter().any(|(k, _)| k == &model));
        }
    }

    #[test]
    fn an_exact_mapping_always_wins(
        pairs in proptest::collection::vec(mapping(), 0..8),
        model in name(),
    ) {
        let mut table: BTreeMap<String, String> = pairs.into_iter().collect();
        table.insert(model.clone(), "pinned".to_owned());
        let refs: Vec<(&str, &str)> = table.iter().map(|(k, u)| (k.as_str(), u.as_str())).collect();
        let models = backend("b", &refs);
        prop_assert_eq!(
            models.upstream_for(&model),
            Some((UpstreamModel::new("pinned"), MatchKind::Exact))
        );
    }

    #[test]
    fn a_longer_wildcard_beats_every_shorter_one(
        prefix in "[ab]{0,3}",
        extra in "[ab/]{1,3}",
        rest in "[ab]{0,3}",
    ) {
        let long = format!("{prefix}{extra}");
        let models = backend("b", &[
            (&format!("{prefix}*"), "short"),
            (&format!("{long}*"), "long"),
            ("*", "any"),
        ]);
        let resolved = upstream(&models, &format!("{long}{rest}"));
        prop_assert_eq!(resolved.as_deref(), Some("long"));
    }
}
