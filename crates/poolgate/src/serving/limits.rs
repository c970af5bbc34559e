//! The process's open-file limit and the connection cap derived from it. Every client
//! connection costs one descriptor and, while it is proxied, an upstream connection another;
//! SQLite, the usage journal, the listener and the runtime need a few more. A cap at half of
//! what is left keeps `accept` from ever failing with `EMFILE` in normal operation.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for everything that is not a client or upstream connection.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// Upper bound of the derived default (memory, not descriptors, is the limit past this).
pub const DEFAULT_MAX_CONNECTIONS_CEILING: usize = 65_536;

/// The soft open-file limit (`ulimit -n`); `None` = unlimited.
pub fn open_file_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Raises the soft open-file limit to the hard one (what Go does at start-up since 1.19) and
/// returns the limit now in force. Systemd services start with a soft limit of 1024 and a hard
/// limit far above it; nothing is lost by using what the administrator allowed.
pub fn raise_open_file_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(%error, "cannot raise the open-file limit");
        }
    }
    open_file_limit()
}

/// The default `server.max_connections` for an open-file limit: half of what is left after
/// [`RESERVED_DESCRIPTORS`] (client and upstream side), at least 16, at most
/// [`DEFAULT_MAX_CONNECTIONS_CEILING`].
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else {
        return DEFAULT_MAX_CONNECTIONS_CEILING;
    };
    let half = open_files.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(half)
        .unwrap_or(usize::MAX)
        .clamp(16, DEFAULT_MAX_CONNECTIONS_CEILING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_upstreams_and_files() {
        assert_eq!(default_max_connections(Some(256)), 64);
        assert_eq!(default_max_connections(Some(1024)), 448);
        assert_eq!(default_max_connections(Some(20_000)), 9_936);
        assert_eq!(default_max_connections(Some(100)), 16);
        assert_eq!(default_max_connections(Some(1 << 20)), 65_536);
        assert_eq!(default_max_connections(None), 65_536);
    }

    #[test]
    fn the_limit_is_readable_and_raising_never_lowers_it() {
        let before = open_file_limit();
        let after = raise_open_file_limit();
        match (before, after) {
            (Some(before), Some(after)) => assert!(after >= before),
            (_, None) => {}
            (None, Some(after)) => panic!("limit appeared from nowhere: {after}"),
        }
    }
}
