//! Health and metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use realizar_shared::error::ApiError;

use crate::service::facade::Node;

/// 200 while the node serves; 503 once draining (so balancers stop sending
/// new work), and while the first models it was given are loading with
/// none ready yet (as llama-server answers while its model loads). A node
/// holding nothing and loading nothing is up: in a cluster its models come
/// from the gateway, which must be able to find it first (a Kubernetes
/// headless service lists only ready pods).
pub async fn health(State(node): State<Arc<Node>>) -> Response {
    if node.draining.load(Ordering::Relaxed) {
        return ApiError::unavailable("the node is shutting down", "draining", 1).into_response();
    }
    let none_ready = node
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty();
    let loading = || {
        node.transitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|s| *s == realizar_shared::control::ModelState::Loading)
    };
    if none_ready && loading() {
        return ApiError::unavailable("no model is loaded yet", "loading", 1).into_response();
    }
    Json(serde_json::json!({"status": "ok"})).into_response()
}

pub async fn metrics_text(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.prometheus.render(),
    )
        .into_response()
}
