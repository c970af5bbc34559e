//! Real services for integration tests: a `redis-server` and a PostgreSQL server (Debian's
//! binaries) started on 127.0.0.1 on a free port, with their data in a temp dir, killed and
//! cleaned up on drop. Tests can kill (SIGKILL), freeze (SIGSTOP), thaw (SIGCONT) and restart
//! them on the same port.
//!
//! Include it with `mod services;`. Start-up waits on real time (a readiness poll), so use it in
//! tests that run on real time, not `start_paused`.
//!
//! Ports: a port is found by binding 127.0.0.1:0 and releasing it, and the server is started on
//! it; if the server then cannot bind it (someone else took it in between) it is started again on
//! a new port. A restart reuses the port the server had.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and `postgres` run as
//! the unprivileged `postgres` user (`runuser -u postgres --`) in a data dir it owns.
#![allow(dead_code)]
// `allow`, not `expect`: the store's unit tests include this file too, inside `#[cfg(test)]`,
// where clippy already allows `expect` and an expectation would be unfulfilled.
#![allow(
    clippy::expect_used,
    reason = "test harness: a service that cannot start fails the test"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

/// How long a server may take to answer after it was started (generous: a loaded 2-core CI).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many fresh ports to try when a server cannot bind the one it was given.
const PORT_ATTEMPTS: usize = 5;

/// A port that was free a moment ago (bound to 127.0.0.1:0, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0")
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    match kill(pid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => panic!("kill({pid}, {signal}): {error}"),
    }
}

/// The process and its descendants (from /proc), the process first.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    tree
}

/// Whether the child has exited (reaping it if so).
fn exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

/// Waits until `answers(port)` says yes: `Some(child)`; `None` (the child killed) if it exited
/// first (e.g. it could not bind the port) or did not answer within [`READY_TIMEOUT`].
async fn wait_until_answering<F, Fut>(mut child: Child, port: u16, answers: F) -> Option<Child>
where
    F: Fn(u16) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if exited(&mut child) {
            return None;
        }
        if answers(port).await {
            return Some(child);
        }
        sleep(Duration::from_millis(20)).await;
    }
    signal(child.id(), Signal::SIGKILL);
    let _ = child.wait();
    None
}

/// Calls `spawn_ready` until it gives a running server (the old one may still be going away),
/// for at most [`READY_TIMEOUT`].
async fn start_again<F, Fut>(what: &str, port: u16, spawn_ready: F) -> Child
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Child>>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(child) = spawn_ready().await {
            return child;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not restart on port {port}");
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// === impl RedisServer ===

/// A `redis-server` on 127.0.0.1 with no persistence, in a temp dir.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            if let Some(child) = Self::spawn_ready(dir.path(), port).await {
                return RedisServer {
                    port,
                    dir,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start on any of {PORT_ATTEMPTS} ports");
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the server dies at once, like a crashed host. Its data is gone (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server freezes; connections stay open and nothing answers.
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGSTOP);
        }
    }

    /// SIGCONT after [`RedisServer::freeze`].
    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGCONT);
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]; kills it first if it
    /// still runs) and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let (dir, port) = (self.dir.path(), self.port);
        let child = start_again("redis-server", port, || Self::spawn_ready(dir, port)).await;
        self.child = Some(child);
    }

    /// Spawns a server on `port`; `None` if it exited (could not bind) before answering.
    async fn spawn_ready(dir: &Path, port: u16) -> Option<Child> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        wait_until_answering(child, port, redis_answers_ping).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One PING over a fresh connection, answered `+PONG` within a second.
async fn redis_answers_ping(port: u16) -> bool {
    let ping = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Ok(true))
    )
}

// === impl PostgresServer ===

/// A PostgreSQL server on 127.0.0.1 (trust authentication, user `postgres`, fsync off) with its
/// cluster in a temp dir.
pub struct PostgresServer {
    port: u16,
    /// Holds `data/` (the cluster) and `postgres.log`.
    dir: TempDir,
    /// `postgres` itself, or the `runuser` wrapping it when running as root.
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates a cluster (initdb) and starts the server on a free port; waits until it answers.
    pub async fn start() -> PostgresServer {
        let dir = tempfile::tempdir().expect("temp dir");
        if running_as_root() {
            let (uid, gid) = postgres_user_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown data dir");
        }
        let initdb = as_postgres_user(&pg_binary("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb (apt-get install postgresql)");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            if let Some(child) = Self::spawn_ready(dir.path(), port).await {
                return PostgresServer {
                    port,
                    dir,
                    child: Some(child),
                };
            }
        }
        panic!(
            "postgres did not start on any of {PORT_ATTEMPTS} ports; log:\n{}",
            std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of another database on this server (see [`PostgresServer::create_database`]).
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub async fn create_database(&self, database: &str) -> String {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connect to postgres");
        // Identifiers cannot be bound as parameters; the name is the test's own constant.
        assert!(
            database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name `{database}`"
        );
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        self.database_url(database)
    }

    /// The postmaster's process id, from `postmaster.pid` (while it runs).
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.child.as_ref()?;
        self.postmaster_pid_file()
    }

    /// SIGKILL to the postmaster and every backend: the server dies at once, like a crashed host.
    /// The data stays; [`PostgresServer::restart`] recovers it.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let root = self.postmaster_pid_file().unwrap_or_else(|| child.id());
        for pid in process_tree(root) {
            signal(pid, Signal::SIGKILL);
        }
        signal(child.id(), Signal::SIGKILL);
        let _ = child.wait();
    }

    /// SIGSTOP to the postmaster and every backend: connections stay open, nothing answers.
    pub fn freeze(&self) {
        if let Some(root) = self.postmaster_pid() {
            for pid in process_tree(root) {
                signal(pid, Signal::SIGSTOP);
            }
        }
    }

    /// SIGCONT after [`PostgresServer::freeze`].
    pub fn thaw(&self) {
        if let Some(root) = self.postmaster_pid() {
            for pid in process_tree(root) {
                signal(pid, Signal::SIGCONT);
            }
        }
    }

    /// Starts the server again on the same port with the same data (killing it first if it still
    /// runs) and waits until it answers. Retries while the old processes are still going away.
    pub async fn restart(&mut self) {
        self.kill();
        let (dir, port) = (self.dir.path(), self.port);
        let child = start_again("postgres", port, || Self::spawn_ready(dir, port)).await;
        self.child = Some(child);
    }

    fn postmaster_pid_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Spawns the server on `port`; `None` if it exited (e.g. could not bind) before answering.
    async fn spawn_ready(dir: &Path, port: u16) -> Option<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("postgres.log"))
            .expect("open postgres.log");
        let child = as_postgres_user(&pg_binary("postgres"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            // fsync off: a killed process loses nothing (the OS keeps the page cache); commits stay
            // synchronous so that a crash test sees every committed row after the restart.
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        wait_until_answering(child, port, postgres_answers).await
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `SELECT 1` over a fresh connection within two seconds.
async fn postgres_answers(port: u16) -> bool {
    use sqlx::Connection;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let probe = async {
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok::<_, sqlx::Error>(one == 1)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// The newest installed PostgreSQL's binary (`/usr/lib/postgresql/<major>/bin/<name>`).
fn pg_binary(name: &str) -> PathBuf {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (apt-get install postgresql)")
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin").join(name)))
        })
        .filter(|(_, path)| path.exists())
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("no /usr/lib/postgresql/*/bin/{name}"))
}

/// `program` as a command run by the `postgres` user when we are root, else as ourselves.
fn as_postgres_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The uid and gid of the `postgres` user (from /etc/passwd).
fn postgres_user_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres"))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .expect("a `postgres` user (created by the postgresql package)")
}
