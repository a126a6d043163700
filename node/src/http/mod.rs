//! The node's HTTP API: routes, authentication of the admin routes, and
//! request accounting. Handlers parse requests into the shared wire types,
//! ask the node facade (service/facade.rs) and render its answers; the
//! policy lives in the facade.
//!
//! - `openai.rs`: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//!   `/tokenize`, `/detokenize`
//! - `stream.rs`: SSE rendering of a generation's events
//! - `admin.rs`: `/admin/*` (control protocol)
//! - `ops.rs`: `/health`, `/metrics`

mod admin;
mod openai;
mod ops;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use realizar_shared::error::ApiError;
use realizar_shared::http_server::read_body;
use realizar_shared::metrics as names;

use crate::service::facade::Node;

pub fn router(node: Arc<Node>) -> Router {
    let limits = node.limits.clone();
    let mut admin = Router::new()
        .route("/admin/models", get(admin::list).post(admin::load))
        .route("/admin/models/{*id}", delete(admin::unload))
        .route("/admin/report", get(admin::report));
    if node.fault_injection {
        admin = admin.route("/admin/fault/{*id}", post(admin::fault));
    }
    let admin = admin.route_layer(axum::middleware::from_fn_with_state(
        node.clone(),
        require_admin,
    ));
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::list_models))
        .route("/tokenize", post(openai::tokenize))
        .route("/detokenize", post(openai::detokenize))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics_text))
        .merge(admin)
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            read_body(limits.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(track))
        .with_state(node)
}

/// The admin routes need the node's token when it has one.
async fn require_admin(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if let Some(token) = &node.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.trim().as_bytes(), token.as_bytes()) {
            let mut r = ApiError::unauthorized(
                "the admin routes need `Authorization: Bearer <admin token>`",
                "invalid_admin_token",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Compares in time that depends only on the lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Counts requests by endpoint and status.
async fn track(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, names::ENDPOINT => endpoint.clone(), names::STATUS => status)
        .increment(1);
    metrics::histogram!(names::HTTP_REQUEST_DURATION, names::ENDPOINT => endpoint)
        .record(t0.elapsed().as_secs_f64());
    resp
}
