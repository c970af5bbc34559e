//! Changes to prices and spend limits (issue #11): admin-API prices over the config file's and
//! the embedded defaults, client keys' budgets and backends' monthly spend caps. Each is one
//! write and a rebuild of the snapshot, which publishes the merged price table and the spend
//! ledgers to the data plane.

use std::sync::Arc;

use super::changes::Change;
use super::{ControlError, ControlPlane};
use crate::domain::{now_ms, validate_model_name, BackendId, LimiterKind};
use crate::pricing::{BudgetLimits, ModelPrice, Nanodollars, PriceTable, SpendLimitRecord};

/// A change of a key's budgets: `None` = keep the window's limit, `Some(None)` = remove it.
#[derive(Clone, Copy, Debug, Default)]
pub struct BudgetPatch {
    pub daily: Option<Option<Nanodollars>>,
    pub monthly: Option<Option<Nanodollars>>,
    pub total: Option<Option<Nanodollars>>,
}

impl ControlPlane {
    /// The merged price table the data plane uses now.
    pub fn prices(&self) -> Arc<PriceTable> {
        Arc::clone(&self.live().prices)
    }

    /// Sets the admin-API price of an upstream model id (over the config file's and the
    /// default's, which show through again when it is deleted).
    pub async fn set_price(&self, model: &str, price: ModelPrice) -> Result<(), ControlError> {
        let _write = self.inner.writes.lock().await;
        validate_model_name("model", model)?;
        self.inner
            .stores
            .config
            .put_price(model, &price, now_ms())
            .await?;
        self.commit(Change::PriceSet(model.to_owned())).await;
        tracing::info!(%model, "price set");
        Ok(())
    }

    /// Removes the admin-API price of a model id; `NotFound` if it has none.
    pub async fn delete_price(&self, model: &str) -> Result<(), ControlError> {
        let _write = self.inner.writes.lock().await;
        if !self.inner.stores.config.delete_price(model).await? {
            return Err(ControlError::NotFound {
                message: format!(
                    "no price for `{model}` was set through the API (config-file and default \
                     prices cannot be deleted)"
                ),
                code: "price_not_found",
            });
        }
        self.commit(Change::PriceDeleted(model.to_owned())).await;
        tracing::info!(%model, "price deleted");
        Ok(())
    }

    /// Changes a client key's daily / monthly / total budget: each window given in `patch` is set
    /// (`Some(None)` removes its limit), the others stay.
    pub async fn update_key_budgets(
        &self,
        id: &str,
        patch: BudgetPatch,
    ) -> Result<BudgetLimits, ControlError> {
        let _write = self.inner.writes.lock().await;
        let exists = self
            .inner
            .stores
            .config
            .list_client_keys()
            .await?
            .iter()
            .any(|key| key.id == id && key.revoked_at_ms.is_none());
        if !exists {
            return Err(ControlError::NotFound {
                message: format!("no active key `{id}`"),
                code: "key_not_found",
            });
        }
        let stored = self
            .inner
            .stores
            .config
            .list_spend_limits()
            .await?
            .into_iter()
            .find(|record| record.kind == LimiterKind::ClientKey && record.id == id)
            .map(|record| record.limits)
            .unwrap_or_default();
        let limits = BudgetLimits {
            daily: patch.daily.unwrap_or(stored.daily),
            monthly: patch.monthly.unwrap_or(stored.monthly),
            total: patch.total.unwrap_or(stored.total),
        };
        self.write_spend_limits(LimiterKind::ClientKey, id, limits)
            .await?;
        Ok(limits)
    }

    /// Sets a backend's monthly spend cap (`None` = none).
    pub async fn set_backend_spend_cap(
        &self,
        id: &BackendId,
        cap: Option<Nanodollars>,
    ) -> Result<(), ControlError> {
        let _write = self.inner.writes.lock().await;
        if self.inner.stores.config.get_backend(id).await?.is_none() {
            return Err(ControlError::backend_not_found(id.as_str()));
        }
        self.write_spend_limits(
            LimiterKind::Backend,
            id.as_str(),
            BudgetLimits::monthly_cap(cap),
        )
        .await
    }

    async fn write_spend_limits(
        &self,
        kind: LimiterKind,
        id: &str,
        limits: BudgetLimits,
    ) -> Result<(), ControlError> {
        let record = SpendLimitRecord {
            kind,
            id: id.to_owned(),
            limits,
        };
        self.inner
            .stores
            .config
            .put_spend_limits(&record, now_ms())
            .await?;
        self.commit(Change::SpendLimitsSet(id.to_owned())).await;
        tracing::info!(kind = kind.as_str(), %id, %limits, "spend limits set");
        Ok(())
    }
}
