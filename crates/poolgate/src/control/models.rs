//! Changes to what model names mean and how they are routed: model aliases (admin API and the
//! config file's `[aliases]`) and the sticky-routing settings (admin API and `[routing.sticky]`).
//! Each is validated against the whole table it joins, written in one transaction, published,
//! and rebuilt into the snapshot like every other change.

use std::collections::BTreeMap;

use super::changes::Change;
use super::{ControlError, ControlPlane};
use crate::domain::models::validate_alias_table;
use crate::domain::sticky::{StickyInput, StickySettings, StickyView};
use crate::domain::{now_ms, AliasRecord, CanonicalModel, Invalid, Source};

/// The settings key sticky routing is stored under.
pub(super) const STICKY_SETTING: &str = "routing.sticky";

/// The stored sticky settings (defaults when none or unreadable, with a log line).
pub(super) fn sticky_from_stored(stored: Option<&str>) -> StickySettings {
    let Some(text) = stored else {
        return StickySettings::default();
    };
    let parsed = serde_json::from_str::<StickyView>(text)
        .map_err(|error| error.to_string())
        .and_then(|view| {
            StickyInput::from(view)
                .validate(&|field| field.to_owned())
                .map_err(|invalid| invalid.to_string())
        });
    parsed.unwrap_or_else(|error| {
        tracing::error!(%error, "stored sticky-routing settings are unreadable; sticky routing is off");
        StickySettings::default()
    })
}

fn alias_not_found(alias: &str) -> ControlError {
    ControlError::NotFound {
        message: format!("alias `{alias}` does not exist"),
        code: "alias_not_found",
    }
}

impl ControlPlane {
    /// Every alias, by name.
    pub async fn aliases(&self) -> Result<Vec<AliasRecord>, ControlError> {
        Ok(self.inner.stores.config.list_aliases().await?)
    }

    /// Creates or changes the alias `alias` → `target` (`source = api`). Refused when it would
    /// point at an alias, be pointed at by one, name itself, or use a wildcard.
    pub async fn set_alias(&self, alias: &str, target: &str) -> Result<AliasRecord, ControlError> {
        let _write = self.inner.writes.lock().await;
        let stored = self.inner.stores.config.list_aliases().await?;
        let mut table: BTreeMap<String, CanonicalModel> = stored
            .iter()
            .map(|a| (a.alias.clone(), a.target.clone()))
            .collect();
        table.insert(alias.to_owned(), CanonicalModel::new(target));
        validate_alias_table(&table, &|name| {
            if name == alias {
                "alias".to_owned()
            } else {
                format!("aliases.{name}")
            }
        })?;
        let now = now_ms();
        let record = AliasRecord {
            alias: alias.to_owned(),
            target: CanonicalModel::new(target),
            source: Source::Api,
            created_at_ms: stored
                .iter()
                .find(|a| a.alias == alias)
                .map_or(now, |a| a.created_at_ms),
            updated_at_ms: now,
        };
        self.inner.stores.config.put_alias(&record).await?;
        self.commit(Change::AliasSet(alias.to_owned())).await;
        self.warn_if_shadowing(alias);
        tracing::info!(alias, target, "model alias set");
        Ok(record)
    }

    /// Deletes an alias.
    pub async fn delete_alias(&self, alias: &str) -> Result<(), ControlError> {
        let _write = self.inner.writes.lock().await;
        if !self.inner.stores.config.delete_alias(alias).await? {
            return Err(alias_not_found(alias));
        }
        self.commit(Change::AliasDeleted(alias.to_owned())).await;
        tracing::info!(alias, "model alias deleted");
        Ok(())
    }

    /// The sticky-routing settings in force.
    pub async fn sticky(&self) -> Result<StickySettings, ControlError> {
        let stored = self.inner.stores.config.get_setting(STICKY_SETTING).await?;
        Ok(sticky_from_stored(stored.as_deref()))
    }

    /// Replaces the sticky-routing settings (absent fields take their defaults).
    pub async fn set_sticky(&self, input: StickyInput) -> Result<StickySettings, ControlError> {
        let _write = self.inner.writes.lock().await;
        let settings = input.validate(&|field| field.to_owned())?;
        self.store_sticky(&settings).await?;
        self.commit(Change::StickyChanged).await;
        tracing::info!(enabled = settings.enabled, "sticky routing changed");
        Ok(settings)
    }

    async fn store_sticky(&self, settings: &StickySettings) -> Result<(), ControlError> {
        let text = serde_json::to_string(&settings.view())
            .map_err(|error| ControlError::Invalid(Invalid::new("sticky", error.to_string())))?;
        Ok(self
            .inner
            .stores
            .config
            .put_setting(STICKY_SETTING, &text)
            .await?)
    }

    /// The config file's aliases as records to write (part of the config sync, under its write
    /// lock, checked before anything is written): `source = config`, keeping creation times; an
    /// alias created through the API with the same name, or a table that would break the alias
    /// rules, is refused.
    pub(super) async fn config_aliases(&self) -> Result<Vec<AliasRecord>, ControlError> {
        let config = &self.inner.config;
        let stored = self.inner.stores.config.list_aliases().await?;
        let now = now_ms();
        let mut records = Vec::with_capacity(config.aliases.len());
        for (alias, target) in &config.aliases {
            let previous = stored.iter().find(|a| &a.alias == alias);
            if previous.is_some_and(|a| a.source == Source::Api) {
                return Err(ControlError::Conflict {
                    message: format!(
                        "alias `{alias}` in the config file has the name of an alias created \
                         through the API; delete one of them"
                    ),
                    param: "alias",
                });
            }
            records.push(AliasRecord {
                alias: alias.clone(),
                target: target.clone(),
                source: Source::Config,
                created_at_ms: previous.map_or(now, |a| a.created_at_ms),
                updated_at_ms: now,
            });
        }
        // The whole table as it will be: the file's aliases and the API's.
        let mut table: BTreeMap<String, CanonicalModel> = stored
            .iter()
            .filter(|a| a.source == Source::Api)
            .map(|a| (a.alias.clone(), a.target.clone()))
            .collect();
        table.extend(config.aliases.clone());
        validate_alias_table(&table, &|alias| format!("aliases.{alias}"))?;
        Ok(records)
    }

    /// Writes the config file's aliases (prepared by [`Self::config_aliases`]) and its
    /// `[routing.sticky]`, if any.
    pub(super) async fn write_config_routing(
        &self,
        aliases: &[AliasRecord],
    ) -> Result<(), ControlError> {
        self.inner
            .stores
            .config
            .sync_config_aliases(aliases)
            .await?;
        if let Some(sticky) = &self.inner.config.sticky {
            self.store_sticky(sticky).await?;
        }
        Ok(())
    }

    /// An alias named like an exact mapping hides that mapping: worth a warning.
    fn warn_if_shadowing(&self, alias: &str) {
        let live = self.live();
        let shadowed = live
            .backends
            .iter()
            .filter(|b| b.record.model_mappings.contains_key(alias))
            .count();
        if shadowed > 0 {
            tracing::warn!(
                alias,
                backends = shadowed,
                "the alias has the name of a mapped model; requests for it follow the alias"
            );
        }
    }
}
