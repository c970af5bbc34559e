//! The route table of one snapshot: requested model name → [`Route`]. Aliases resolve first;
//! then the most specific mapping wins across backends ([`super::models`]). Routes of exactly
//! mapped models are built with the snapshot; a model only wildcards serve gets its route on
//! first use, kept in a bounded cache for the snapshot's life — so a route (whose tier cursors
//! do the balancing) is never rebuilt per request.
//!
//! Each route carries its metric series, resolved as it is built: labelled by the canonical
//! model when mapped exactly, by the wildcard that matched otherwise ([`MatchKind::label`]), so
//! the names clients make up never become series.

use std::collections::HashMap;
use std::sync::Arc;

use hashlink::LruCache;
use parking_lot::Mutex;

use super::models::{BackendModels, ListedModel, MatchKind, ModelCatalog, Resolution};
use super::{LiveBackend, Member, Route, Tier};
use crate::domain::{BackendId, CanonicalModel, Pool};
use crate::telemetry::Observer;

/// Wildcard-resolved routes kept per snapshot (names clients made up included).
const RESOLVED_CAPACITY: usize = 4096;

/// A route found for a requested name.
#[derive(Clone)]
pub struct Routed {
    /// The name after alias resolution: what usage records and limits see.
    pub canonical: CanonicalModel,
    pub route: Arc<Route>,
}

/// Every route of one snapshot.
pub struct RouteTable {
    catalog: ModelCatalog,
    exact: HashMap<CanonicalModel, Arc<Route>>,
    /// Routable backends by id, and the pools in priority order (to build wildcard routes).
    backends: HashMap<BackendId, Arc<LiveBackend>>,
    order: Vec<BackendId>,
    pools: Vec<Pool>,
    resolved: Mutex<LruCache<CanonicalModel, Option<Arc<Route>>>>,
    /// Resolves the series of the routes built (none in the empty default table, which has no
    /// routes to build).
    observer: Option<Observer>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            catalog: ModelCatalog::default(),
            exact: HashMap::new(),
            backends: HashMap::new(),
            order: Vec::new(),
            pools: Vec::new(),
            resolved: Mutex::new(LruCache::new(RESOLVED_CAPACITY)),
            observer: None,
        }
    }
}

impl RouteTable {
    /// The table of the enabled, readable backends; `aliases` are valid (checked when written —
    /// a broken table is logged and left out rather than failing the snapshot). `observer`
    /// resolves each route's series.
    pub fn build(
        backends: &[Arc<LiveBackend>],
        pools: &[Pool],
        aliases: impl IntoIterator<Item = (String, CanonicalModel)>,
        observer: &Observer,
    ) -> RouteTable {
        let routable: Vec<&Arc<LiveBackend>> = backends
            .iter()
            .filter(|b| b.record.enabled && b.unreadable.is_none())
            .collect();
        let models = routable
            .iter()
            .filter_map(|b| match BackendModels::new(b.id().clone(), &b.record.model_mappings) {
                Ok(models) => Some(models),
                Err(error) => {
                    tracing::error!(backend = %b.id(), %error, "stored model mappings are invalid; backend left out of routing");
                    None
                }
            })
            .collect();
        let catalog = match ModelCatalog::new(aliases, models) {
            Ok(catalog) => catalog,
            Err(error) => {
                tracing::error!(%error, "stored model aliases are invalid; serving without them");
                let models = routable
                    .iter()
                    .filter_map(|b| {
                        BackendModels::new(b.id().clone(), &b.record.model_mappings).ok()
                    })
                    .collect();
                ModelCatalog::new([], models).unwrap_or_default()
            }
        };
        let mut table = RouteTable {
            catalog,
            backends: routable
                .iter()
                .map(|b| (b.id().clone(), Arc::clone(b)))
                .collect(),
            order: routable.iter().map(|b| b.id().clone()).collect(),
            pools: pools.to_vec(),
            observer: Some(observer.clone()),
            ..RouteTable::default()
        };
        let mut exact_names: Vec<String> = routable
            .iter()
            .flat_map(|b| b.record.model_mappings.keys())
            .filter(|name| !name.as_str().contains('*'))
            .map(|name| name.to_string())
            .collect();
        exact_names.sort();
        exact_names.dedup();
        for name in exact_names {
            let resolution = table.catalog.resolve(&name);
            // An alias of the same name wins over the mapping: not a route of its own.
            if resolution.via_alias {
                continue;
            }
            if let Some(route) = table.route_of(&resolution) {
                table.exact.insert(resolution.canonical, Arc::new(route));
            }
        }
        table
    }

    /// The route of a requested name (an alias, an exact name, or one a wildcard serves).
    pub fn route(&self, requested: &str) -> Option<Routed> {
        let canonical = self.catalog.canonical(requested);
        if let Some(route) = self.exact.get(&canonical) {
            return Some(Routed {
                canonical,
                route: Arc::clone(route),
            });
        }
        let mut resolved = self.resolved.lock();
        let route = match resolved.get(&canonical) {
            Some(route) => route.clone(),
            None => {
                let route = self
                    .route_of(&self.catalog.resolve(canonical.as_str()))
                    .map(Arc::new);
                resolved.insert(canonical.clone(), route.clone());
                route
            }
        };
        drop(resolved);
        route.map(|route| Routed { canonical, route })
    }

    /// Whether a requested name has a route, as [`RouteTable::route`] would find one, without
    /// building or keeping it: for looking a model up (`GET /v1/models/{model}`), whose names
    /// must not fill the cache of resolved routes.
    pub fn serves(&self, requested: &str) -> bool {
        let canonical = self.catalog.canonical(requested);
        if self.exact.contains_key(&canonical) {
            return true;
        }
        if let Some(cached) = self.resolved.lock().peek(&canonical) {
            return cached.is_some();
        }
        if self.observer.is_none() {
            return false;
        }
        let resolution = self.catalog.resolve(canonical.as_str());
        resolution.backends.iter().any(|resolved| {
            self.backends.get(&resolved.backend).is_some_and(|backend| {
                self.pools
                    .iter()
                    .any(|pool| pool.name == backend.record.pool)
            })
        })
    }

    /// How many resolved routes (or known misses) are kept.
    #[cfg(test)]
    pub(super) fn resolved_count(&self) -> usize {
        self.resolved.lock().len()
    }

    /// Whether a canonical model has a prebuilt (exact) route.
    pub fn contains_exact(&self, model: &str) -> bool {
        self.exact.contains_key(model)
    }

    /// The canonical name a requested name stands for (itself unless it is an alias).
    pub fn canonical(&self, requested: &str) -> CanonicalModel {
        self.catalog.canonical(requested)
    }

    /// What `/v1/models` lists.
    pub fn listed(&self) -> Vec<ListedModel> {
        self.catalog.listed()
    }

    /// The aliases in force.
    pub fn aliases(&self) -> impl Iterator<Item = (&String, &CanonicalModel)> {
        self.catalog.aliases().iter()
    }

    /// The pools in priority order, each with the resolved backends it holds.
    fn route_of(&self, resolution: &Resolution) -> Option<Route> {
        let observer = self.observer.as_ref()?;
        let model = resolution.canonical.as_str();
        let mut tiers = Vec::new();
        for pool in &self.pools {
            let members: Vec<Member> = self
                .order
                .iter()
                .filter_map(|id| {
                    let resolved = resolution.backends.iter().find(|r| &r.backend == id)?;
                    let backend = self.backends.get(id)?;
                    (backend.record.pool == pool.name).then(|| Member {
                        backend: Arc::clone(backend),
                        upstream_model: resolved.upstream_model.clone(),
                        telemetry: observer
                            .route(&resolved.matched.label(model), &backend.telemetry),
                    })
                })
                .collect();
            if !members.is_empty() {
                tiers.push(Tier::new(pool.clone(), members));
            }
        }
        // Every candidate matched alike (the most specific mapping wins): any one names the route.
        let matched = resolution
            .backends
            .first()
            .map_or(MatchKind::Exact, |resolved| resolved.matched);
        (!tiers.is_empty()).then(|| Route {
            tiers,
            telemetry: observer.model(&matched.label(model)),
        })
    }
}
