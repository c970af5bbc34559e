//! `poolgate serve` as a real process on `--listen 127.0.0.1:0`: the bound address is read from
//! the "poolgate listening" log line, so no port is picked in advance. Output is collected in the
//! background; the process is killed if a test drops it running.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Environment variables the binary reads; cleared so the host cannot leak into a test.
pub const POOLGATE_ENV: &[&str] = &[
    "POOLGATE_DATA_DIR",
    "POOLGATE_DATABASE_URL",
    "POOLGATE_CONFIG",
    "POOLGATE_MASTER_KEY",
    "POOLGATE_MASTER_KEY_FILE",
    "POOLGATE_ADMIN_TOKEN",
    "POOLGATE_LISTEN",
    "POOLGATE_LOG_FORMAT",
    "POOLGATE_REDIS_URL",
    "POOLGATE_INSTANCE_ID",
    "RUST_LOG",
];

/// The binary with `args`, its environment cleared of poolgate's variables, then `envs` set.
pub fn poolgate_command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_poolgate"));
    command.args(args);
    for var in POOLGATE_ENV {
        command.env_remove(var);
    }
    command.envs(envs.iter().copied());
    command
}

fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buffer = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&buffer);
    std::thread::spawn(move || {
        let mut chunk = [0_u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buffer
}

/// Without ANSI colour sequences (`ESC [ … m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address in the "poolgate listening addr=…" log line (or `"addr":"…"` with
/// `--log-format json`), if it was logged.
pub fn listening_addr(log: &str) -> Option<String> {
    let log = plain(log);
    let line = log
        .lines()
        .find(|line| line.contains("poolgate listening"))?;
    let start = match line.find("addr=") {
        Some(at) => at + "addr=".len(),
        None => line.find("\"addr\":")? + "\"addr\":".len(),
    };
    let addr: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',')
        .collect();
    Some(addr.trim_matches('"').to_owned())
}

/// A running `poolgate serve`.
pub struct Served {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `poolgate serve --listen 127.0.0.1:0 --data-dir DIR` plus `extra` arguments.
    pub fn spawn(data_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Served {
        let data_dir = data_dir.to_str().expect("utf-8 temp path");
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir];
        args.extend_from_slice(extra);
        Self::spawn_command(poolgate_command(&args, envs))
    }

    /// Starts `command` (a `poolgate serve`, possibly wrapped) with its output collected.
    pub fn spawn_command(mut command: Command) -> Served {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("poolgate serve starts");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Served {
            child,
            stdout,
            stderr,
        }
    }

    /// (stdout, stderr) so far.
    pub fn output(&self) -> (String, String) {
        (
            self.stdout.lock().unwrap().clone(),
            self.stderr.lock().unwrap().clone(),
        )
    }

    /// Both outputs, for failure messages.
    pub fn log(&self) -> String {
        let (out, err) = self.output();
        format!("--- stdout ---\n{out}\n--- stderr ---\n{err}")
    }

    /// Waits for the "listening" log line and returns `http://<bound address>`; panics if the
    /// process exits first or nothing is logged within 15 s.
    pub async fn url(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(addr) = listening_addr(&self.output().0) {
                return format!("http://{addr}");
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("poolgate serve exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "poolgate serve never logged its address:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success(), "kill -TERM {pid}");
    }

    /// Waits for the process to exit (at most `limit`) and returns its status, once its output
    /// pipes are drained.
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads see the end of the pipes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("poolgate did not exit within {limit:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
