//! TCP on either backend: glommio's io_uring sockets, or non-blocking std
//! sockets registered with `async-io`'s epoll reactor.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::future::Future as _;

use async_io::{Async, Timer};
use futures::io::{AsyncRead, AsyncWrite};

use super::{current, until, Backend};

/// A connected TCP stream.
pub enum TcpStream {
    Glommio(glommio::net::TcpStream),
    Epoll(EpollStream),
}

/// The epoll backend's stream, with the write timeout glommio's has built
/// in: a write that makes no progress for `write_timeout` fails with
/// `TimedOut` (a client that stopped reading its answer).
pub struct EpollStream {
    io: Async<std::net::TcpStream>,
    write_timeout: Option<Duration>,
    write_deadline: Option<Timer>,
}

impl EpollStream {
    fn new(io: Async<std::net::TcpStream>) -> Self {
        EpollStream {
            io,
            write_timeout: None,
            write_deadline: None,
        }
    }
}

impl TcpStream {
    /// Connects to `addr` on the caller's executor, failing with `TimedOut`
    /// after `timeout`.
    pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        match current() {
            Backend::Glommio => glommio::net::TcpStream::connect_timeout(addr, timeout)
                .await
                .map(TcpStream::Glommio)
                .map_err(io::Error::from),
            Backend::Epoll => until(
                Instant::now() + timeout,
                Async::<std::net::TcpStream>::connect(addr),
            )
            .await
            .unwrap_or_else(|| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr}: no answer within {timeout:?}"),
                ))
            })
            .map(|s| TcpStream::Epoll(EpollStream::new(s))),
        }
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            TcpStream::Glommio(s) => s.peer_addr().map_err(io::Error::from),
            TcpStream::Epoll(s) => s.io.get_ref().peer_addr(),
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            TcpStream::Glommio(s) => s.set_nodelay(on).map_err(io::Error::from),
            TcpStream::Epoll(s) => s.io.get_ref().set_nodelay(on),
        }
    }

    /// Writes that make no progress for `timeout` fail with `TimedOut`.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            TcpStream::Glommio(s) => s.set_write_timeout(timeout).map_err(io::Error::from),
            TcpStream::Epoll(s) => {
                s.write_timeout = timeout;
                s.write_deadline = None;
                Ok(())
            }
        }
    }

    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            TcpStream::Glommio(s) => s.shutdown(how).await.map_err(io::Error::from),
            TcpStream::Epoll(s) => s.io.get_ref().shutdown(how),
        }
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpStream::Glommio(s) => Pin::new(s).poll_read(cx, buf),
            TcpStream::Epoll(s) => Pin::new(&mut s.io).poll_read(cx, buf),
        }
    }
}

impl EpollStream {
    /// What a pending write means under the write timeout: still pending,
    /// or `TimedOut` once the deadline (armed at the first pending write
    /// since the last progress) has passed.
    fn pending_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(timeout) = self.write_timeout else {
            return Poll::Pending;
        };
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Timer::after(timeout));
        match Pin::new(deadline).poll(cx) {
            Poll::Ready(_) => {
                self.write_deadline = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer took no bytes for {timeout:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpStream::Glommio(s) => Pin::new(s).poll_write(cx, buf),
            TcpStream::Epoll(s) => match Pin::new(&mut s.io).poll_write(cx, buf) {
                Poll::Pending => s.pending_write(cx),
                done => {
                    s.write_deadline = None;
                    done
                }
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpStream::Glommio(s) => Pin::new(s).poll_flush(cx),
            TcpStream::Epoll(s) => Pin::new(&mut s.io).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpStream::Glommio(s) => Pin::new(s).poll_close(cx),
            TcpStream::Epoll(s) => Pin::new(&mut s.io).poll_close(cx),
        }
    }
}

/// A listening socket. Every executor of a node binds its own on the same
/// address with `SO_REUSEPORT`, and the kernel spreads connections among
/// them, on both backends.
pub enum TcpListener {
    Glommio(glommio::net::TcpListener),
    Epoll(Async<std::net::TcpListener>),
}

impl TcpListener {
    /// Binds `addr` for the caller's executor.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        match current() {
            Backend::Glommio => glommio::net::TcpListener::bind(addr)
                .map(TcpListener::Glommio)
                .map_err(io::Error::from),
            Backend::Epoll => {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.set_reuse_address(true)?;
                socket.set_reuse_port(true)?;
                socket.bind(&addr.into())?;
                socket.listen(1024)?;
                Async::new(std::net::TcpListener::from(socket)).map(TcpListener::Epoll)
            }
        }
    }

    pub async fn accept(&self) -> io::Result<TcpStream> {
        match self {
            TcpListener::Glommio(l) => l
                .accept()
                .await
                .map(TcpStream::Glommio)
                .map_err(io::Error::from),
            TcpListener::Epoll(l) => l
                .accept()
                .await
                .map(|(s, _)| TcpStream::Epoll(EpollStream::new(s))),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            TcpListener::Glommio(l) => l.local_addr().map_err(io::Error::from),
            TcpListener::Epoll(l) => l.get_ref().local_addr(),
        }
    }
}
