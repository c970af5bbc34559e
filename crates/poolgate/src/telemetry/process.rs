//! Process metrics under the standard `process_*` names (CPU seconds, resident and virtual
//! memory, open and maximum file descriptors, start time), read from `/proc/self` at scrape
//! time. On systems without `/proc` the families are simply absent.

use std::path::Path;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::scrape::ScrapeFamily;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 by the Linux ABI on
/// every mainstream architecture).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// What one look at `/proc/self` found; a field is `None` when it could not be read.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessFigures {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<f64>,
    pub virtual_memory_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessFigures {
    /// Reads the figures of this process from `/proc`.
    pub fn read() -> Self {
        Self::read_from(Path::new("/proc"), Path::new("/proc/self"))
    }

    fn read_from(proc_root: &Path, process: &Path) -> Self {
        let stat = std::fs::read_to_string(process.join("stat")).ok();
        let stat = stat.as_deref().and_then(StatFields::parse);
        let boot_time = std::fs::read_to_string(proc_root.join("stat"))
            .ok()
            .and_then(|text| boot_time(&text));
        ProcessFigures {
            cpu_seconds: stat
                .as_ref()
                .map(|s| (s.utime + s.stime) as f64 / CLOCK_TICKS_PER_SECOND),
            resident_memory_bytes: std::fs::read_to_string(process.join("status"))
                .ok()
                .and_then(|text| resident_bytes(&text)),
            virtual_memory_bytes: stat.as_ref().map(|s| s.vsize as f64),
            open_fds: std::fs::read_dir(process.join("fd"))
                .ok()
                .map(|entries| entries.count() as f64),
            max_fds: std::fs::read_to_string(process.join("limits"))
                .ok()
                .and_then(|text| max_open_files(&text)),
            start_time_seconds: stat
                .as_ref()
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / CLOCK_TICKS_PER_SECOND),
        }
    }
}

/// The fields of `/proc/<pid>/stat` poolgate reads.
#[derive(Debug, PartialEq)]
struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
}

impl StatFields {
    /// Parses `pid (comm) state ppid …`; `comm` may hold spaces and parentheses, so the fields
    /// are counted from the last `)`.
    fn parse(text: &str) -> Option<Self> {
        let rest = &text[text.rfind(')')? + 1..];
        // Field 3 (state) is index 0 here; utime is field 14, stime 15, starttime 22, vsize 23.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
        Some(StatFields {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
        })
    }
}

/// `VmRSS:   12345 kB` from `/proc/<pid>/status`, in bytes.
fn resident_bytes(status: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// The soft limit of `Max open files` from `/proc/<pid>/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime <seconds>` from `/proc/stat`: when the machine booted.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The `process_*` families, filled from `/proc/self` at every scrape.
pub struct ProcessCollector {
    cpu: ScrapeFamily,
    resident: ScrapeFamily,
    virtual_memory: ScrapeFamily,
    open_fds: ScrapeFamily,
    max_fds: ScrapeFamily,
    start_time: ScrapeFamily,
}

impl ProcessCollector {
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            cpu: ScrapeFamily::counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                &[],
            )?,
            resident: ScrapeFamily::gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                &[],
            )?,
            virtual_memory: ScrapeFamily::gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                &[],
            )?,
            open_fds: ScrapeFamily::gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                &[],
            )?,
            max_fds: ScrapeFamily::gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                &[],
            )?,
            start_time: ScrapeFamily::gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                &[],
            )?,
        })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![
            &self.cpu.desc,
            &self.resident.desc,
            &self.virtual_memory.desc,
            &self.open_fds.desc,
            &self.max_fds.desc,
            &self.start_time.desc,
        ]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let figures = ProcessFigures::read();
        [
            (&self.cpu, figures.cpu_seconds),
            (&self.resident, figures.resident_memory_bytes),
            (&self.virtual_memory, figures.virtual_memory_bytes),
            (&self.open_fds, figures.open_fds),
            (&self.max_fds, figures.max_fds),
            (&self.start_time, figures.start_time_seconds),
        ]
        .into_iter()
        .filter_map(|(family, value)| value.map(|value| family.single(value)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // comm "(a) b)" holds a space and a parenthesis.
        let text = "4242 ((a) b)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 \
                    123456 987654321 3000 18446744073709551615";
        assert_eq!(
            StatFields::parse(text),
            Some(StatFields {
                utime: 250,
                stime: 50,
                start_ticks: 123_456,
                vsize: 987_654_321,
            })
        );
        assert_eq!(StatFields::parse("garbage"), None);
    }

    #[test]
    fn status_limits_and_boot_time_are_parsed() {
        assert_eq!(
            resident_bytes("Name:\tpoolgate\nVmRSS:\t   2048 kB\nVmSwap: 0 kB\n"),
            Some(2048.0 * 1024.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let figures = ProcessFigures::read();
        assert!(figures
            .resident_memory_bytes
            .is_some_and(|b| b > 1024.0 * 1024.0));
        assert!(figures.open_fds.is_some_and(|n| n >= 3.0));
        assert!(figures
            .max_fds
            .is_some_and(|n| n >= figures.open_fds.unwrap_or(0.0)));
        assert!(figures.cpu_seconds.is_some_and(|s| s >= 0.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = figures.start_time_seconds.unwrap();
        // Started in the past, and not before the machine booted a year ago.
        assert!(started <= now + 1.0 && started > now - 366.0 * 24.0 * 3600.0);
    }
}
