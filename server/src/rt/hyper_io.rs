//! What hyper needs from a runtime, provided on either of ours.
//!
//! hyper 1.x is runtime-agnostic: it asks for byte streams implementing its
//! own `Read`/`Write` traits, an executor for the background tasks of an
//! HTTP/2 connection, and a timer. glommio's sockets implement the
//! `futures-io` traits, its tasks are `!Send` and live on the executor that
//! spawned them, so:
//!
//! * [`Io`] adapts a `futures-io` stream to hyper's traits, optionally
//!   replaying bytes already read (the listener reads the first bytes of a
//!   connection to tell HTTP/2 from HTTP/1.1, then hands them back).
//! * [`LocalExec`] spawns hyper's connection tasks with
//!   [`super::spawn_local`] on the current executor; non-`Send` futures
//!   are fine.
//! * [`AsyncIoTimer`] gives hyper `Send + Sync` sleeps (its `Sleep` trait
//!   requires them, glommio's timers are `!Send`) from `async-io`'s timer
//!   thread; both executors accept wake-ups from foreign threads.
//!
//! The adapter copies through a small buffer rather than handing hyper's
//! uninitialised buffer to the socket: that would need `unsafe`, and the
//! requests here are a few kilobytes of JSON.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};

/// The size of the copy buffer between the socket and hyper.
const COPY_BUF: usize = 16 * 1024;

/// A `futures-io` byte stream seen through hyper's IO traits.
pub struct Io<S> {
    inner: S,
    /// Bytes read before hyper took over, returned first.
    prefix: Vec<u8>,
    prefix_pos: usize,
    buf: Box<[u8]>,
}

impl<S> Io<S> {
    pub fn new(inner: S) -> Self {
        Self::with_prefix(inner, Vec::new())
    }

    /// A stream whose first bytes are `prefix`, then whatever `inner` yields.
    pub fn with_prefix(inner: S, prefix: Vec<u8>) -> Self {
        Io {
            inner,
            prefix,
            prefix_pos: 0,
            buf: vec![0; COPY_BUF].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for Io<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut out: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.prefix_pos..) {
            if !rest.is_empty() {
                let n = rest.len().min(out.remaining());
                out.put_slice(&rest[..n]);
                this.prefix_pos += n;
                return Poll::Ready(Ok(()));
            }
        }
        let want = out.remaining().min(this.buf.len());
        let buf = &mut this.buf[..want];
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => {
                out.put_slice(&buf[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for Io<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// Runs hyper's background futures (HTTP/2 connection drivers, streams) as
/// detached tasks on the current executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        super::spawn_local(fut).detach();
    }
}

/// hyper's timer (header read timeouts, HTTP/2 keep-alive) on `async-io`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncIoTimer;

struct Sleep(async_io::Timer);

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for AsyncIoTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(async_io::Timer::after(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(async_io::Timer::at(deadline)))
    }
}
