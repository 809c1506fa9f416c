//! The listener every service serves on: it accepts connections and hands them to hyper, and
//! it is where a connection that does not behave is let go.
//!
//! `axum::serve` keeps a connection open for as long as the client likes: a socket that sends
//! nothing, a header line every few seconds (slowloris) or a kept-alive connection nobody uses
//! again each hold a task and a file descriptor forever. Here, per connection:
//!
//! - the request head must arrive within the header timeout, counted from the connection's
//!   start or from the first byte of the next request;
//! - a kept-alive connection waiting for its next request is closed after the idle timeout;
//! - a request being handled (its answer still streaming: `?wait=`, Server-Sent Events) is
//!   never timed out here; the request timeout and the body read timeout
//!   ([`crate::http`]) cover that part;
//! - at most `max_connections` are open at once (the next waits in the kernel's backlog), and,
//!   when set, at most `max_per_address` from one client address (more are closed at once;
//!   trusted proxies are exempt, they carry many clients).
//!
//! hyper's own `header_read_timeout` starts its clock when the previous answer ends, so it
//! cannot tell an idle keep-alive from a slow head; the two clocks are kept here, from what
//! the connection reads and from when its answers start and finish. Connections are HTTP/1.1,
//! as before (nothing here speaks TLS, so no client negotiates HTTP/2).

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What a listener allows a connection.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// From the connection's start, or the first byte of a request, to its complete head.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Connections open at once from one client address (the gateway sets it).
    pub max_per_address: Option<usize>,
    /// Peers exempt from `max_per_address` (proxies in front of us).
    pub exempt: Vec<ipnet::IpNet>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 1024,
            max_per_address: None,
            exempt: Vec::new(),
        }
    }
}

/// `http_connections_open` and `http_connections_closed_total{reason}` of one listener.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: IntGauge,
    closed: IntCounterVec,
}

impl ConnectionMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ConnectionMetrics> {
        let m = Self::unregistered();
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.closed.clone()))?;
        Ok(m)
    }

    /// For a listener whose metrics nobody reads (the placeholder answering while a service
    /// starts).
    #[expect(clippy::expect_used, reason = "fixed metric names on a fresh registry")]
    pub fn unregistered() -> ConnectionMetrics {
        ConnectionMetrics {
            open: IntGauge::new("http_connections_open", "HTTP connections open now")
                .expect("valid metric"),
            closed: IntCounterVec::new(
                Opts::new(
                    "http_connections_closed_total",
                    "HTTP connections the server closed or refused on its own, by reason \
                     (header_timeout, idle_timeout, per_address_limit)",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        }
    }
}

/// Serves `app` on `listener` until `shutdown`; then stops accepting, lets every request in
/// flight finish (idle connections are closed at once) and returns.
#[expect(clippy::expect_used, reason = "the semaphore is never closed")]
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));
    // Every connection task holds a sender; when the last is dropped, all have finished
    // (mini-redis's shutdown_complete).
    let (finished_tx, mut finished_rx) = mpsc::channel::<()>(1);
    loop {
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // wait a little rather than spin, and keep serving the others.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = AddressSlot::take(&per_address, &limits, peer.ip()) else {
            metrics
                .closed
                .with_label_values(&["per_address_limit"])
                .inc();
            tracing::debug!(%peer, "too many connections from this address; closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = Connection {
            app: app.clone(),
            peer,
            limits: limits.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let finished = finished_tx.clone();
        tokio::spawn(async move {
            task.run(stream).await;
            drop((slot, address_slot, finished));
        });
    }
    drop(finished_tx);
    let _ = finished_rx.recv().await;
    Ok(())
}

/// One connection's share of the per-address count; given back when it closes.
struct AddressSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    /// `Some(None)`: no limit applies to this peer.
    fn take(
        map: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        limits: &ConnectionLimits,
        ip: IpAddr,
    ) -> Option<Option<AddressSlot>> {
        let Some(max) = limits.max_per_address else {
            return Some(None);
        };
        if limits.exempt.iter().any(|n| n.contains(&ip)) {
            return Some(None);
        }
        let mut counts = map.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Some(AddressSlot {
            map: map.clone(),
            ip,
        }))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.map.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

struct Connection {
    app: Router,
    peer: SocketAddr,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        self.metrics.open.inc();
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let (app, peer, seen) = (self.app, self.peer, activity.clone());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let in_flight = InFlight::begin(&seen);
            req.extensions_mut().insert(ConnectInfo(peer));
            let answer = app.clone().oneshot(req);
            async move {
                let res = answer
                    .await
                    .unwrap_or_else(|never: Infallible| match never {});
                Ok::<_, Infallible>(res.map(|inner| Tracked {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                reason = watchdog(&activity, &self.limits) => {
                    // Nothing is in flight: dropping the connection loses no answer.
                    self.metrics.closed.with_label_values(&[reason]).inc();
                    tracing::debug!(peer = %self.peer, reason, "connection closed");
                    break;
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        self.metrics.open.dec();
    }
}

/// What a connection is doing, as its two clocks need to know.
struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    /// Requests whose answer has not finished streaming.
    in_flight: usize,
    /// When the connection started, or its last answer finished.
    since: Instant,
    /// The first byte read since then, while nothing was in flight.
    head_started: Option<Instant>,
    /// Whether a request was answered already (the wait that follows is a keep-alive).
    served: bool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                since: Instant::now(),
                head_started: None,
                served: false,
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock());
        self.changed.notify_one();
    }

    /// When the connection must be let go if nothing changes, and why.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, &'static str)> {
        let s = self.state.lock();
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.head_started {
            Some(t) => (t + limits.header_timeout, "header_timeout"),
            // A fresh connection owes us a request head, not an idle wait.
            None if !s.served => (s.since + limits.header_timeout, "header_timeout"),
            None => (s.since + limits.idle_timeout, "idle_timeout"),
        })
    }
}

/// Resolves with the reason once the connection has overstayed, nothing being in flight.
async fn watchdog(activity: &Activity, limits: &ConnectionLimits) -> &'static str {
    loop {
        let changed = activity.changed.notified();
        tokio::pin!(changed);
        // Registered before the state is read, so a change in between is not missed.
        changed.as_mut().enable();
        match activity.deadline(limits) {
            Some((at, reason)) if at <= Instant::now() => return reason,
            Some((at, _)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// Marks a request in flight from the moment its head was read until its answer's body has
/// been sent (or abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.update(|s| {
            s.in_flight += 1;
            s.head_started = None;
        });
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.since = Instant::now();
                s.served = true;
            }
        });
    }
}

/// An answer's body that keeps its request in flight until it is done.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when a request head starts arriving.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let mut s = self.activity.state.lock();
            if s.in_flight == 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
                drop(s);
                self.activity.changed.notify_one();
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_that_applies_follows_what_the_connection_does() {
        let a = Arc::new(Activity::new());
        let start = Instant::now();
        let l = limits();
        // Fresh: a head is owed within the header timeout.
        assert_eq!(
            a.deadline(&l),
            Some((start + l.header_timeout, "header_timeout"))
        );
        let req = InFlight::begin(&a);
        assert_eq!(
            a.deadline(&l),
            None,
            "nothing times out while a request runs"
        );
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(req);
        let done = Instant::now();
        assert_eq!(
            a.deadline(&l),
            Some((done + l.idle_timeout, "idle_timeout"))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        a.update(|s| s.head_started = Some(Instant::now()));
        assert_eq!(
            a.deadline(&l),
            Some((
                done + Duration::from_secs(5) + l.header_timeout,
                "header_timeout"
            ))
        );
    }

    #[test]
    fn per_address_slots_are_counted_and_given_back() {
        let map = Arc::new(Mutex::new(HashMap::new()));
        let l = ConnectionLimits {
            max_per_address: Some(2),
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            ..ConnectionLimits::default()
        };
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let a = AddressSlot::take(&map, &l, ip).unwrap();
        let b = AddressSlot::take(&map, &l, ip).unwrap();
        assert!(
            AddressSlot::take(&map, &l, ip).is_none(),
            "a third is refused"
        );
        drop(a);
        assert!(
            AddressSlot::take(&map, &l, ip).is_some(),
            "a slot came back"
        );
        drop(b);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..5 {
            assert!(matches!(AddressSlot::take(&map, &l, proxy), Some(None)));
        }
    }
}
