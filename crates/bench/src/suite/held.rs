//! **held** — memory with many open streams: for each count N (default 5,000 and 20,000), a
//! fresh poolgate (so memory kept from earlier load is not counted), N client connections each
//! holding a stream open (the upstream sends one event per second), then all closed at once.
//!
//! Figures per N: RSS idle (before), RSS with the N streams open, RSS per stream
//! (`(open − idle) / open streams`), streams that failed to open or ended early, how long
//! poolgate took to close every connection once the clients left, and RSS [`SETTLE`] after
//! that (what the allocator gave back).
//!
//! Each stream costs poolgate two descriptors (the client socket and the upstream socket), the
//! harness and the mock one each: a count the open-file limit cannot hold is skipped and said
//! so, rather than measured as errors. Past [`CONNECTIONS_PER_SOURCE`] the client sockets come
//! from several loopback source addresses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::{main_spec, Bench, Stack, MB};
use crate::load::{hold_streams, Target, CONNECTIONS_PER_SOURCE};
use crate::procs::{usage, OpenFiles};
use crate::stack::{start_poolgate, PoolgateSpec};

/// How long after the last stream closed the "after close" RSS is read (default of
/// `--held-settle-ms`).
pub const SETTLE: Duration = Duration::from_secs(2);

/// The longest wait for poolgate to close every connection after the clients left.
pub const CLOSE_WAIT: Duration = Duration::from_secs(15);

/// Descriptors poolgate keeps for everything but connections (its `RESERVED_DESCRIPTORS`).
const POOLGATE_RESERVED: u64 = 128;

/// What one held-streams run measured (or why it was skipped).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeldRun {
    /// Streams asked for.
    pub streams: usize,
    /// Why it was not measured (descriptor limit), if it was not.
    pub skipped: Option<String>,
    /// Streams that got their first byte.
    pub opened: usize,
    /// Streams that failed to open (connect error, non-2xx, ended before the first byte).
    pub failed: usize,
    /// Streams open when RSS was sampled (opened minus those that ended on their own).
    pub open_at_sample: usize,
    /// Opened streams that ended before the harness closed them.
    pub ended_early: usize,
    /// Up to five error messages of failed streams.
    pub failures: Vec<String>,
    /// Client source addresses used (0 = one, the kernel's choice).
    pub sources: usize,
    pub open_seconds: f64,
    pub rss_idle_mb: f64,
    pub rss_open_mb: f64,
    /// `(rss_open − rss_idle) / open_at_sample`, in KB (10³ bytes).
    pub kb_per_stream: f64,
    /// RSS [`SETTLE`] after every stream was closed.
    pub rss_after_close_mb: f64,
    pub settle_ms: u64,
    /// poolgate's open descriptors with the streams open, and after the settle time (a
    /// connection still open then shows here).
    pub fds_open: usize,
    pub fds_after_close: usize,
    /// Client connections dropped → poolgate's descriptors back near the idle count (at
    /// most [`CLOSE_WAIT`]).
    pub close_seconds: f64,
}

impl HeldRun {
    /// Every stream opened and stayed open until closed.
    pub fn without_error(&self) -> bool {
        self.skipped.is_none()
            && self.failed == 0
            && self.ended_early == 0
            && self.open_at_sample == self.streams
    }
}

/// Why `streams` held streams cannot run under `limits`, if they cannot.
pub fn descriptor_shortfall(streams: usize, limits: OpenFiles) -> Option<String> {
    let hard = limits.hard?;
    let n = streams as u64;
    let poolgate = 2 * n + POOLGATE_RESERVED;
    // The harness: one socket per stream plus its own files; the mock: one per stream.
    let harness = n + 256;
    let need = poolgate.max(harness);
    (hard < need).then(|| {
        format!(
            "not measurable on this machine: {streams} streams need {need} open files in poolgate (a client and an upstream socket per stream, + {POOLGATE_RESERVED}) but the hard limit (`ulimit -Hn`) is {hard}; run as a user allowed more (`ulimit -Hn`, systemd `LimitNOFILE`)"
        )
    })
}

impl Bench<'_> {
    pub(super) async fn held(&mut self, stack: &Stack) -> Result<()> {
        for streams in self.opts.held_streams.clone() {
            let run = match descriptor_shortfall(streams, self.open_files) {
                Some(reason) => {
                    eprintln!("bench: held {streams} streams: {reason}");
                    self.results
                        .notes
                        .push(format!("Held {streams} streams: {reason}."));
                    HeldRun {
                        streams,
                        skipped: Some(reason),
                        ..HeldRun::default()
                    }
                }
                None => self.held_one(stack, streams).await?,
            };
            self.results.held.push(run);
        }
        Ok(())
    }

    async fn held_one(&mut self, stack: &Stack, streams: usize) -> Result<HeldRun> {
        let spec = PoolgateSpec {
            name: format!("poolgate-held-{streams}"),
            // The default (half of `server.max_connections`, itself derived from the
            // open-file limit) would refuse part of them: the memory figure wants them all.
            max_in_flight: Some(streams + 64),
            ..main_spec(&stack.fast, &stack.gap, &stack.slow)
        };
        let poolgate = start_poolgate(self.bins, &spec, &self.work, &self.logs).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = poolgate.child.pid();
        let rss = || usage(&[pid]).rss_kib as f64 * 1024.0 / MB;
        let target = Arc::new(Target::chat(
            poolgate.addr,
            Some(&poolgate.key),
            "bench-slow",
            true,
        )?);
        let idle = rss();
        let fds_idle = open_fds(pid);
        eprintln!(
            "bench: opening {streams} concurrent streams through poolgate{}",
            if streams > CONNECTIONS_PER_SOURCE {
                " (from several 127.0.0.x source addresses)"
            } else {
                ""
            }
        );
        let started = Instant::now();
        let held = hold_streams(target, streams, 128, Duration::from_secs(60)).await;
        let open_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let open_at_sample = held.open_now();
        let open = rss();
        let fds_open = open_fds(pid);
        let (opened, failed, failures, sources) = (
            held.opened,
            held.failed,
            held.failures.clone(),
            held.sources,
        );
        let ended_early = opened.saturating_sub(held.open_now());
        held.close().await;
        // poolgate notices a client gone at its next write (the upstream's next event, within
        // a second) and then closes both sockets: wait until its descriptors are back near the
        // idle count, so the figure is what the allocator kept, not connections still closing.
        let closing = Instant::now();
        while open_fds(pid) > fds_idle + 16 && closing.elapsed() < CLOSE_WAIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let close_seconds = closing.elapsed().as_secs_f64();
        let settle = self.opts.held_settle;
        tokio::time::sleep(settle).await;
        let after = rss();
        let fds_after_close = open_fds(pid);
        let kb_per_stream = if open_at_sample > 0 {
            (open - idle) * MB / 1000.0 / open_at_sample as f64
        } else {
            0.0
        };
        eprintln!(
            "bench: {open_at_sample} of {streams} streams open ({failed} failed, {ended_early} ended early): poolgate RSS idle {idle:.1} MB, open {open:.1} MB ({kb_per_stream:.1} KB per stream, {fds_open} descriptors); closed in {close_seconds:.1} s, {:.1} s later {after:.1} MB ({fds_after_close} descriptors)",
            settle.as_secs_f64()
        );
        for failure in &failures {
            eprintln!("bench:   a failed stream: {failure}");
        }
        drop(poolgate);
        Ok(HeldRun {
            streams,
            skipped: None,
            opened,
            failed,
            open_at_sample,
            ended_early,
            failures,
            sources,
            open_seconds,
            rss_idle_mb: idle,
            rss_open_mb: open,
            kb_per_stream,
            rss_after_close_mb: after,
            settle_ms: settle.as_millis() as u64,
            fds_open,
            fds_after_close,
            close_seconds,
        })
    }
}

/// Entries of `/proc/<pid>/fd` (0 when unreadable).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_the_descriptor_limit_cannot_hold_is_skipped() {
        let limits = |hard| OpenFiles { soft: hard, hard };
        assert!(descriptor_shortfall(5_000, limits(Some(20_000))).is_none());
        let why = descriptor_shortfall(20_000, limits(Some(20_000))).unwrap();
        assert!(why.contains("40128") && why.contains("20000"), "{why}");
        assert!(descriptor_shortfall(20_000, limits(Some(65_536))).is_none());
        assert!(descriptor_shortfall(20_000, limits(None)).is_none());
    }
}
