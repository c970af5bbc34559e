//! The shared services of poolgate's cluster mode for the cluster section: `redis-server` and
//! PostgreSQL (Debian's packages) on 127.0.0.1, with their data in the run's work dir. PostgreSQL
//! refuses to run as root: as root it runs as the `postgres` user (`runuser`), and it is stopped
//! through its postmaster (a fast shutdown) rather than through the wrapper.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{free_addr, Child};

/// The newest installed PostgreSQL's `bin` directory, if any.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

/// Whether `redis-server` is on the PATH.
pub fn redis_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program` run by the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Waits until `ready()` says yes.
fn wait_until(what: &str, timeout: Duration, ready: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not answer within {timeout:?}")
}

/// A running redis-server.
pub struct Redis {
    pub child: Child,
    pub addr: SocketAddr,
}

/// `redis-server` without persistence on a free port.
pub fn start_redis(work: &Path, logs: &Path) -> Result<Redis> {
    let dir = work.join("redis");
    std::fs::create_dir_all(&dir)?;
    let addr = free_addr()?;
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(&dir);
    let child = Child::spawn("redis", command, logs)?;
    wait_until("redis-server", Duration::from_secs(10), || {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "ping"])
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
    })?;
    Ok(Redis { child, addr })
}

/// A running PostgreSQL with the databases `poolgate` and `poolgate_b` (for a second
/// configuration: a database remembers the master key of the instance that created it).
pub struct Postgres {
    child: Child,
    data: PathBuf,
    pub url: String,
    pub url_b: String,
}

/// `initdb` in the work dir, then the server on a free port (trust authentication, fsync on as
/// deployed), then `CREATE DATABASE poolgate`.
pub fn start_postgres(bin: &Path, work: &Path, logs: &Path) -> Result<Postgres> {
    let dir = work.join("postgres");
    std::fs::create_dir_all(&dir)?;
    if is_root() {
        let status = Command::new("chown").arg("postgres:").arg(&dir).status()?;
        anyhow::ensure!(status.success(), "chown postgres {}", dir.display());
    }
    let data = dir.join("data");
    let initdb = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .output()
        .context("running initdb")?;
    if !initdb.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
    }
    let addr = free_addr()?;
    let port = addr.port().to_string();
    let mut command = as_postgres(&bin.join("postgres"));
    command
        .arg("-D")
        .arg(&data)
        .args(["-p", &port, "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="]);
    let child = Child::spawn("postgres", command, logs)?;
    let postgres = Postgres {
        child,
        data,
        url: format!("postgres://postgres@127.0.0.1:{port}/poolgate"),
        url_b: format!("postgres://postgres@127.0.0.1:{port}/poolgate_b"),
    };
    let psql = |sql: &str| {
        Command::new(bin.join("psql"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    wait_until("PostgreSQL", Duration::from_secs(30), || psql("SELECT 1"))?;
    anyhow::ensure!(psql("CREATE DATABASE poolgate"), "CREATE DATABASE failed");
    anyhow::ensure!(psql("CREATE DATABASE poolgate_b"), "CREATE DATABASE failed");
    Ok(postgres)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown through the postmaster; the wrapper (runuser) then exits too.
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.data.join("postmaster.pid").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.child.stop();
    }
}
