//! The HTTP/1.1 listener the node and the gateway share: what axum's own
//! `serve` leaves out and a server on an open port needs (nginx's and
//! Envoy's defaults are the model):
//!
//! - a header timeout: a new connection that has not sent a whole request
//!   head within `header_timeout`, or a keep-alive one that has sent part of
//!   one and not the rest, is closed (slowloris);
//! - an idle timeout: a keep-alive connection with no request for
//!   `idle_timeout` is closed;
//! - a cap on open connections: past it a new connection gets an immediate
//!   OpenAI-shaped 503 and is closed, so file descriptors stay bounded;
//! - a body timeout and size limit (the [`read_body`] middleware): 408 and
//!   413 with OpenAI-shaped bodies;
//! - graceful shutdown with a deadline: on the signal, stop accepting, let
//!   requests in flight finish for up to `shutdown_grace`, then run the
//!   caller's `on_deadline` (the node fails its sequences, so streams end
//!   with an error event), give the connections `flush` to write that, and
//!   return whatever is still open.
//!
//! Connections are timed by a clock each one carries: the IO wrapper marks
//! the first byte of a request head, the service wrapper marks a request as
//! running from its head until its response body is dropped. Only a
//! connection with no request running can time out here; a long stream is
//! bounded by its own logic, not by these timers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt;

use crate::error::ErrorBody;

/// Connection and request limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From the first byte of a request head to its end.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress.
    pub idle_timeout: Duration,
    /// Reading a whole request body.
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
    /// Open connections; past it new ones get 503 and are closed.
    pub max_connections: usize,
    /// How long requests in flight may finish after the shutdown signal.
    pub shutdown_grace: Duration,
    /// After `on_deadline`, how long connections get to write what it produced.
    pub flush: Duration,
    /// SO_SNDBUF of each connection (None: the kernel's autotuning, up to
    /// several MiB). A smaller one makes a client that stops reading felt
    /// sooner, by the stream back-pressure of whoever writes the responses.
    pub send_buffer_bytes: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_body_bytes: 16 << 20,
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
            flush: Duration::from_secs(2),
            send_buffer_bytes: None,
        }
    }
}

impl Limits {
    /// `max_connections`, lowered so that the process's file descriptor limit
    /// keeps room for model files, the listener and the runtime.
    pub fn effective_max_connections(&self) -> usize {
        match nofile_soft_limit() {
            Some(n) => self.max_connections.min(n.saturating_sub(64).max(16)),
            None => self.max_connections,
        }
    }
}

fn nofile_soft_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------- the clock

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// What one connection is doing, and since when.
struct Clock {
    origin: Instant,
    phase: AtomicU8,
    /// Milliseconds since `origin` when `phase` last changed.
    since: AtomicU64,
    running: AtomicUsize,
}

impl Clock {
    /// A new connection owes its first request head within the header
    /// timeout (nginx's client_header_timeout); the idle timeout is for
    /// keep-alive connections between requests.
    fn new() -> Self {
        Clock {
            origin: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            running: AtomicUsize::new(0),
        }
    }
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
    fn set(&self, phase: u8) {
        self.since.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }
    fn bytes_read(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.set(HEAD);
        }
    }
    fn request_started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
        self.set(BUSY);
    }
    fn request_ended(&self) {
        if self.running.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.set(IDLE);
        }
    }
    /// Whether the connection has waited past its limit.
    fn expired(&self, limits: &Limits) -> bool {
        let waited = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.since.load(Ordering::Relaxed)),
        );
        match self.phase.load(Ordering::Relaxed) {
            IDLE => waited >= limits.idle_timeout,
            HEAD => waited >= limits.header_timeout,
            _ => false,
        }
    }
}

/// The socket, marking the first byte of each request head on the clock.
struct Timed {
    io: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

/// A response body that marks its request as ended when hyper drops it
/// (written out, or the connection went away).
struct Tracked {
    body: Body,
    clock: Arc<Clock>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.clock.request_ended();
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

// ---------------------------------------------------------------- serving

/// Open connections, for shutdown to wait on.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    zero: Notify,
}

impl Open {
    async fn wait_zero(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.zero.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.count.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

struct OpenGuard(Arc<Open>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Shutdown stages sent to every connection task.
const RUN: u8 = 0;
const GRACEFUL: u8 = 1;
const CLOSE: u8 = 2;

/// Serve `app` on `listener` until `shutdown` resolves, then shut down as the
/// module says. `on_deadline` runs once the grace period is over (and only
/// if requests were still in flight).
pub async fn serve<F, D, DF>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: F,
    on_deadline: D,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send,
    D: FnOnce() -> DF,
    DF: Future<Output = ()>,
{
    let cap = limits.effective_max_connections();
    let slots = Arc::new(Semaphore::new(cap));
    let open = Arc::new(Open::default());
    let (stage_tx, stage_rx) = watch::channel(RUN);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let Some(n) = limits.send_buffer_bytes {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(n);
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        open.count.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(open.clone());
        let (app, limits, stage) = (app.clone(), limits.clone(), stage_rx.clone());
        tokio::spawn(async move {
            connection(stream, app, &limits, stage).await;
            drop(permit);
            drop(guard);
        });
    }
    drop(listener);
    let _ = stage_tx.send(GRACEFUL);
    if !open.wait_zero(limits.shutdown_grace).await {
        tracing::warn!(
            open = open.count.load(Ordering::SeqCst),
            "shutdown grace period over; ending what is still running"
        );
        on_deadline().await;
        open.wait_zero(limits.flush).await;
    }
    let _ = stage_tx.send(CLOSE);
    Ok(())
}

async fn connection(
    stream: TcpStream,
    app: Router,
    limits: &Limits,
    mut stage: watch::Receiver<u8>,
) {
    let clock = Arc::new(Clock::new());
    let io = TokioIo::new(Timed {
        io: stream,
        clock: clock.clone(),
    });
    let c2 = clock.clone();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        c2.request_started();
        let clock = c2.clone();
        let app = app.clone();
        async move {
            let resp = app
                .oneshot(req.map(Body::new))
                .await
                .unwrap_or_else(|e| match e {});
            Ok::<_, std::convert::Infallible>(resp.map(|body| Body::new(Tracked { body, clock })))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut graceful = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                if clock.expired(limits) {
                    return;
                }
            }
            changed = stage.changed() => {
                let s = if changed.is_ok() { *stage.borrow() } else { CLOSE };
                if s >= CLOSE {
                    return;
                }
                if s == GRACEFUL && !graceful {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                    // An idle connection has nothing to finish.
                    if clock.phase.load(Ordering::Relaxed) != BUSY {
                        return;
                    }
                }
            }
        }
    }
}

/// Past the connection cap: say so and close, without waiting on the client.
async fn refuse(mut stream: TcpStream) {
    let body = serde_json::to_string(&ErrorBody::new(
        "unavailable_error",
        "too many open connections; retry later",
        None,
        Some("too_many_connections"),
    ))
    .unwrap_or_default();
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(msg.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Take what the client sent before closing: closing a socket with
        // unread data resets it, and the client might lose the answer.
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------- bodies

/// Middleware: read the whole request body within `limits.body_timeout` and
/// `limits.max_body_bytes`, answering 408 or 413 (OpenAI-shaped) otherwise;
/// handlers then get the body already in memory.
pub async fn read_body(limits: Arc<Limits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large(limits.max_body_bytes);
    }
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "the request body was not received within {} s",
                    limits.body_timeout.as_secs_f64()
                ),
                "body_timeout",
            )
        }
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if over {
                return too_large(limits.max_body_bytes);
            }
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the request body could not be read: {e}"),
                "body_unreadable",
            );
        }
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(max: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!("the request body is larger than {max} bytes"),
        "body_too_large",
    )
}

fn error_response(status: StatusCode, kind: &str, msg: String, code: &str) -> Response {
    let mut r = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_string(&ErrorBody::new(kind, msg, None, Some(code))).unwrap_or_default(),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
