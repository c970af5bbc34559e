//! Reading usage records back: which records to list ([`UsageFilter`], also the query string of
//! `GET /admin/api/usage`) and a page of them ([`UsagePage`]).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::UsageRecord;

/// Which usage records to list.
#[derive(Clone, Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct UsageFilter {
    /// Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to_ms: Option<i64>,
    pub backend_id: Option<String>,
    pub model: Option<String>,
    /// A client key id (`admin` for requests made with the admin token).
    pub client_key_id: Option<String>,
    /// Only records with this outcome (`success`, `error`, `stream_error`, `cancelled`).
    pub outcome: Option<String>,
    /// Only records whose HTTP status is at least this (e.g. 400 for "errors only").
    pub status_min: Option<u16>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<u32>,
    /// Return records older than this cursor (`next_cursor` of the previous page).
    pub before: Option<i64>,
}

/// A page of usage records, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UsagePage {
    pub records: Vec<UsageRecord>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<i64>,
}
