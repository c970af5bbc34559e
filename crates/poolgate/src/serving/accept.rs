//! The accept side of the server: what an accept error means and how long to pause after it,
//! rate-limited log lines, and the short 503 for a connection over the cap.

use std::io;
use std::time::Duration;

use rustix::io::Errno;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::domain::RequestId;

/// At most one log line per `interval`; the next one says how many were held back.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last line)` when a line may be written now.
    pub fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What an accept error says about the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptError {
    /// A connection failed between the handshake and `accept` (Linux hands over pending network
    /// errors of the new socket): nothing is wrong with the server; accept the next one at once.
    Connection,
    /// Out of file descriptors or kernel memory: back off, the next attempt fails the same way
    /// until some connection closes.
    Resources,
    /// Anything else: back off too, never spin.
    Other,
}

impl AcceptError {
    pub fn classify(error: &io::Error) -> Self {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
        ) {
            return Self::Connection;
        }
        match Errno::from_io_error(error) {
            Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => Self::Resources,
            Some(
                Errno::PROTO
                | Errno::PERM
                | Errno::NETDOWN
                | Errno::NOPROTOOPT
                | Errno::HOSTDOWN
                | Errno::NONET
                | Errno::HOSTUNREACH
                | Errno::OPNOTSUPP
                | Errno::NETUNREACH
                | Errno::TIMEDOUT,
            ) => Self::Connection,
            _ => Self::Other,
        }
    }
}

/// The pause after failed accepts: 5 ms, doubling up to 1 s, reset by a successful accept.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    log: Throttle,
}

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST_PAUSE,
            log: Throttle::new(Duration::from_secs(10)),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.next = FIRST_PAUSE;
    }

    /// Logs the error (rate-limited) and returns how long to pause before accepting again.
    pub fn on_error(&mut self, error: &io::Error) -> Option<Duration> {
        let kind = AcceptError::classify(error);
        if kind == AcceptError::Connection {
            tracing::debug!(%error, "a connection failed before it was accepted");
            return None;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(LONGEST_PAUSE);
        if let Some(suppressed) = self.log.ready() {
            if kind == AcceptError::Resources {
                tracing::error!(
                    %error,
                    retry_in_ms = pause.as_millis(),
                    suppressed,
                    "cannot accept connections: out of file descriptors or memory; raise the open-file limit (`ulimit -n`, systemd `LimitNOFILE`) or lower `server.max_connections`"
                );
            } else {
                tracing::error!(
                    %error,
                    retry_in_ms = pause.as_millis(),
                    suppressed,
                    "cannot accept connections"
                );
            }
        }
        Some(pause)
    }
}

/// The answer to a connection over the cap (OpenAI error shape), with its request id.
fn reject_response(request_id: &RequestId) -> Vec<u8> {
    const BODY: &str = "{\"error\":{\"message\":\"poolgate is at its connection limit; retry \
                        shortly\",\"type\":\"server_error\",\"param\":null,\"code\":\
                        \"connection_limit\"}}";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\nx-request-id: {request_id}\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// How long a rejected connection may take, answer and lingering close together.
const REJECT_TIME: Duration = Duration::from_secs(2);

/// Answers 503 without reading the request, then closes. After the answer, what the client
/// still sends is read and thrown away for a moment ("lingering close", as nginx does):
/// closing a socket with unread input makes the kernel reset the connection, and a reset can
/// destroy the answer before the client read it.
pub async fn reject(mut stream: TcpStream) {
    let answer = async {
        stream
            .write_all(&reject_response(&RequestId::generate()))
            .await?;
        stream.shutdown().await?;
        discard_input(&stream, 64 * 1024).await
    };
    if let Ok(Err(error)) = tokio::time::timeout(REJECT_TIME, answer).await {
        tracing::debug!(%error, "could not answer a connection over the cap");
    }
}

/// The read side of a lingering close: reads and drops what the client still sends, up to
/// `limit` bytes or its own close. The caller shut the write side first and bounds the time.
pub(super) async fn discard_input(stream: &TcpStream, limit: usize) -> io::Result<()> {
    let mut total = 0_usize;
    while total < limit {
        stream.readable().await?;
        let mut discard = [0_u8; 4096];
        match stream.try_read(&mut discard) {
            Ok(0) => break,
            Ok(read) => total += read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reject_answer_declares_its_true_length_and_its_request_id() {
        let id = RequestId::generate();
        let answer = reject_response(&id);
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(
            head.contains(&format!("\r\nx-request-id: {id}\r\n")),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "connection_limit");
    }

    #[test]
    fn accept_errors_are_classified() {
        let from = |errno: Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        assert_eq!(
            AcceptError::classify(&from(Errno::MFILE)),
            AcceptError::Resources
        );
        assert_eq!(
            AcceptError::classify(&from(Errno::NFILE)),
            AcceptError::Resources
        );
        assert_eq!(
            AcceptError::classify(&from(Errno::CONNABORTED)),
            AcceptError::Connection
        );
        assert_eq!(
            AcceptError::classify(&from(Errno::PROTO)),
            AcceptError::Connection
        );
        assert_eq!(
            AcceptError::classify(&from(Errno::INVAL)),
            AcceptError::Other
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_a_second_and_resets() {
        let emfile = io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        let mut backoff = Backoff::default();
        let pauses: Vec<u128> = (0..10)
            .map(|_| backoff.on_error(&emfile).unwrap().as_millis())
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.on_error(&emfile), Some(FIRST_PAUSE));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.on_error(&aborted), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttle_lets_one_line_through_per_interval() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.ready(), Some(0));
        assert_eq!(throttle.ready(), None);
        assert_eq!(throttle.ready(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.ready(), Some(2));
        assert_eq!(throttle.ready(), None);
    }
}
