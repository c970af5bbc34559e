//! The response-affinity half of the SQLite store: which backend made each Responses API
//! response, upserted and deleted in batches by the control plane's affinity writer, loaded at
//! start, purged when expired.

use async_trait::async_trait;
use sqlx::Row;

use super::{corrupt, SqliteStore};
use crate::control::store::{AffinityStore, StoreError};
use crate::domain::{BackendId, ResponseOwnerRecord};

#[async_trait]
impl AffinityStore for SqliteStore {
    async fn save_response_owners(
        &self,
        owners: &[ResponseOwnerRecord],
        removed: &[String],
    ) -> Result<(), StoreError> {
        if owners.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // 5 parameters per row: 100 rows per statement.
        for chunk in owners.chunks(100) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO response_owners (response_id, backend_id, caller, created_at, \
                 expires_at) ",
            );
            insert.push_values(chunk, |mut row, owner| {
                row.push_bind(owner.response_id.clone())
                    .push_bind(owner.backend_id.to_string())
                    .push_bind(owner.caller.clone())
                    .push_bind(owner.created_at_ms)
                    .push_bind(owner.expires_at_ms);
            });
            insert.push(
                " ON CONFLICT (response_id) DO UPDATE SET backend_id = excluded.backend_id, \
                 caller = excluded.caller, expires_at = excluded.expires_at",
            );
            insert.build().execute(&mut *tx).await?;
        }
        for id in removed {
            sqlx::query("DELETE FROM response_owners WHERE response_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_response_owners(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<ResponseOwnerRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT response_id, backend_id, caller, created_at, expires_at FROM response_owners \
             WHERE expires_at > ? ORDER BY created_at DESC LIMIT ?",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ResponseOwnerRecord {
                    response_id: row.try_get("response_id")?,
                    backend_id: BackendId::new(row.try_get::<String, _>("backend_id")?),
                    caller: row.try_get("caller")?,
                    created_at_ms: row.try_get("created_at")?,
                    expires_at_ms: row.try_get("expires_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|error| corrupt("response_owners", error))
    }

    async fn purge_response_owners(&self, now_ms: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM response_owners WHERE expires_at <= ?")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}
