//! Health and metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use realizar_shared::error::ApiError;

use crate::service::facade::Node;

/// 200 once a model is ready; 503 while none is, and once draining (so
/// balancers stop sending new work).
pub async fn health(State(node): State<Arc<Node>>) -> Response {
    if node.draining.load(Ordering::Relaxed) {
        return ApiError::unavailable("the node is shutting down", "draining", 1).into_response();
    }
    if node
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
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
