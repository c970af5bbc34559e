//! The command line: `poolgate serve`, `poolgate backend list|add|remove`, and
//! `poolgate master-key rotate`. Every flag also reads an environment variable. The commands that
//! change something go through the [`ControlPlane`], like the admin API.

use std::path::PathBuf;

use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, LogFormat, Overrides};
use crate::control::{ControlError, ControlPlane, NewKey, Rotation, MASTER_KEY_ENV};
use crate::domain::{ApiKind, BackendInput, HttpVersion, MappingInput};
use crate::error::InitError;
use crate::files::lock_data_dir;

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
  --redis-url URL    [env: POOLGATE_REDIS_URL]   shared runtime state (several instances)\n\
  --instance-id ID   [env: POOLGATE_INSTANCE_ID] default <hostname>-<pid>\n\
  --log-format F     [env: POOLGATE_LOG_FORMAT]  human (default) or json\n\
  --master-key-file FILE [env: POOLGATE_MASTER_KEY_FILE] instead of <data-dir>/master.key\n\
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
    /// The database: `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// [default: sqlite://<data-dir>/poolgate.db].
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
    /// Redis for the runtime state every instance shares (rate limits, cooldowns, probes):
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]` [default: none, this instance's own state].
    #[arg(long, env = "POOLGATE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// This instance's id in logs, the admin API and the instance registry
    /// [default: <hostname>-<pid>].
    #[arg(long, env = "POOLGATE_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
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
    #[arg(long, default_value = "openai", value_parser = ["openai", "anthropic", "azure"])]
    pub api: String,
    /// Azure only: the `api-version` of deployment URLs (default 2024-10-21).
    #[arg(long, value_name = "VERSION")]
    pub api_version: Option<String>,
    /// HTTP version towards the upstream (`http2`: prior knowledge on http://, ALPN h2 on
    /// https://).
    #[arg(long, default_value = "auto", value_parser = ["auto", "http1", "http2"])]
    pub http_version: String,
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

fn overrides(store: &StoreArgs) -> Overrides {
    Overrides {
        data_dir: store.data_dir.clone(),
        database_url: store.database_url.clone(),
        master_key_file: store.master_key_file.clone(),
        ..Overrides::default()
    }
}

fn load_config(store: &StoreArgs) -> Result<Config, InitError> {
    Config::load(store.config.as_deref(), overrides(store))
}

impl ServeArgs {
    pub fn config(&self) -> Result<Config, InitError> {
        Config::load(
            self.store.config.as_deref(),
            Overrides {
                listen: self.listen.clone(),
                log_format: self.log_format,
                redis_url: self.redis_url.clone(),
                instance_id: self.instance_id.clone(),
                ..overrides(&self.store)
            },
        )
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

/// The config of a non-serve command: its SQLite database must exist already.
fn existing_store_config(args: &StoreArgs) -> Result<Config, InitError> {
    let config = load_config(args)?;
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

/// Runs one command against the control plane, then lets its writers finish.
async fn with_control<T, F>(mut config: Config, command: F) -> Result<T, InitError>
where
    F: AsyncFnOnce(&ControlPlane) -> Result<T, ControlError>,
{
    // A command serves no request: it records no usage and has no journal of its own, and it
    // must not replay (and delete) the journal of a gateway running on the same data dir
    // (`backend list` takes no lock); the gateway's next start replays what is left.
    config.usage.journal = false;
    let control = ControlPlane::open(Arc::new(config)).await?;
    let result = command(&control).await;
    control.shutdown().await;
    result.map_err(cli_error)
}

/// A control-plane error in command-line terms: a field is named by its flag.
fn cli_error(error: ControlError) -> InitError {
    match error {
        ControlError::Invalid(invalid) => {
            let flag = match invalid.field.as_str() {
                "api_base_url" => "base-url",
                "api_key" => "api-key",
                "timeout_seconds" => "timeout",
                "rpm_limit" => "rpm",
                field if field.starts_with("model_mappings") => "model",
                field => field,
            };
            InitError::Invalid(format!("`--{flag}`: {}", invalid.message))
        }
        other => InitError::Control(other),
    }
}

async fn backend_list(args: &StoreArgs) -> Result<(), InitError> {
    let config = existing_store_config(args)?;
    let backends = with_control(config, async |control| control.backends().await).await?;
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
    let key = std::env::var(&args.api_key_env).map_err(|_| {
        InitError::Invalid(format!(
            "environment variable `{}` is not set",
            args.api_key_env
        ))
    })?;
    let model_mappings = args
        .models
        .iter()
        .map(|entry| {
            let (canonical, upstream) = entry.split_once('=').unwrap_or((entry, entry));
            (
                canonical.to_owned(),
                MappingInput::Short(upstream.to_owned()),
            )
        })
        .collect();
    let input = BackendInput {
        name: args.name,
        label: None,
        api_base_url: args.base_url,
        api_key: SecretString::from(key),
        api: ApiKind::parse(&args.api),
        timeout_seconds: Some(args.timeout),
        rpm_limit: Some(args.rpm),
        weight: None,
        pool: Some(args.pool),
        enabled: None,
        model_mappings,
        metadata: None,
        responses: None,
        api_version: args.api_version,
        tpm_limit: None,
        http_version: HttpVersion::parse(&args.http_version),
    };
    // `add` may create the database (provisioning before the first start) — but not for input
    // the control plane would refuse anyway: the same rules, checked before anything is created.
    input
        .clone()
        .validate(&|field| field.to_owned())
        .map_err(|invalid| cli_error(ControlError::Invalid(invalid)))?;
    let config = load_config(&args.store)?;
    crate::files::ensure_data_dir(&config.data_dir)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let record = with_control(config, async |control| control.create_backend(input).await).await?;
    println!("added backend {}", record.id);
    Ok(())
}

async fn backend_remove(which: &str, args: &StoreArgs) -> Result<(), InitError> {
    let config = existing_store_config(args)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let removed = with_control(config, async |control| {
        let backends = control.backends().await?;
        let Some(found) = backends
            .into_iter()
            .find(|b| b.id.as_str() == which || b.name == which)
        else {
            return Ok(None);
        };
        control.delete_backend(&found.id).await?;
        Ok(Some(found))
    })
    .await?;
    let found = removed
        .ok_or_else(|| InitError::Invalid(format!("no backend with id or name `{which}`")))?;
    println!("removed backend {} ({})", found.id, found.name);
    Ok(())
}

async fn rotate(args: &StoreArgs) -> Result<(), InitError> {
    let config = existing_store_config(args)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let rotation = with_control(config, async |control| control.rotate_master_key().await).await?;
    let Rotation {
        version,
        fingerprint,
        resealed,
        new_key,
    } = rotation;
    match new_key {
        NewKey::File(path) => println!(
            "rotated the master key to version {version} (fingerprint {fingerprint}); \
             re-encrypted {resealed} upstream keys; new key written to {}",
            path.display()
        ),
        NewKey::Env(key) => println!(
            "rotated the master key to version {version} (fingerprint {fingerprint}); \
             re-encrypted {resealed} upstream keys.\nSet {MASTER_KEY_ENV} to the new key before \
             the next start:\n{}",
            key.expose_secret()
        ),
    }
    Ok(())
}
