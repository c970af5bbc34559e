//! The response-affinity half of the PostgreSQL store: which backend made each Responses API
//! response, upserted and deleted in batches by the control plane's affinity writer, loaded at
//! start, purged when expired. Each batch is also announced on [`OWNERS_CHANNEL`] in its
//! transaction (delivered at commit): the other instances add the owners to their in-memory maps,
//! so a follow-up sent to any instance reaches the backend that made the response without a
//! database read on the request path.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::PgStore;
use crate::control::store::rows::response_owner_from_row;
use crate::control::store::{AffinityStore, StoreError};
use crate::domain::{BackendId, ResponseOwnerRecord};

/// The channel each stored batch of owners is announced on (an [`OwnerNotice`] as JSON).
pub const OWNERS_CHANNEL: &str = "poolgate_owners";

/// PostgreSQL refuses a notification payload of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;

/// One notification: owners stored (`[response id, backend id, caller, created, expires]`) and
/// response ids deleted.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerNotice {
    #[serde(default, rename = "o")]
    owners: Vec<(String, String, String, i64, i64)>,
    #[serde(default, rename = "r")]
    removed: Vec<String>,
}

impl OwnerNotice {
    /// Reads a notification's payload.
    pub fn parse(payload: &str) -> Option<OwnerNotice> {
        serde_json::from_str(payload).ok()
    }

    /// The owners it announces.
    pub fn owners(&self) -> impl Iterator<Item = ResponseOwnerRecord> + '_ {
        self.owners.iter().map(
            |(id, backend, caller, created, expires)| ResponseOwnerRecord {
                response_id: id.clone(),
                backend_id: BackendId::new(backend.as_str()),
                caller: caller.clone(),
                created_at_ms: *created,
                expires_at_ms: *expires,
            },
        )
    }

    /// The response ids it says were deleted.
    pub fn removed(&self) -> &[String] {
        &self.removed
    }

    fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.removed.is_empty()
    }

    /// The payloads announcing `owners` and `removed`, each under PostgreSQL's limit (an entry
    /// too long for one payload on its own is left out: the instances that miss it route the
    /// follow-up like an unknown id).
    fn payloads(owners: &[ResponseOwnerRecord], removed: &[String]) -> Vec<String> {
        let mut payloads = Vec::new();
        let mut notice = OwnerNotice::default();
        let mut size = 16;
        let mut push = |notice: &mut OwnerNotice, size: &mut usize, entry_size: usize| {
            if *size + entry_size > MAX_PAYLOAD && !notice.is_empty() {
                if let Ok(text) = serde_json::to_string(&*notice) {
                    payloads.push(text);
                }
                *notice = OwnerNotice::default();
                *size = 16;
            }
            *size += entry_size;
        };
        for owner in owners {
            // Quotes, commas, brackets and two numbers of at most 20 digits; escapes are rare.
            let entry_size =
                owner.response_id.len() + owner.backend_id.as_str().len() + owner.caller.len() + 60;
            if entry_size > MAX_PAYLOAD / 2 {
                tracing::warn!(
                    response_id_len = owner.response_id.len(),
                    "a response owner too long to announce; other instances will not know it"
                );
                continue;
            }
            push(&mut notice, &mut size, entry_size);
            notice.owners.push((
                owner.response_id.clone(),
                owner.backend_id.to_string(),
                owner.caller.clone(),
                owner.created_at_ms,
                owner.expires_at_ms,
            ));
        }
        for id in removed {
            let entry_size = id.len() + 8;
            if entry_size > MAX_PAYLOAD / 2 {
                continue;
            }
            push(&mut notice, &mut size, entry_size);
            notice.removed.push(id.clone());
        }
        if !notice.is_empty() {
            if let Ok(text) = serde_json::to_string(&notice) {
                payloads.push(text);
            }
        }
        payloads
    }
}

#[async_trait]
impl AffinityStore for PgStore {
    async fn save_response_owners(
        &self,
        owners: &[ResponseOwnerRecord],
        removed: &[String],
    ) -> Result<(), StoreError> {
        if owners.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if !owners.is_empty() {
            macro_rules! column {
                ($map:expr) => {
                    owners.iter().map($map).collect::<Vec<_>>()
                };
            }
            // A response id twice in one batch would make ON CONFLICT fail: the writer keeps
            // the last change per id, but a batch may still repeat an id remembered twice.
            sqlx::query(
                "INSERT INTO response_owners (response_id, backend_id, caller, created_at, \
                 expires_at) \
                 SELECT DISTINCT ON (id) id, backend, caller, created, expires FROM \
                 UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[]) \
                 WITH ORDINALITY AS t(id, backend, caller, created, expires, n) \
                 ORDER BY id, n DESC \
                 ON CONFLICT (response_id) DO UPDATE SET backend_id = excluded.backend_id, \
                 caller = excluded.caller, expires_at = excluded.expires_at",
            )
            .bind(column!(|o| o.response_id.clone()))
            .bind(column!(|o| o.backend_id.to_string()))
            .bind(column!(|o| o.caller.clone()))
            .bind(column!(|o| o.created_at_ms))
            .bind(column!(|o| o.expires_at_ms))
            .execute(&mut *tx)
            .await?;
        }
        if !removed.is_empty() {
            sqlx::query("DELETE FROM response_owners WHERE response_id = ANY($1)")
                .bind(removed)
                .execute(&mut *tx)
                .await?;
        }
        for payload in OwnerNotice::payloads(owners, removed) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(OWNERS_CHANNEL)
                .bind(payload)
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
             WHERE expires_at > $1 ORDER BY created_at DESC LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(response_owner_from_row).collect()
    }

    async fn purge_response_owners(&self, now_ms: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM response_owners WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> ResponseOwnerRecord {
        ResponseOwnerRecord {
            response_id: id.to_owned(),
            backend_id: BackendId::new("bkd_a"),
            caller: "key_1".into(),
            created_at_ms: 1,
            expires_at_ms: 2,
        }
    }

    #[test]
    fn notices_round_trip_and_stay_under_the_payload_limit() {
        let owners: Vec<_> = (0..500).map(|i| owner(&format!("resp_{i:060}"))).collect();
        let removed = vec!["resp_gone".to_owned()];
        let payloads = OwnerNotice::payloads(&owners, &removed);
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        let mut gone = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 8_000, "{}", payload.len());
            let notice = OwnerNotice::parse(payload).unwrap();
            seen.extend(notice.owners());
            gone.extend(notice.removed().iter().cloned());
        }
        assert_eq!(seen, owners);
        assert_eq!(gone, removed);
        assert!(OwnerNotice::payloads(&[], &[]).is_empty());
        let huge = owner(&"x".repeat(10_000));
        assert!(OwnerNotice::payloads(&[huge], &[]).is_empty());
    }
}
