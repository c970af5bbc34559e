//! `/admin/api/cluster`: how this instance runs with the others — its id, the database and
//! whether changes made elsewhere reach it, where its runtime state lives (`local`, `shared`
//! with the other instances through Redis, or `degraded`: Redis unreachable, limits from this
//! instance's share), the usage writer's buffer, and per backend the cooldown this instance
//! sees and the requests in flight here and across the cluster.

use axum::extract::State;
use axum::response::IntoResponse;
use futures_util::future::join_all;
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ErrorBody};
use crate::control::{ControlPlane, UsageWriterView};
use crate::domain::BackendStatus;
use crate::state::DataPlane;

/// Answer of `GET /admin/api/cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    /// This instance (`POOLGATE_INSTANCE_ID`, default `<hostname>-<pid>`).
    pub instance_id: String,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
    pub config_feed: ConfigFeedView,
    pub runtime_state: RuntimeStateView,
    pub usage_writer: UsageWriterView,
    pub backends: Vec<BackendRuntimeView>,
}

/// How configuration changes made on other instances reach this one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigFeedView {
    /// `local` (SQLite: only this instance writes) or `postgres` (`LISTEN/NOTIFY` plus a
    /// periodic version check).
    pub kind: &'static str,
    /// Whether the listening connection is up.
    pub connected: bool,
    /// The configuration version this instance's snapshot was built from (PostgreSQL).
    pub snapshot_version: Option<i64>,
}

/// Where rate limits, cooldowns and probe slots are decided.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuntimeStateView {
    /// `local` (no Redis), `shared` (every instance together, through Redis) or `degraded`
    /// (Redis unreachable: this instance admits from its share of each limit).
    pub mode: &'static str,
    /// Instances seen alive in the registry (1 without Redis).
    pub live_instances: u32,
    /// Whether cooldown changes of other instances reach this one as they happen.
    pub change_feed_connected: bool,
    /// Limits refuse (503 `limiter_unavailable`) instead of using the share while degraded.
    pub fail_closed: bool,
}

/// One backend's runtime as this instance sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendRuntimeView {
    pub id: String,
    pub name: String,
    pub status: BackendStatus,
    pub cooldown_remaining_ms: Option<u64>,
    pub consecutive_429_count: u32,
    /// Requests in flight from this instance.
    pub in_flight_here: u32,
    /// Attempts in flight on the backend across every live instance, as each last published
    /// them with its heartbeat (shared mode only).
    pub in_flight_cluster: Option<u32>,
}

/// This instance in the cluster.
#[utoipa::path(get, path = "/cluster", operation_id = "get_cluster", tag = "cluster",
    responses((status = 200, body = ClusterView), (status = 401, body = ErrorBody)))]
pub async fn show(
    State(control): State<ControlPlane>,
    State(data): State<DataPlane>,
) -> Result<impl IntoResponse, ApiError> {
    let cluster = control.cluster();
    let runtime_state = match cluster {
        Some(cluster) => RuntimeStateView {
            mode: cluster.shared.mode().as_str(),
            live_instances: cluster.shared.live_instances(),
            change_feed_connected: cluster.shared.change_feed_connected(),
            fail_closed: cluster.fail_closed,
        },
        None => RuntimeStateView {
            mode: "local",
            live_instances: 1,
            change_feed_connected: true,
            fail_closed: false,
        },
    };
    let live = data.live();
    let now = Instant::now();
    let in_flight_cluster = join_all(live.backends.iter().map(|backend| async move {
        match cluster {
            Some(cluster) => cluster.shared.in_flight(backend.id()).await,
            None => None,
        }
    }))
    .await;
    let backends = live
        .backends
        .iter()
        .zip(in_flight_cluster)
        .map(|(backend, in_flight_cluster)| {
            let snapshot = backend.runtime.snapshot(now);
            BackendRuntimeView {
                id: backend.id().to_string(),
                name: backend.record.name.clone(),
                status: backend.status(now),
                cooldown_remaining_ms: snapshot.cooldown_until.filter(|until| *until > now).map(
                    |until| {
                        u64::try_from(until.saturating_duration_since(now).as_millis())
                            .unwrap_or(u64::MAX)
                    },
                ),
                consecutive_429_count: snapshot.consecutive_429,
                in_flight_here: snapshot.in_flight,
                in_flight_cluster,
            }
        })
        .collect();
    let connected = control.change_feed_connected();
    Ok(axum::Json(ClusterView {
        instance_id: control.instance_id().to_owned(),
        database: control.database_kind(),
        config_feed: ConfigFeedView {
            kind: if connected.is_some() {
                "postgres"
            } else {
                "local"
            },
            connected: connected.unwrap_or(true),
            snapshot_version: control.snapshot_version(),
        },
        runtime_state,
        usage_writer: control.usage_writer(),
        backends,
    }))
}
