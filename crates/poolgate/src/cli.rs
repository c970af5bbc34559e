//! The command line: `poolgate serve`, `poolgate backend list|add|remove`, and
//! `poolgate master-key rotate`. Every flag also reads an environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::{Config, LogFormat, Overrides};
use crate::crypto::{mask_secret, MasterKey, Sealer};
use crate::domain::{
    normalize_base_url, now_ms, validate_api_key, validate_model_name, validate_name, validate_rpm,
    validate_timeout, ApiKind, BackendId, BackendRecord, CanonicalModel, ModelMapping,
    ModelMappings, PersistedHealth, PoolName, Source, UpstreamModel,
};
use crate::error::InitError;
use crate::server::{self, MasterKeySource};

#[derive(Debug, Parser)]
#[command(
    name = "poolgate",
    version,
    about = "A self-hosted LLM API gateway: one OpenAI-compatible endpoint over many upstream keys, \
             with pools, fallbacks, rate limits and 429 cooldowns.",
    after_help = "Start the gateway: `poolgate serve` (see `poolgate serve --help`).\n\
  --listen ADDR      [env: POOLGATE_LISTEN]    default 127.0.0.1:8080\n\
  --data-dir DIR     [env: POOLGATE_DATA_DIR]  default ./poolgate-data\n\
  --config FILE      [env: POOLGATE_CONFIG]    optional TOML config\n\
  --database-url URL [env: POOLGATE_DATABASE_URL] default sqlite://<data-dir>/poolgate.db\n\
Secrets: POOLGATE_MASTER_KEY (base64 of 32 bytes), POOLGATE_ADMIN_TOKEN."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Manage upstream backends directly in the store while the gateway is stopped (use the admin
    /// API to change a running gateway).
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
    /// Manage the master key that encrypts upstream API keys.
    MasterKey {
        #[command(subcommand)]
        command: MasterKeyCommand,
    },
}

/// Options shared by every command that opens the store.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// Directory for the database, key file and admin token (created on first start)
    /// [default: ./poolgate-data].
    #[arg(long, env = "POOLGATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Optional TOML config file (listen address, data dir, pools, backends, tuning).
    #[arg(long, short = 'c', env = "POOLGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The database: `sqlite://PATH` [default: sqlite://<data-dir>/poolgate.db].
    #[arg(long, env = "POOLGATE_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// File holding the base64 master key, instead of POOLGATE_MASTER_KEY or <data-dir>/master.key.
    #[arg(long, env = "POOLGATE_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, short = 'l', env = "POOLGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log format [default: human].
    #[arg(long, env = "POOLGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// List backends (keys masked).
    List(StoreArgs),
    /// Add a backend.
    Add(AddBackendArgs),
    /// Remove a backend by id or name.
    Remove {
        /// Backend id (`bkd_…`) or name.
        backend: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Args)]
pub struct AddBackendArgs {
    /// Unique name.
    #[arg(long)]
    pub name: String,
    /// Base URL (OpenAI-compatible: including /v1).
    #[arg(long)]
    pub base_url: String,
    /// Environment variable holding the upstream API key (keeps it out of shell history).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: String,
    /// Wire format.
    #[arg(long, default_value = "openai", value_parser = ["openai", "anthropic"])]
    pub api: String,
    /// Pool.
    #[arg(long, default_value = "primary")]
    pub pool: String,
    /// Requests per minute (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub rpm: i64,
    /// Time to first byte, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: i64,
    /// Model mapping `canonical=upstream` (repeatable); `name` alone maps a model to itself.
    #[arg(long = "model", value_name = "CANONICAL[=UPSTREAM]")]
    pub models: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// Generate a new master key and re-encrypt every stored upstream key with it, in one
    /// transaction. Stop the gateway first.
    Rotate(StoreArgs),
}

fn load_config(
    store: &StoreArgs,
    listen: Option<String>,
    log_format: Option<LogFormat>,
) -> Result<Config, InitError> {
    Config::load(
        store.config.as_deref(),
        Overrides {
            listen,
            data_dir: store.data_dir.clone(),
            database_url: store.database_url.clone(),
            master_key_file: store.master_key_file.clone(),
            log_format,
        },
    )
}

impl ServeArgs {
    pub fn config(&self) -> Result<Config, InitError> {
        load_config(&self.store, self.listen.clone(), self.log_format)
    }
}

/// Runs a non-serve command.
pub async fn run_admin_command(command: Command) -> Result<(), InitError> {
    match command {
        Command::Serve(_) => Err(InitError::Invalid("`serve` is run by main".into())),
        Command::Backend { command } => match command {
            BackendCommand::List(args) => backend_list(&args).await,
            BackendCommand::Add(args) => backend_add(args).await,
            BackendCommand::Remove { backend, store } => backend_remove(&backend, &store).await,
        },
        Command::MasterKey {
            command: MasterKeyCommand::Rotate(args),
        } => rotate(&args).await,
    }
}

/// The config of a non-serve command: its data dir must exist already.
fn existing_store_config(args: &StoreArgs) -> Result<Config, InitError> {
    let config = load_config(args, None, None)?;
    if let Some(path) = config.database_url.sqlite_path() {
        if !path.exists() {
            return Err(InitError::Invalid(format!(
                "no poolgate database at {} (start `poolgate serve` once, or pass --data-dir)",
                path.display()
            )));
        }
    }
    Ok(config)
}

async fn backend_list(args: &StoreArgs) -> Result<(), InitError> {
    let config = existing_store_config(args)?;
    let (store, _, _) = server::open_store(&config).await?;
    let backends = store.config.list_backends().await?;
    if backends.is_empty() {
        println!("no backends");
    }
    for b in backends {
        let models: Vec<String> = b
            .model_mappings
            .iter()
            .map(|(k, v)| format!("{k}={}", v.upstream_model))
            .collect();
        println!(
            "{}\t{}\t{}\t{}\tpool={}\trpm={}\t{}\tkey={}\tmodels={}",
            b.id,
            b.name,
            b.api.as_str(),
            b.api_base_url,
            b.pool,
            b.rpm_limit,
            if b.enabled { "enabled" } else { "disabled" },
            b.api_key_mask,
            models.join(",")
        );
    }
    Ok(())
}

async fn backend_add(args: AddBackendArgs) -> Result<(), InitError> {
    let invalid = |e: crate::domain::Invalid| InitError::Invalid(e.to_string());
    validate_name("name", &args.name).map_err(invalid)?;
    let api_base_url = normalize_base_url("base-url", &args.base_url).map_err(invalid)?;
    let key = std::env::var(&args.api_key_env).map_err(|_| {
        InitError::Invalid(format!(
            "environment variable `{}` is not set",
            args.api_key_env
        ))
    })?;
    validate_api_key("api-key", &key).map_err(invalid)?;
    let mut model_mappings = ModelMappings::new();
    for entry in &args.models {
        let (canonical, upstream) = entry.split_once('=').unwrap_or((entry, entry));
        validate_model_name("model", canonical).map_err(invalid)?;
        validate_model_name("model", upstream).map_err(invalid)?;
        model_mappings.insert(
            CanonicalModel::new(canonical),
            ModelMapping {
                upstream_model: UpstreamModel::new(upstream),
            },
        );
    }
    // `add` may create the store (provisioning before the first start).
    let config = load_config(&args.store, None, None)?;
    server::ensure_data_dir(&config.data_dir)?;
    let _lock = server::lock_data_dir(&config.data_dir)?;
    let (store, sealer, _) = server::open_store(&config).await?;
    let pool = PoolName::new(args.pool.clone());
    if store.config.find_pool(&pool).await?.is_none() {
        return Err(InitError::Invalid(format!(
            "pool `{}` does not exist",
            args.pool
        )));
    }
    let id = BackendId::generate();
    let sealed = sealer
        .seal(id.as_str(), &key)
        .map_err(|e| InitError::MasterKey(e.to_string()))?;
    let now = now_ms();
    let record = BackendRecord {
        id: id.clone(),
        name: args.name.clone(),
        label: args.name,
        api_base_url,
        api_key_sealed: sealed,
        api_key_mask: mask_secret(&key),
        api: ApiKind::parse(&args.api).unwrap_or(ApiKind::Openai),
        timeout_seconds: validate_timeout("timeout", args.timeout).map_err(invalid)?,
        rpm_limit: validate_rpm("rpm", args.rpm).map_err(invalid)?,
        weight: 1,
        pool,
        enabled: true,
        model_mappings,
        source: Source::Api,
        metadata: serde_json::json!({}),
        health: PersistedHealth::default(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    store.config.insert_backend(&record).await?;
    println!("added backend {id}");
    Ok(())
}

async fn backend_remove(which: &str, args: &StoreArgs) -> Result<(), InitError> {
    let config = existing_store_config(args)?;
    let _lock = server::lock_data_dir(&config.data_dir)?;
    let (store, _, _) = server::open_store(&config).await?;
    let backends = store.config.list_backends().await?;
    let found = backends
        .iter()
        .find(|b| b.id.as_str() == which || b.name == which)
        .ok_or_else(|| InitError::Invalid(format!("no backend with id or name `{which}`")))?;
    store.config.delete_backend(&found.id).await?;
    println!("removed backend {} ({})", found.id, found.name);
    Ok(())
}

async fn rotate(args: &StoreArgs) -> Result<(), InitError> {
    let config = existing_store_config(args)?;
    let _lock = server::lock_data_dir(&config.data_dir)?;
    let (store, old, source) = server::open_store(&config).await?;
    let new_version = old.version() + 1;
    let new_key = MasterKey::generate();
    let new_key_text = new_key.to_base64();
    let new_fingerprint = new_key.fingerprint();
    let new = Sealer::new(new_key, new_version);
    let backends = store.config.list_backends().await?;
    let mut sealed = Vec::with_capacity(backends.len());
    for backend in &backends {
        let plain = old
            .open(backend.id.as_str(), &backend.api_key_sealed)
            .map_err(|e| InitError::MasterKey(format!("backend `{}`: {e}", backend.name)))?;
        let resealed = new
            .seal(backend.id.as_str(), plain.expose_secret())
            .map_err(|e| InitError::MasterKey(e.to_string()))?;
        sealed.push((backend.id.clone(), resealed));
    }
    // The new key is on disk before the database depends on it.
    let staged = match &source {
        MasterKeySource::File(path) => {
            let staged = path.with_extension("key.new");
            server::write_secret_file(&staged, new_key_text.expose_secret())?;
            Some((staged, path.clone()))
        }
        MasterKeySource::Env => None,
    };
    store
        .config
        .replace_sealed_keys(
            &sealed,
            &[
                ("master_key_fingerprint", new_fingerprint.clone()),
                ("master_key_version", new_version.to_string()),
            ],
        )
        .await?;
    match staged {
        Some((staged, path)) => {
            std::fs::rename(&staged, &path)
                .map_err(|e| InitError::io(format!("replacing {}", path.display()), e))?;
            println!(
                "rotated the master key to version {new_version} (fingerprint {new_fingerprint}); \
                 re-encrypted {} upstream keys; new key written to {}",
                sealed.len(),
                path.display()
            );
        }
        None => {
            println!(
                "rotated the master key to version {new_version} (fingerprint {new_fingerprint}); \
                 re-encrypted {} upstream keys.\nSet {} to the new key before the next start:\n{}",
                sealed.len(),
                server::MASTER_KEY_ENV,
                new_key_text.expose_secret()
            );
        }
    }
    Ok(())
}
