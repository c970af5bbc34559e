//! Integration tests of the `poolgate` binary: `backend add|list|remove` and `master-key rotate`
//! against a real data dir, `--help`, and `serve` as a real process (first-start secrets, the
//! admin token, SIGTERM). Gateways that must proxy after a CLI change run in-process on the
//! same data dir through the shared harness.
#![expect(clippy::expect_used, reason = "test")]

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::served::{poolgate_command, Served};
use common::{bearer_seen, contains_bytes, Gateway};
use mock_upstream::MockUpstream;

// === helpers ===

/// A finished run of the binary.
struct Run {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let output: Output = poolgate_command(args, envs)
        .stdin(Stdio::null())
        .output()
        .expect("the poolgate binary runs");
    Run {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn dir_arg(dir: &Path) -> String {
    dir.to_str().expect("utf-8 temp path").to_owned()
}

/// `poolgate backend add` with the key in `key_var`, asserting success; returns the new id.
fn add_backend(
    dir: &Path,
    name: &str,
    base_url: &str,
    key_var: &str,
    key: &str,
    models: &[&str],
) -> String {
    let data_dir = dir_arg(dir);
    let mut args = vec![
        "backend",
        "add",
        "--name",
        name,
        "--base-url",
        base_url,
        "--api-key-env",
        key_var,
        "--data-dir",
        &data_dir,
    ];
    for model in models {
        args.extend(["--model", model]);
    }
    let out = run(&args, &[(key_var, key)]);
    assert!(out.success, "backend add failed: {out}");
    out.stdout
        .split_whitespace()
        .find(|word| word.starts_with("bkd_"))
        .unwrap_or_else(|| panic!("no id printed: {out}"))
        .to_owned()
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file of a data dir, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    common::files_in(dir)
        .into_iter()
        .flat_map(|(_, bytes)| bytes)
        .collect()
}

/// A chat completion through an in-process gateway (admin token as client key).
async fn chat_ok(gateway: &Gateway, model: &str) {
    let (status, body) = gateway.chat(model).await;
    assert_eq!(status, 200, "chat {model}: {body}");
}

// === 12. backend add / list / remove ===

#[test]
fn backend_add_list_remove_keep_the_key_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir_arg(dir.path());
    let key = "sk-cli-plaintext-secret-9999";
    let var = "POOLGATE_TEST_CLI_ADD_LIST_REMOVE_KEY";

    let id = add_backend(
        dir.path(),
        "cli-a",
        "http://127.0.0.1:9/v1/",
        var,
        key,
        &["a=b", "c"],
    );
    assert!(id.starts_with("bkd_"), "{id}");
    assert_eq!(file_mode(&dir.path().join("master.key")), 0o600);
    assert_eq!(file_mode(dir.path()), 0o700, "the data dir is owner-only");

    let list = run(&["backend", "list", "--data-dir", &data_dir], &[]);
    assert!(list.success, "{list}");
    // stdout is the list alone, one backend per line, ready for a pipe: log lines (here every
    // debug line) go to stderr.
    let logged = run(
        &["backend", "list", "--data-dir", &data_dir],
        &[("RUST_LOG", "debug")],
    );
    assert!(logged.success, "{logged}");
    assert!(
        !logged.stdout.is_empty() && logged.stdout.lines().all(|l| l.starts_with("bkd_")),
        "{logged}"
    );
    assert!(logged.stderr.contains("DEBUG"), "{logged}");
    let line = list
        .stdout
        .lines()
        .find(|l| l.contains("cli-a"))
        .unwrap_or_else(|| panic!("cli-a not listed: {list}"));
    assert!(line.starts_with(&id), "{line}");
    assert!(line.contains("key=sk-…9999"), "masked key shown: {line}");
    assert!(line.contains("models=a=b,c=c"), "{line}");
    assert!(line.contains("http://127.0.0.1:9/v1"), "{line}");
    assert!(line.contains("pool=primary"), "{line}");
    assert!(
        !list.stdout.contains(key) && !list.stderr.contains(key),
        "{list}"
    );
    assert!(
        !contains_bytes(&all_bytes(dir.path()), key.as_bytes()),
        "the plaintext key is on disk"
    );

    // The POOLGATE_DATA_DIR variable works like --data-dir.
    let via_env = run(&["backend", "list"], &[("POOLGATE_DATA_DIR", &data_dir)]);
    assert!(via_env.success && via_env.stdout.contains(&id), "{via_env}");

    // Errors exit non-zero with a clear message and change nothing.
    let unknown_pool = run(
        &[
            "backend",
            "add",
            "--name",
            "cli-b",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            var,
            "--pool",
            "no-such-pool",
            "--data-dir",
            &data_dir,
        ],
        &[(var, key)],
    );
    assert!(!unknown_pool.success, "{unknown_pool}");
    assert!(
        unknown_pool
            .stderr
            .contains("pool `no-such-pool` does not exist"),
        "{unknown_pool}"
    );
    let missing_var = "POOLGATE_TEST_CLI_VARIABLE_THAT_IS_NOT_SET";
    let missing_env = run(
        &[
            "backend",
            "add",
            "--name",
            "cli-b",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            missing_var,
            "--data-dir",
            &data_dir,
        ],
        &[],
    );
    assert!(!missing_env.success, "{missing_env}");
    assert!(
        missing_env.stderr.contains(missing_var) && missing_env.stderr.contains("not set"),
        "{missing_env}"
    );
    let duplicate = run(
        &[
            "backend",
            "add",
            "--name",
            "cli-a",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            var,
            "--data-dir",
            &data_dir,
        ],
        &[(var, "sk-another-key-00000001")],
    );
    assert!(!duplicate.success, "{duplicate}");
    assert!(duplicate.stderr.contains("cli-a"), "{duplicate}");
    let bad_url = run(
        &[
            "backend",
            "add",
            "--name",
            "cli-b",
            "--base-url",
            "ftp://x",
            "--api-key-env",
            var,
            "--data-dir",
            &data_dir,
        ],
        &[(var, key)],
    );
    assert!(!bad_url.success, "{bad_url}");
    assert!(bad_url.stderr.contains("base-url"), "{bad_url}");
    let bad_model = run(
        &[
            "backend",
            "add",
            "--name",
            "cli-b",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            var,
            "--model",
            "a b=c",
            "--data-dir",
            &data_dir,
        ],
        &[(var, key)],
    );
    assert!(!bad_model.success, "{bad_model}");
    for failed in [
        &unknown_pool,
        &missing_env,
        &duplicate,
        &bad_url,
        &bad_model,
    ] {
        assert!(!failed.stderr.contains(key), "the key is echoed: {failed}");
    }
    let list = run(&["backend", "list", "--data-dir", &data_dir], &[]);
    assert_eq!(list.stdout.lines().count(), 1, "only cli-a: {list}");

    // Remove by name, then by id.
    let removed = run(
        &["backend", "remove", "cli-a", "--data-dir", &data_dir],
        &[],
    );
    assert!(removed.success, "{removed}");
    assert!(removed.stdout.contains(&id), "{removed}");
    let list = run(&["backend", "list", "--data-dir", &data_dir], &[]);
    assert!(list.success, "{list}");
    assert_eq!(list.stdout.trim(), "no backends", "{list}");
    let again = run(
        &["backend", "remove", "cli-a", "--data-dir", &data_dir],
        &[],
    );
    assert!(!again.success, "{again}");
    assert!(again.stderr.contains("cli-a"), "{again}");
    let id2 = add_backend(dir.path(), "cli-c", "http://127.0.0.1:9/v1", var, key, &[]);
    let removed = run(&["backend", "remove", &id2, "--data-dir", &data_dir], &[]);
    assert!(removed.success, "{removed}");
    let list = run(&["backend", "list", "--data-dir", &data_dir], &[]);
    assert_eq!(list.stdout.trim(), "no backends", "{list}");
}

// === 13. master-key rotate ===

#[tokio::test]
async fn master_key_rotate_reencrypts_every_key() {
    let one = MockUpstream::start().await;
    let two = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir_arg(dir.path());
    let var = "POOLGATE_TEST_CLI_ROTATE_KEY";
    let (key1, key2) = (
        "sk-rotate-plaintext-one-0001",
        "sk-rotate-plaintext-two-0002",
    );
    add_backend(
        dir.path(),
        "rot-1",
        &one.openai_base_url(),
        var,
        key1,
        &["m-rot-1"],
    );
    add_backend(
        dir.path(),
        "rot-2",
        &two.openai_base_url(),
        var,
        key2,
        &["m-rot-2"],
    );
    let key_path = dir.path().join("master.key");
    let old_key = std::fs::read_to_string(&key_path).unwrap();

    let rotated = run(&["master-key", "rotate", "--data-dir", &data_dir], &[]);
    assert!(rotated.success, "{rotated}");
    assert!(rotated.stdout.contains("version 2"), "{rotated}");
    assert!(rotated.stdout.contains("re-encrypted 2"), "{rotated}");
    let new_key = std::fs::read_to_string(&key_path).unwrap();
    assert_ne!(new_key.trim(), old_key.trim(), "master.key changed");
    assert!(poolgate::crypto::MasterKey::from_base64(&new_key).is_ok());
    assert_eq!(
        file_mode(&key_path),
        0o600,
        "the new key file is owner-only"
    );
    assert!(
        !rotated.stdout.contains(new_key.trim()) && !rotated.stderr.contains(new_key.trim()),
        "a key kept in a file is not printed: {rotated}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".new"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staged key file left behind: {leftovers:?}"
    );
    let all = all_bytes(dir.path());
    assert!(!contains_bytes(&all, key1.as_bytes()) && !contains_bytes(&all, key2.as_bytes()));

    // A gateway on the rotated dir decrypts every key to its original plaintext.
    let gateway = Gateway::start_with("", Some(dir)).await;
    assert!(
        gateway.data().live().unreadable.is_empty(),
        "some keys do not decrypt"
    );
    chat_ok(&gateway, "m-rot-1").await;
    assert_eq!(bearer_seen(&one), format!("Bearer {key1}"));
    chat_ok(&gateway, "m-rot-2").await;
    assert_eq!(bearer_seen(&two), format!("Bearer {key2}"));
    let dir = gateway.stop().await;

    // The old key no longer opens the database: neither the gateway nor the CLI start.
    std::fs::write(&key_path, &old_key).unwrap();
    let message = match poolgate::server::start(common::config_for("", dir.path()), false).await {
        Ok(running) => {
            running.shutdown().await.unwrap();
            panic!("the gateway started with the pre-rotation key");
        }
        Err(error) => error.to_string(),
    };
    assert!(message.contains("fingerprint"), "{message}");
    let list = run(&["backend", "list", "--data-dir", &data_dir], &[]);
    assert!(!list.success, "{list}");
    assert!(list.stderr.contains("master key"), "{list}");

    // Rotating again from the new key works (version 3) and keeps the keys readable.
    std::fs::write(&key_path, &new_key).unwrap();
    let again = run(&["master-key", "rotate", "--data-dir", &data_dir], &[]);
    assert!(
        again.success && again.stdout.contains("version 3"),
        "{again}"
    );
    let gateway = Gateway::start_with("", Some(dir)).await;
    chat_ok(&gateway, "m-rot-2").await;
    assert_eq!(bearer_seen(&two), format!("Bearer {key2}"));
    gateway.stop().await;
}

#[tokio::test]
async fn master_key_rotate_with_the_key_in_the_environment_prints_the_new_key() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir_arg(dir.path());
    let env_key = poolgate::crypto::MasterKey::generate();
    let env_key = secrecy::ExposeSecret::expose_secret(&env_key.to_base64()).to_owned();
    let var = "POOLGATE_TEST_CLI_ROTATE_ENV_KEY";
    let key = "sk-rotate-env-plaintext-0003";
    let added = run(
        &[
            "backend",
            "add",
            "--name",
            "env-1",
            "--base-url",
            &upstream.openai_base_url(),
            "--api-key-env",
            var,
            "--model",
            "m-env",
            "--data-dir",
            &data_dir,
        ],
        &[(var, key), ("POOLGATE_MASTER_KEY", &env_key)],
    );
    assert!(added.success, "{added}");
    assert!(
        !dir.path().join("master.key").exists(),
        "no key file when the key is in the env"
    );

    let rotated = run(
        &["master-key", "rotate", "--data-dir", &data_dir],
        &[("POOLGATE_MASTER_KEY", &env_key)],
    );
    assert!(rotated.success, "{rotated}");
    assert!(rotated.stdout.contains("POOLGATE_MASTER_KEY"), "{rotated}");
    let new_key = rotated
        .stdout
        .lines()
        .map(str::trim)
        .find(|line| poolgate::crypto::MasterKey::from_base64(line).is_ok())
        .unwrap_or_else(|| panic!("the new key is printed: {rotated}"))
        .to_owned();
    assert_ne!(new_key, env_key);
    assert!(!dir.path().join("master.key").exists());

    let old = run(
        &["backend", "list", "--data-dir", &data_dir],
        &[("POOLGATE_MASTER_KEY", &env_key)],
    );
    assert!(!old.success, "the old key still opens the store: {old}");

    // The printed key decrypts the stored upstream key (given to the gateway as a key file).
    let key_file = dir.path().join("rotated.key");
    std::fs::write(&key_file, &new_key).unwrap();
    let toml = format!("master_key_file = {:?}\n", key_file.to_str().unwrap());
    let gateway = Gateway::start_with(&toml, Some(dir)).await;
    chat_ok(&gateway, "m-env").await;
    assert_eq!(bearer_seen(&upstream), format!("Bearer {key}"));
    gateway.stop().await;
}

// === 14. help ===

#[test]
fn serve_help_lists_the_flags_and_their_environment_variables() {
    let help = run(&["serve", "--help"], &[]);
    assert!(help.success, "{help}");
    for needle in [
        "--listen",
        "--data-dir",
        "--config",
        "--master-key-file",
        "--database-url",
        "POOLGATE_LISTEN",
        "POOLGATE_DATA_DIR",
        "POOLGATE_CONFIG",
        "POOLGATE_DATABASE_URL",
    ] {
        assert!(
            help.stdout.contains(needle),
            "`serve --help` lacks {needle}: {help}"
        );
    }
}

#[test]
fn top_level_help_mentions_the_serve_flags_and_environment_variables() {
    let help = run(&["--help"], &[]);
    assert!(help.success, "{help}");
    for command in ["serve", "backend", "master-key"] {
        assert!(
            help.stdout.contains(command),
            "`--help` lacks {command}: {help}"
        );
    }
    let missing: Vec<&str> = [
        "--listen",
        "--data-dir",
        "--config",
        "POOLGATE_LISTEN",
        "POOLGATE_DATA_DIR",
    ]
    .into_iter()
    .filter(|needle| !help.stdout.contains(needle))
    .collect();
    assert!(
        missing.is_empty(),
        "`poolgate --help` does not mention {missing:?}: {help}"
    );
}

// === 14b. the database URL ===

#[test]
fn the_database_url_chooses_the_database_and_an_unreachable_postgres_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir_arg(dir.path());
    let custom = dir.path().join("elsewhere.db");
    let url = format!("sqlite://{}", custom.display());
    let var = "POOLGATE_TEST_CLI_DATABASE_URL_KEY";
    let out = run(
        &[
            "backend",
            "add",
            "--name",
            "db-a",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            var,
            "--data-dir",
            &data_dir,
            "--database-url",
            &url,
        ],
        &[(var, "sk-db-url-key-0001")],
    );
    assert!(out.success, "{out}");
    assert!(custom.exists(), "the database is where the URL says");
    assert!(
        !dir.path().join("poolgate.db").exists(),
        "not in the data dir"
    );
    let listed = run(
        &["backend", "list", "--data-dir", &data_dir],
        &[("POOLGATE_DATABASE_URL", &url)],
    );
    assert!(listed.success && listed.stdout.contains("db-a"), "{listed}");
    // Without the URL the default database (in the data dir) does not exist yet.
    let default = run(&["backend", "list", "--data-dir", &data_dir], &[]);
    assert!(!default.success, "{default}");

    // Nothing listens there: the start fails naming the database, never its password.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let postgres = format!("postgres://poolgate:pg-secret-pw@127.0.0.1:{port}/poolgate");
    let postgres = postgres.as_str();
    for args in [
        vec![
            "backend",
            "list",
            "--data-dir",
            &data_dir,
            "--database-url",
            postgres,
        ],
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--database-url",
            postgres,
        ],
    ] {
        let refused = run(&args, &[]);
        assert!(!refused.success, "{refused}");
        // Where, and why (not just that a pool timed out).
        let place = format!("could not connect to PostgreSQL at 127.0.0.1:{port}");
        assert!(refused.stderr.contains(&place), "{refused}");
        assert!(refused.stderr.contains("refused"), "{refused}");
        assert!(
            !refused.stderr.contains("pg-secret-pw"),
            "the password is printed: {refused}"
        );
    }
    let bad = run(
        &[
            "backend",
            "list",
            "--data-dir",
            &data_dir,
            "--database-url",
            "mysql://x",
        ],
        &[],
    );
    assert!(!bad.success && bad.stderr.contains("database_url"), "{bad}");
}

#[test]
fn a_refused_backend_add_creates_no_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("never");
    let var = "POOLGATE_TEST_CLI_REFUSED_ADD_KEY";
    let out = run(
        &[
            "backend",
            "add",
            "--name",
            "x",
            "--base-url",
            "ftp://x",
            "--api-key-env",
            var,
            "--data-dir",
            &dir_arg(&data_dir),
        ],
        &[(var, "sk-refused-add-key-0001")],
    );
    assert!(!out.success, "{out}");
    assert!(out.stderr.contains("base-url"), "{out}");
    assert!(
        !data_dir.exists(),
        "invalid input created {}",
        data_dir.display()
    );
}

#[test]
fn bad_command_lines_fail_with_usage() {
    let unknown = run(&["frobnicate"], &[]);
    assert!(!unknown.success, "{unknown}");
    assert_eq!(unknown.code, Some(2), "clap usage error: {unknown}");
    let missing = run(&["backend", "add", "--name", "x"], &[]);
    assert!(!missing.success, "{missing}");
    assert!(missing.stderr.contains("--base-url"), "{missing}");
}

// === 15. the binary serves ===

#[tokio::test]
async fn the_binary_serves_prints_its_token_once_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    let mut served = Served::spawn(&data_dir, &[], &[]);
    let url = served.url().await;
    let health: serde_json::Value = client
        .get(format!("{}/healthz", url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, serde_json::json!({"status": "ok"}));

    // First start: secrets written owner-only.
    let token_path = data_dir.join("admin-token");
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 16, "{token}");
    assert_eq!(file_mode(&token_path), 0o600, "admin-token mode");
    assert_eq!(
        file_mode(&data_dir.join("master.key")),
        0o600,
        "master.key mode"
    );
    assert_eq!(file_mode(&data_dir), 0o700, "data dir mode");
    assert!(data_dir.join("poolgate.db").exists());

    // The token works on the admin API; a wrong one does not.
    let backends = client
        .get(format!("{}/admin/api/backends", url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(backends.status(), 200);
    assert_eq!(
        backends.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!([])
    );
    let wrong = client
        .get(format!("{}/admin/api/backends", url))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // Nothing is in flight, so the stop does not wait for the 30 s grace period (`exit` gives it
    // 10 s).
    served.sigterm();
    let status = served.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let (stdout, stderr) = served.output();
    assert_eq!(
        stderr.matches(&token).count(),
        1,
        "the generated token is printed exactly once on stderr:\n{stderr}"
    );
    assert!(
        !stdout.contains(&token),
        "the token is in the log output:\n{stdout}"
    );
    let master = std::fs::read_to_string(data_dir.join("master.key")).unwrap();
    assert!(
        !stdout.contains(master.trim()) && !stderr.contains(master.trim()),
        "the master key is printed"
    );

    // Second start on the same dir: the same token, not printed again.
    let mut served = Served::spawn(&data_dir, &[], &[]);
    let url = served.url().await;
    let again = client
        .get(format!("{}/admin/api/pools", url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let status = {
        served.sigterm();
        served.exit(Duration::from_secs(10)).await
    };
    assert!(status.success(), "{status}");
    let (stdout, stderr) = served.output();
    assert!(
        !stderr.contains(&token) && !stdout.contains(&token),
        "the token is printed again on the second start:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap().trim(),
        token,
        "the token file is kept"
    );
}

#[tokio::test]
async fn an_admin_token_from_the_environment_is_checked_and_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    let mut short = Served::spawn(&data_dir, &[], &[("POOLGATE_ADMIN_TOKEN", "too-short")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = short.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a too short admin token was accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!status.success(), "{status}");
    let (_, stderr) = short.output();
    assert!(stderr.contains("POOLGATE_ADMIN_TOKEN"), "{stderr}");

    let token = "pga-from-the-environment-0123456789";
    let mut served = Served::spawn(&data_dir, &[], &[("POOLGATE_ADMIN_TOKEN", token)]);
    let url = served.url().await;
    let answer = client
        .get(format!("{}/admin/api/keys", url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!({
        served.sigterm();
        served.exit(Duration::from_secs(10)).await
    }
    .success());
    assert!(
        !data_dir.join("admin-token").exists(),
        "the environment token is not written to disk"
    );
    let (stdout, stderr) = served.output();
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn the_binary_never_logs_upstream_keys_or_the_admin_token() {
    let refusing = MockUpstream::start().await;
    refusing.set_default(mock_upstream::Reply::unauthorized());
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = "pga-log-check-admin-token-0123456789";
    let mut served = Served::spawn(
        &data_dir,
        &[],
        &[("POOLGATE_ADMIN_TOKEN", token), ("RUST_LOG", "trace")],
    );
    let url = served.url().await;

    let dead = common::dead_url();
    let keys = [
        (
            "log-refused",
            refusing.openai_base_url(),
            "sk-LOGCHECK-refused-4f1c2b",
        ),
        ("log-dead", dead, "sk-LOGCHECK-dead-9d8e7a"),
    ];
    for (name, upstream_url, key) in &keys {
        let created = client
            .post(format!("{url}/admin/api/backends"))
            .bearer_auth(token)
            .json(&serde_json::json!({
                "name": name, "api_base_url": upstream_url, "api_key": key,
                "model_mappings": {"m-log": "up-log"},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let answer = client
        .post(format!("{}/v1/chat/completions", url))
        .bearer_auth(token)
        .json(
            &serde_json::json!({"model": "m-log", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_server_error(), "{}", answer.status());
    assert_eq!(refusing.calls(), 1, "the refusing upstream was tried");
    assert!({
        served.sigterm();
        served.exit(Duration::from_secs(10)).await
    }
    .success());
    let (stdout, stderr) = served.output();
    assert!(
        stdout.contains("TRACE") || stdout.contains("DEBUG"),
        "trace logging is on"
    );
    for (_, _, key) in &keys {
        assert!(
            !stdout.contains(key) && !stderr.contains(key),
            "the upstream key {key} is in the log output"
        );
    }
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "the admin token is in the log output"
    );
}

// === hazards ===

#[tokio::test]
async fn master_key_rotate_refuses_while_a_gateway_uses_the_data_dir() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start().await;
    gateway
        .add_openai_backend(
            "live-1",
            &upstream.openai_base_url(),
            "primary",
            &["m-live"],
        )
        .await;
    let data_dir = dir_arg(gateway.data_dir());
    let key_path = gateway.data_dir().join("master.key");
    let before = std::fs::read_to_string(&key_path).unwrap();

    let rotated = run(&["master-key", "rotate", "--data-dir", &data_dir], &[]);
    let after = std::fs::read_to_string(&key_path).unwrap();
    // What a rotation under a running gateway does: the gateway still seals with the old key
    // (now gone from disk), so what it writes next cannot be decrypted any more.
    gateway
        .add_openai_backend(
            "live-2",
            &upstream.openai_base_url(),
            "primary",
            &["m-live-2"],
        )
        .await;
    let (status_old, _) = gateway.chat("m-live").await;
    let dir = gateway.stop().await;
    let restarted = Gateway::start_with("", Some(dir)).await;
    let unreadable = restarted.data().live().unreadable.len();
    restarted.stop().await;

    assert!(
        !rotated.success && before == after,
        "`master-key rotate` ran while a gateway was serving the data dir; afterwards the \
         running gateway answered {status_old} for a rotated backend and {unreadable} \
         backend key(s) written by it cannot be decrypted with any key on disk: {rotated}"
    );
}

#[test]
fn backend_add_takes_azure_and_checks_its_api_version() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir_arg(dir.path());
    let var = "POOLGATE_TEST_CLI_AZURE_KEY";
    let azure = |version: &str| {
        run(
            &[
                "backend",
                "add",
                "--name",
                "az",
                "--api",
                "azure",
                "--api-version",
                version,
                "--base-url",
                "https://res.openai.azure.com",
                "--api-key-env",
                var,
                "--model",
                "gpt-4o=gpt4o-prod",
                "--data-dir",
                &data_dir,
            ],
            &[(var, "azure-cli-key-0001")],
        )
    };
    let bad = azure("2024-10-21&x=1");
    assert!(!bad.success, "{bad}");
    assert!(bad.stderr.contains("api_version"), "{bad}");
    let good = azure("2025-04-01-preview");
    assert!(good.success, "{good}");
    let list = run(&["backend", "list", "--data-dir", &data_dir], &[]);
    let line = list
        .stdout
        .lines()
        .find(|l| l.contains("\taz\t"))
        .unwrap_or_default();
    assert!(
        line.contains("\tazure\t") && line.contains("models=gpt-4o=gpt4o-prod"),
        "{list}"
    );
}
