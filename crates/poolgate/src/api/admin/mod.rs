//! The admin API under `/admin/api`: backends, pools, client keys, model aliases, sticky
//! routing, usage, statistics and this instance's place in a cluster. Every
//! route requires the admin token except those in [`super::PUBLIC_ROUTES`]; the OpenAPI document
//! is generated from the handlers' annotations (utoipa), so it lists exactly the routes served.

pub mod backends;
pub mod cluster;
pub mod keys;
pub mod pools;
pub mod prices;
pub mod routing;
pub mod usage;

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::state::DataPlane;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "poolgate admin API",
        description = "Manage upstream backends, pools, client keys, model aliases and sticky \
                       routing; set prices and spend limits; read usage, cost and statistics. \
                       Every route needs `Authorization: Bearer <admin token>`."
    ),
    modifiers(&BearerAuth),
    security(("admin_token" = []))
)]
struct AdminDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The admin routes (paths relative to `/admin/api`) and their OpenAPI document.
pub fn router(data: DataPlane) -> (Router<AppState>, OpenApiDoc) {
    let (protected, mut doc) = OpenApiRouter::with_openapi(AdminDoc::openapi())
        .routes(routes!(backends::list, backends::create))
        .routes(routes!(
            backends::get_one,
            backends::update,
            backends::delete
        ))
        .routes(routes!(backends::reset_cooldown))
        .routes(routes!(pools::list, pools::create))
        .routes(routes!(pools::stats))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke, keys::update))
        .routes(routes!(usage::list))
        .routes(routes!(usage::stats))
        .routes(routes!(cluster::show))
        .routes(routes!(routing::list_aliases))
        .routes(routes!(routing::set_alias, routing::delete_alias))
        .routes(routes!(routing::get_sticky, routing::set_sticky))
        .routes(routes!(prices::list))
        .routes(routes!(prices::set, prices::delete))
        .split_for_parts();
    merge_inline_all_of(&mut doc);
    // Paths in the document are absolute, as clients call them.
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (format!("/admin/api{path}"), item))
        .collect();
    let protected = protected.layer(axum::middleware::from_fn_with_state(
        data,
        super::auth::require_admin,
    ));
    // Rendered once; every request shares the bytes.
    let document = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
    let router =
        Router::new()
            .route(
                "/openapi.json",
                get(move || {
                    let document = document.clone();
                    async move {
                        ([(header::CONTENT_TYPE, "application/json")], document).into_response()
                    }
                }),
            )
            .merge(protected);
    (router, doc)
}

/// A body read as one flat object (`#[serde(flatten)]`, as [`backends::WithSpendCap`]) is
/// described by utoipa as `allOf` of its parts; the backend part refuses unknown fields
/// (`additionalProperties: false`), which under JSON Schema refuses the other part's fields too.
/// An `allOf` of inline objects with no property in common becomes the one object it stands
/// for: every property, every required field, the first part's stance on other fields.
fn merge_inline_all_of(doc: &mut OpenApiDoc) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for schema in components.schemas.values_mut() {
        let RefOr::T(Schema::AllOf(all_of)) = schema else {
            continue;
        };
        let objects: Option<Vec<&Object>> = all_of
            .items
            .iter()
            .map(|item| match item {
                RefOr::T(Schema::Object(object)) => Some(object),
                _ => None,
            })
            .collect();
        let Some((first, rest)) = objects.as_deref().and_then(<[&Object]>::split_first) else {
            continue;
        };
        // Parts that share a property would need their schemas intersected: left as they are.
        let mut names = std::collections::BTreeSet::new();
        let disjoint = std::iter::once(first)
            .chain(rest)
            .flat_map(|part| part.properties.keys())
            .all(|name| names.insert(name));
        if !disjoint {
            continue;
        }
        let mut merged = (*first).clone();
        for part in rest {
            merged.properties.extend(part.properties.clone());
            merged.required.extend(part.required.iter().cloned());
        }
        if all_of.description.is_some() {
            merged.description.clone_from(&all_of.description);
        }
        *schema = RefOr::T(Schema::Object(merged));
    }
}

/// The OpenAPI document of the admin API (also served at `/admin/api/openapi.json`).
pub fn openapi(data: DataPlane) -> OpenApiDoc {
    router(data).1
}
