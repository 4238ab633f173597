//! The deadlines of one webhook connection, kept the way Go's `net/http` server keeps
//! `ReadHeaderTimeout` and `IdleTimeout` apart.
//!
//! A client that has started a request, and one that has just finished the TLS handshake, has
//! [`HEAD_TIMEOUT`] to send the whole head: a connection that trickles its headers is closed.
//! Between requests a kept-alive connection may stay idle for [`IDLE_TIMEOUT`], longer than the
//! 90 s for which the API server keeps an idle connection to a webhook. So it is the API server
//! that closes an idle connection, and a review it sends on a pooled connection never races the
//! webhook closing it (which the client sees as a reset, and the pod as a failed admission).
//!
//! hyper's own `header_read_timeout` cannot tell the two apart: it runs from the moment the
//! server waits for the next head, so an idle connection would be closed after the head's
//! timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a client has to send a request's head once it has begun it (or once the TLS
/// handshake is done, for the first request).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept-alive connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a connection is between two requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading a head; `after_newline` when the last byte other than `\r` was `\n`.
    Head { after_newline: bool },
    /// The head has arrived: the body, the handler and the answer have their own limits.
    Request,
    /// An answer was written; waiting for the next request.
    Idle,
}

impl Phase {
    /// The phase after the client sent `bytes`.
    fn read(self, bytes: &[u8]) -> Self {
        let mut after_newline = match self {
            Phase::Request => return Phase::Request,
            Phase::Idle if bytes.is_empty() => return Phase::Idle,
            Phase::Idle => false,
            Phase::Head { after_newline } => after_newline,
        };
        for &b in bytes {
            match b {
                // A blank line ends the head: `\r\n\r\n`, or `\n\n` as lenient parsers read it.
                b'\n' if after_newline => return Phase::Request,
                b'\n' => after_newline = true,
                b'\r' => {}
                _ => after_newline = false,
            }
        }
        Phase::Head { after_newline }
    }
}

/// A connection whose reads fail with [`io::ErrorKind::TimedOut`] when a head takes longer than
/// the head timeout, or the client stays idle longer than the idle timeout.
pub struct Deadlines<S> {
    inner: S,
    phase: Phase,
    head: Duration,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Deadlines<S> {
    /// `inner`, whose first head must arrive within [`HEAD_TIMEOUT`] from now.
    pub fn new(inner: S) -> Self {
        Self::with(inner, HEAD_TIMEOUT, IDLE_TIMEOUT)
    }

    fn with(inner: S, head: Duration, idle: Duration) -> Self {
        Deadlines {
            inner,
            phase: Phase::Head {
                after_newline: false,
            },
            head,
            idle,
            deadline: Box::pin(tokio::time::sleep(head)),
        }
    }
}

impl<S> Deadlines<S> {
    /// After a write: an answer (or part of one) went out, so the client may now stay idle.
    fn wrote(&mut self, written: &io::Result<usize>) {
        if matches!(written, Ok(n) if *n > 0) {
            self.phase = Phase::Idle;
            self.deadline.as_mut().reset(Instant::now() + self.idle);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let was = this.phase;
                this.phase = was.read(&buf.filled()[before..]);
                if was == Phase::Idle && this.phase != Phase::Idle {
                    // The next request has begun: its head has the head's time from here.
                    this.deadline.as_mut().reset(Instant::now() + this.head);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.phase == Phase::Request {
                    return Poll::Pending;
                }
                ready!(this.deadline.as_mut().poll(cx));
                let what = if this.phase == Phase::Idle {
                    "the connection stayed idle past the idle timeout"
                } else {
                    "the request head did not arrive within the head timeout"
                };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        self.wrote(&written);
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        self.wrote(&written);
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(120);

    #[test]
    fn a_blank_line_ends_the_head_however_it_is_split() {
        let whole = b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        for split in 0..whole.len() {
            let (a, b) = whole.split_at(split);
            let phase = Phase::Head {
                after_newline: false,
            }
            .read(a)
            .read(b);
            assert_eq!(phase, Phase::Request, "split at {split}");
        }
        let lenient = Phase::Idle.read(b"GET /healthz HTTP/1.1\nHost: x\n\n");
        assert_eq!(lenient, Phase::Request);
        let unfinished = Phase::Idle.read(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Ty");
        assert_eq!(
            unfinished,
            Phase::Head {
                after_newline: false
            }
        );
        // A header line ending is not a blank line.
        assert_eq!(
            Phase::Idle.read(b"POST / HTTP/1.1\r\nA: b\r\n"),
            Phase::Head {
                after_newline: true
            }
        );
        assert_eq!(Phase::Idle.read(b""), Phase::Idle);
        assert_eq!(Phase::Request.read(b"\r\n\r\nGET"), Phase::Request);
    }

    /// The server's end wrapped, and the client's end.
    fn pair() -> (Deadlines<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(64 * 1024);
        (Deadlines::with(server, HEAD, IDLE), client)
    }

    async fn read_some(server: &mut Deadlines<DuplexStream>) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; 1024];
        let n = server.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_first_head_is_cut_off_at_the_head_timeout() {
        let (mut server, mut client) = pair();
        let started = Instant::now();
        client
            .write_all(b"POST /mutate HTTP/1.1\r\nHo")
            .await
            .unwrap();
        read_some(&mut server).await.unwrap();
        let err = read_some(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_kept_alive_connection_outlives_the_head_timeout_until_the_idle_timeout() {
        let (mut server, mut client) = pair();
        client
            .write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_some(&mut server).await.unwrap();
        // While the request is handled, a pending read does not time out.
        let waited = tokio::time::timeout(HEAD * 3, read_some(&mut server)).await;
        assert!(waited.is_err(), "the read ended: {waited:?}");
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();

        // Idle for longer than a head may take: the next request is still read.
        let answered = Instant::now();
        tokio::time::sleep(HEAD * 5).await;
        client
            .write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(!read_some(&mut server).await.unwrap().is_empty());
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();

        // Idle past the idle timeout: closed.
        let answered_again = Instant::now();
        assert!(answered_again - answered >= HEAD * 5);
        let err = read_some(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(answered_again.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_head_begun_after_idling_has_the_head_timeout_from_its_first_byte() {
        let (mut server, mut client) = pair();
        client
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        read_some(&mut server).await.unwrap();
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
        client.write_all(b"POST /mutate HTT").await.unwrap();
        read_some(&mut server).await.unwrap();
        let begun = Instant::now();
        let err = read_some(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(begun.elapsed(), HEAD);
    }
}
