//! The front door: the OpenAI routes and the tokenizer routes, each
//! request routed to one ready owner of its model (routing.rs) and proxied
//! there, streaming; `/v1/models`, `/health`, `/admin/cluster`; API keys.
//!
//! A request is retried on another owner when the chosen one cannot be
//! reached or answers 404/429/5xx — always before anything has been sent to
//! the client, at most twice. A client that goes away drops the upstream
//! response, which closes that connection, so the node cancels the
//! sequence.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::{Frame, Incoming, SizeHint};
use realizar_shared::error::ApiError;
use realizar_shared::http_server::{read_body, Limits};
use realizar_shared::metrics as names;
use realizar_shared::openai::{Envelope, ModelCard, ModelList};
use serde_json::json;

use crate::admin;
use crate::client::NodeClient;
use crate::routing::{choose_by, Keys, PREFIX_BYTES};
use crate::Shared;

/// Bytes of the prompt that make the affinity key when the request names
/// no user or session: about the system prompt and the first message.
const AFFINITY_PREFIX: usize = PREFIX_BYTES;
/// Further owners tried after the first.
const RETRIES: usize = 2;

#[derive(Clone)]
pub struct Gw {
    pub shared: Arc<Shared>,
    pub client: NodeClient,
    pub prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

/// The routes, every request body read whole (and bounded in size and
/// time) before a handler sees it, as the node does.
pub fn router(gw: Gw, limits: Limits) -> Router {
    let limits = Arc::new(limits);
    let admin = Router::new()
        .route("/admin/cluster", get(admin::cluster))
        .route(
            "/admin/models",
            get(admin::list_models).post(admin::add_model),
        )
        .route(
            "/admin/models/{*id}",
            axum::routing::patch(admin::change_model).delete(admin::remove_model),
        )
        .route("/admin/nodes/{id}/drain", post(admin::drain))
        .route("/admin/nodes/{id}/undrain", post(admin::undrain))
        .route_layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            require_admin,
        ));
    let api = Router::new()
        .route("/v1/chat/completions", post(proxy))
        .route("/v1/completions", post(proxy))
        .route("/tokenize", post(proxy))
        .route("/detokenize", post(proxy))
        .route("/v1/models", get(models))
        .route_layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            require_key,
        ));
    Router::new()
        .merge(api)
        .merge(admin)
        .route("/health", get(health))
        .route("/admin/nodes/join", post(admin::join))
        .route("/metrics", get(own_metrics))
        .route("/metrics/fleet", get(fleet_metrics))
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            read_body(limits.clone(), req, next)
        }))
        .with_state(gw)
}

pub(crate) fn bearer(h: &HeaderMap) -> &str {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map_or("", str::trim)
}

/// Compares in time that depends only on the lengths.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

pub(crate) fn unauthorized(what: &str) -> Response {
    let mut r = ApiError::unauthorized(
        format!("Incorrect or missing API key: send `Authorization: Bearer <{what}>`"),
        "invalid_api_key",
    )
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// With API keys configured, every API route needs one of them.
async fn require_key(State(gw): State<Gw>, req: Request, next: Next) -> Response {
    let keys = &gw.shared.api_keys;
    if !keys.is_empty() {
        let given = bearer(req.headers()).as_bytes();
        if !keys.iter().any(|k| same_secret(given, k.as_bytes())) {
            return unauthorized("API key");
        }
    }
    next.run(req).await
}

async fn require_admin(State(gw): State<Gw>, req: Request, next: Next) -> Response {
    if let Some(k) = &gw.shared.admin_key {
        if !same_secret(bearer(req.headers()).as_bytes(), k.as_bytes()) {
            return unauthorized("admin key");
        }
    }
    next.run(req).await
}

/// Counts a request against its node until its response body is gone.
pub(crate) struct InFlight(Arc<AtomicU64>);

impl InFlight {
    pub(crate) fn new(c: &Arc<AtomicU64>) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream body, passed through frame by frame, holding the node's
/// in-flight count until it ends or the client goes away.
struct Relay {
    inner: Incoming,
    _count: InFlight,
}

impl hyper::body::Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn proxy(
    State(gw): State<Gw>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match route_and_send(&gw, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            // Answered here, not by a node (no such model, none ready, no
            // owner reachable). No model label: the name is the client's.
            let r = e.into_response();
            metrics::counter!(names::GATEWAY_REQUESTS,
                names::MODEL => "",
                names::ROUTE => "rejected",
                names::STATUS => r.status().as_u16().to_string())
            .increment(1);
            r
        }
    }
}

/// Requests waiting at once for a replica of their model; past it, 503.
const MAX_WAITERS: usize = 256;
/// How long a request waits for a replica to be loaded.
const WAIT_FOR_REPLICA: std::time::Duration = std::time::Duration::from_secs(120);

/// A model with no ready replica: a request for one being loaded (or
/// scaled to zero, which it asks to bring back) waits for it, bounded in
/// number and time; anything else is answered at once.
async fn wait_for_replica(
    gw: &Gw,
    model: &str,
) -> Result<Arc<crate::table::RoutingTable>, ApiError> {
    let (known, scalable) = {
        let c = gw.shared.catalog.read().unwrap_or_else(|e| e.into_inner());
        match c.get(model) {
            Some(e) => (true, e.max_replicas.is_some()),
            None => (false, false),
        }
    };
    if !known {
        return Err(ApiError::model_not_found(model));
    }
    let placed = !gw
        .shared
        .placement
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .owners_of(model)
        .is_empty();
    let loading = || {
        ApiError::unavailable(
            format!("model `{model}` is being placed; no replica is ready yet"),
            "model_loading",
            2,
        )
    };
    if !(placed || scalable) {
        return Err(loading());
    }
    struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _w = Waiting(&gw.shared.waiters);
    if gw.shared.waiters.fetch_add(1, Ordering::Relaxed) >= MAX_WAITERS {
        return Err(loading());
    }
    let deadline = std::time::Instant::now() + WAIT_FOR_REPLICA;
    loop {
        gw.shared
            .wanted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.to_owned(), std::time::Instant::now());
        let t = gw.shared.table.load_full();
        if t.models.get(model).is_some_and(|o| !o.is_empty()) {
            return Ok(t);
        }
        if std::time::Instant::now() >= deadline {
            return Err(loading());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn route_and_send(
    gw: &Gw,
    uri: &OriginalUri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let env = Envelope::read(&body).ok_or_else(|| {
        ApiError::bad_request(
            "the request body must be a JSON object",
            None,
            "invalid_json",
        )
    })?;
    let mut table = gw.shared.table.load_full();
    let only = (table.models.len() == 1)
        .then(|| table.models.keys().next().cloned())
        .flatten();
    let model = env
        .model
        .or(only)
        .ok_or_else(|| ApiError::invalid_param("model", "`model` is required"))?;
    if table.models.get(&model).is_none_or(|o| o.is_empty()) {
        table = wait_for_replica(gw, &model).await?;
    }
    let session = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .or(env.user.as_deref());
    let keys = Keys::new(session, &env.prompt_head, AFFINITY_PREFIX, env.conversation);
    let affinity = keys.affinity();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // One prompt, one choice, streamed: the node sends token ids so the
    // stream can be continued elsewhere if it breaks (failover.rs).
    let resumable = env.stream
        && env.n == 1
        && !env.many_prompts
        && matches!(uri.path(), "/v1/completions" | "/v1/chat/completions");
    let ask: &[(&str, &str)] = if resumable {
        &[crate::failover::ASK_IDS]
    } else {
        &[]
    };
    let mut tried: Vec<&str> = Vec::new();
    let mut last_error = String::new();
    for attempt in 0..=RETRIES {
        let now = std::time::Instant::now();
        let sample = gw.shared.policy == crate::routing::Policy::Affinity;
        let untried = |o: &crate::table::Owner| !tried.contains(&o.node_id.as_str());
        let (mut left, mut cands) = table.candidates(&model, &keys, sample, &|o| {
            !untried(o) || !o.breaker.available(now)
        });
        if left.is_empty() && attempt == 0 {
            // Every owner's breaker is open: try them rather than refuse.
            (left, cands) = table.candidates(&model, &keys, sample, &|o| !untried(o));
        }
        let t_route = std::time::Instant::now();
        let turn = gw.shared.turn.fetch_add(1, Ordering::Relaxed);
        let prefix = env.prompt_head.len() >= PREFIX_BYTES;
        let chosen = choose_by(
            gw.shared.policy,
            keys.rank,
            prefix,
            turn,
            &cands,
            gw.shared.bound,
        );
        metrics::histogram!(names::GATEWAY_ROUTING_SECONDS).record(t_route.elapsed().as_secs_f64());
        let Some((i, reason)) = chosen else {
            break;
        };
        let owner = left[i];
        if prefix {
            table.sent(&model, owner, &keys, now);
        }
        let count = InFlight::new(&owner.inflight);
        let why = if attempt > 0 {
            "retry"
        } else {
            reason.as_str()
        };
        let _ = owner.breaker.admit(now);
        let sent = std::time::Instant::now();
        let answer = gw
            .client
            .forward_with(&owner.url, path, body.clone(), &affinity, ask)
            .await;
        match &answer {
            Ok(r) if r.status().is_server_error() => owner.breaker.failure(sent),
            Ok(_) => owner.breaker.success(),
            Err(_) => owner.breaker.failure(sent),
        }
        if answer.is_ok() {
            metrics::histogram!(names::GATEWAY_UPSTREAM_HEAD_SECONDS, names::NODE => owner.node_id.clone(), names::MODEL => model.clone())
                .record(sent.elapsed().as_secs_f64());
        }
        if attempt > 0 {
            metrics::counter!(names::GATEWAY_RETRIES, names::MODEL => model.clone()).increment(1);
        }
        match answer {
            // Retried while another owner is left to try; the last answer
            // (a 429 with its Retry-After, a 503) goes to the client as is.
            // A 404 means the node no longer holds the model (evicted or
            // unloaded since its last report): not this request's fault.
            Ok(resp)
                if attempt < RETRIES
                    && left.len() > 1
                    && (resp.status().is_server_error()
                        || matches!(resp.status().as_u16(), 404 | 429)) =>
            {
                last_error = format!("{} answered {}", owner.node_id, resp.status());
                tracing::info!(node = %owner.node_id, status = %resp.status(), "retrying on another owner");
                tried.push(&owner.node_id);
            }
            Ok(resp) => {
                let (mut parts, incoming) = resp.into_parts();
                for h in [header::TRANSFER_ENCODING, header::CONNECTION] {
                    parts.headers.remove(h);
                }
                if let Ok(v) = HeaderValue::from_str(&owner.node_id) {
                    parts
                        .headers
                        .insert(HeaderName::from_static("x-realizar-node"), v);
                }
                parts.headers.insert(
                    HeaderName::from_static("x-realizar-route"),
                    HeaderValue::from_static(why),
                );
                metrics::counter!(names::GATEWAY_REQUESTS,
                    names::MODEL => model.clone(),
                    names::ROUTE => why,
                    names::STATUS => parts.status.as_u16().to_string())
                .increment(1);
                if resumable && parts.status.is_success() {
                    let origin = crate::failover::Origin {
                        gw: gw.clone(),
                        model: model.clone(),
                        path: path.to_owned(),
                        body: body.clone(),
                        keys,
                        node: owner.node_id.clone(),
                    };
                    let relay = crate::failover::relay(incoming, count, origin);
                    return Ok(Response::from_parts(parts, relay));
                }
                let relay = Relay {
                    inner: incoming,
                    _count: count,
                };
                return Ok(Response::from_parts(parts, Body::new(relay)));
            }
            Err(e) => {
                last_error = format!("{}: {e}", owner.node_id);
                tracing::info!(node = %owner.node_id, error = %e, "owner unreachable; retrying on another");
                tried.push(&owner.node_id);
            }
        }
    }
    Err(ApiError::bad_gateway(
        format!("no owner of model `{model}` could serve the request ({last_error})"),
        "upstream_unavailable",
    ))
}

async fn models(State(gw): State<Gw>) -> Json<ModelList> {
    let table = gw.shared.table.load();
    Json(ModelList {
        object: "list".into(),
        data: table
            .models
            .keys()
            .map(|id| ModelCard {
                id: id.clone(),
                object: "model".into(),
                created: 0,
                owned_by: "realizar".into(),
                meta: None,
            })
            .collect(),
    })
}

async fn health(State(gw): State<Gw>) -> Response {
    if gw
        .shared
        .table
        .load()
        .models
        .values()
        .any(|o| !o.is_empty())
    {
        Json(json!({"status": "ok"})).into_response()
    } else {
        ApiError::unavailable("no model is ready on any node yet", "loading", 1).into_response()
    }
}

async fn own_metrics(State(gw): State<Gw>) -> Response {
    prometheus_text(gw.prometheus.render())
}

fn prometheus_text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Every live node's `/metrics` labelled by node, and the gateway's own.
async fn fleet_metrics(State(gw): State<Gw>) -> Response {
    let nodes: Vec<(String, String)> = gw
        .shared
        .membership
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .live()
        .map(|(m, r)| (r.node_id.clone(), m.url.clone()))
        .collect();
    let scrapes = nodes.iter().map(|(id, url)| {
        let c = gw.client.clone();
        async move { (id.clone(), c.metrics(url).await) }
    });
    let got = futures_util::future::join_all(scrapes).await;
    let own = gw.prometheus.render();
    let mut sources: Vec<(Option<&str>, &str)> = Vec::new();
    for (id, r) in &got {
        match r {
            Ok(text) => sources.push((Some(id.as_str()), text.as_str())),
            Err(e) => tracing::warn!(node = %id, error = %e, "scraping the node failed"),
        }
    }
    sources.push((None, own.as_str()));
    prometheus_text(crate::fleet_metrics::merge(sources))
}
