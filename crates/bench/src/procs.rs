//! Child processes and what `/proc` says about them: spawning with logs in a file, waiting for
//! a `listening on ADDR` line, stopping (SIGTERM, then SIGKILL), resident memory and CPU time of
//! a process and its direct children (nginx's workers), CPU time of named threads.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A child process that is stopped when dropped.
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Spawns `command` with stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Child> {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Child {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Spawns `command` (stderr to the log), reads its stdout until a line `listening on ADDR`
    /// and returns that address; the rest of stdout goes to the log too.
    pub fn spawn_listening(
        name: &str,
        mut command: Command,
        log_dir: &Path,
        timeout: Duration,
    ) -> Result<(Child, SocketAddr)> {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file.try_clone()?));
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = file;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let _ = writeln!(file, "{line}");
            }
        });
        let mut child = Child {
            name: name.to_owned(),
            child,
            log,
        };
        let addr = match rx.recv_timeout(timeout) {
            Ok(addr) => addr,
            Err(_) => {
                child.stop();
                bail!(
                    "{name} did not print `listening on` within {timeout:?}; see {}",
                    child.log.display()
                );
            }
        };
        let addr = addr
            .parse()
            .with_context(|| format!("{name} printed a bad address `{addr}`"))?;
        Ok((child, addr))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, up to 10 s for a graceful exit, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.running() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The open-file limit: soft (in force) and hard (the most an unprivileged process may set);
/// `None` = unlimited.
#[derive(Clone, Copy, Debug)]
pub struct OpenFiles {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises this process's soft open-file limit to the hard one (the children started later
/// inherit it; poolgate raises its own the same way) and returns the limits now in force.
pub fn raise_open_files() -> OpenFiles {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    let limit = getrlimit(Resource::Nofile);
    OpenFiles {
        soft: limit.current,
        hard: limit.maximum,
    }
}

/// A free port on 127.0.0.1 (bound and released; the kernel does not hand it out again at once).
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Kernel clock ticks per second (`getconf CLK_TCK`, normally 100).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|&ticks| ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// Resident memory and CPU time of a process plus its direct children.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    /// User + system CPU, in seconds.
    pub cpu_s: f64,
}

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces).
fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// (ppid, utime + stime in ticks) from a stat file. After the comm, field 0 is the state,
/// 1 the ppid, 11 utime, 12 stime.
fn ppid_and_ticks(path: &Path) -> Option<(u32, u64)> {
    let fields = stat_fields(path)?;
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// `pid` and its direct children (nginx's workers, uvicorn's workers).
pub fn tree(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![pid];
    };
    let children = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            ppid_and_ticks(&PathBuf::from(format!("/proc/{child}/stat")))
                .is_some_and(|(ppid, _)| ppid == pid)
        });
    std::iter::once(pid).chain(children).collect()
}

/// Memory and CPU of `pids` added up (see [`tree`]).
pub fn usage(pids: &[u32]) -> Usage {
    let mut total = Usage::default();
    let ticks = clock_ticks();
    for &p in pids {
        total.rss_kib += rss_kib(p).unwrap_or(0);
        if let Some((_, cpu)) = ppid_and_ticks(&PathBuf::from(format!("/proc/{p}/stat"))) {
            total.cpu_s += cpu as f64 / ticks;
        }
    }
    total
}

/// CPU seconds of the threads of `pid` whose name (`comm`) `counted` accepts.
pub fn threads_cpu_s(pid: u32, counted: impl Fn(&str) -> bool) -> f64 {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ticks = clock_ticks();
    entries
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if !counted(comm.trim()) {
                return None;
            }
            ppid_and_ticks(&dir.join("stat")).map(|(_, cpu)| cpu as f64 / ticks)
        })
        .sum()
}

/// The machine, for the report: `nproc`, CPU model, kernel, memory.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({
        "nproc": nproc,
        "cpu_model": model,
        "kernel": kernel,
        "mem_gib": (mem_gib * 10.0).round() / 10.0,
    })
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages (how busy the shared machine was).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `date -u` for the report header.
pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |d| d.trim().to_owned())
}
