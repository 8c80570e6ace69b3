//! Serving HTTP on a public port with the limits every such port needs, so that slow or
//! greedy clients cannot hold a server's memory or descriptors:
//!
//! - a cap on open connections per process and per client address (over it, a `503` with
//!   `Retry-After` is written at once and the connection closed, without reading a byte);
//! - request headers must arrive within a timeout (slowloris) and fit a size limit; an idle
//!   keep-alive connection is closed after the same timeout;
//! - request bodies larger than a limit are refused with `413` before a handler runs;
//! - WebSocket upgrades keep working, and an upgraded connection still counts against the
//!   caps until it closes;
//! - on shutdown the listener closes, requests in flight finish (up to a deadline), and
//!   upgraded connections are left to their owners.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// Connections the kernel may hold for a listener before it accepts them (capped by
/// `net.core.somaxconn`). tokio's default is 1,024: when a failed node's thousands of
/// editors reconnect at once, the kernel dropped their handshakes beyond it and each such
/// client waited for its TCP retry (1 s, then 3 s, then 7 s).
const BACKLOG: u32 = 4096;

/// Binds `addr` for serving, with a backlog deep enough for a reconnect storm.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Longest the requests in flight may take once the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The smallest header buffer hyper accepts.
const MIN_HEADER_BYTES: usize = 8192;

/// What a public port allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest the headers of a request may take to arrive (and an idle keep-alive
    /// connection may wait for the next request).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes (8 KiB at least).
    pub max_header_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: u64,
    /// Open connections of the process, WebSockets included.
    pub max_connections: usize,
    /// Open connections from one client address; 0: no limit.
    pub max_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            max_connections: 20_000,
            max_per_address: 2_000,
        }
    }
}

/// The settings of a public port's limits, shared by nodes and routers.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LimitArgs {
    /// Most open connections (WebSockets included); more are answered 503 and closed.
    #[arg(long, env = "TROUPE_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Most open connections from one client address (0: no limit). Browsers behind one
    /// corporate NAT share an address: keep it generous.
    #[arg(long, env = "TROUPE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 2_000)]
    pub max_connections_per_address: usize,
    /// Longest a request's headers may take to arrive (a WebSocket handshake included), and
    /// an idle keep-alive connection may wait for the next request.
    #[arg(long, env = "TROUPE_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger ones get 431.
    #[arg(long, env = "TROUPE_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Largest request body, in bytes; larger ones get 413.
    #[arg(long, env = "TROUPE_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: u64,
}

impl LimitArgs {
    /// The limits, or one line naming the bad setting.
    pub fn limits(&self) -> Result<Limits, String> {
        if self.max_connections == 0 {
            return Err("TROUPE_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.header_timeout < Duration::from_millis(100) {
            return Err("TROUPE_HEADER_TIMEOUT must be at least 100ms".into());
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(format!(
                "TROUPE_MAX_HEADER_BYTES must be at least {MIN_HEADER_BYTES}"
            ));
        }
        Ok(Limits {
            header_timeout: self.header_timeout,
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections,
            max_per_address: self.max_connections_per_address,
        })
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The process holds `max_connections`.
    Full,
    /// The client's address holds `max_per_address`.
    AddressFull,
}

impl Refused {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Full => "max_connections",
            Refused::AddressFull => "max_connections_per_address",
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; `refused` hears
/// of every connection turned away (for metrics).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    refused: impl Fn(Refused) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let gate = Arc::new(Gate::new(limits));
    // Connections still speaking HTTP finish their request when told to stop; upgraded
    // ones have left hyper (and this tracker) already.
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let pass = match gate.admit(from.ip()) {
            Ok(pass) => pass,
            Err(why) => {
                refused(why);
                turn_away(&tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(Counted { io: tcp, _pass: pass });
        let app = app.clone();
        let max_body = limits.max_body_bytes;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut app = app.clone();
            async move {
                if body_too_large(&request, max_body) {
                    return Ok(too_large());
                }
                app.call(request.map(Body::new)).await
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
            .serve_connection(io, service)
            .with_upgrades();
        let stop = stopping.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%from, %error, "connection ended");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight at shutdown were cut");
    }
}

/// Writes a `503` on a fresh connection without waiting (its send buffer is empty, so the
/// few bytes fit) and closes it.
fn turn_away(tcp: &TcpStream) {
    const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
retry-after: 5\r\nconnection: close\r\ncontent-length: 21\r\n\r\ntoo many connections\n";
    let _ = tcp.try_write(ANSWER);
}

fn body_too_large(request: &Request<Incoming>, max: u64) -> bool {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|length| length > max)
}

fn too_large() -> Response<Body> {
    let mut response = Response::new(Body::from("request body too large\n"));
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    response
        .headers_mut()
        .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// Counts open connections, in all and per client address.
struct Gate {
    limits: Limits,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Gate {
    fn new(limits: Limits) -> Gate {
        Gate {
            limits,
            open: Mutex::new(Open::default()),
        }
    }

    fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Pass, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Refused::Full);
        }
        let from_there = open.by_address.entry(address).or_insert(0);
        if self.limits.max_per_address > 0 && *from_there >= self.limits.max_per_address {
            return Err(Refused::AddressFull);
        }
        *from_there += 1;
        open.total += 1;
        Ok(Pass {
            gate: self.clone(),
            address,
        })
    }
}

/// One admitted connection; gives its place back when dropped.
struct Pass {
    gate: Arc<Gate>,
    address: IpAddr,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// A connection's socket with its place in the [`Gate`]: an upgraded WebSocket keeps the
/// socket, and so its place, until it closes.
struct Counted<IO> {
    io: IO,
    _pass: Pass,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_address: usize) -> Arc<Gate> {
        Arc::new(Gate::new(Limits {
            max_connections: total,
            max_per_address: per_address,
            ..Limits::default()
        }))
    }

    #[test]
    fn caps_count_per_process_and_per_address_and_free_on_drop() {
        let gate = gate(3, 2);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let a1 = gate.admit(a);
        let a2 = gate.admit(a);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(gate.admit(a).err(), Some(Refused::AddressFull));
        let b1 = gate.admit(b);
        assert!(b1.is_ok());
        assert_eq!(
            gate.admit(b).err(),
            Some(Refused::Full),
            "the process is full first"
        );
        drop(a1);
        let b2 = gate.admit(b);
        assert!(b2.is_ok(), "a closed connection gives its place back");
        drop((a2, b1));
        let open = gate.open.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(open.total, 1);
        assert_eq!(
            open.by_address.len(),
            1,
            "addresses without connections are forgotten"
        );
    }

    #[test]
    fn zero_means_no_cap_per_address() {
        let gate = gate(100, 0);
        let passes: Vec<_> = (0..50).map(|_| gate.admit(IpAddr::from([10, 0, 0, 1]))).collect();
        assert!(passes.iter().all(Result::is_ok));
    }
}
