//! `/admin/*`: the control protocol (realizar_shared::control).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use realizar_shared::control::{LoadReport, LoadRequest, ModelInfo, ModelList, Unloaded};
use realizar_shared::error::ApiError;
use serde_json::{json, Value};

use crate::service::facade::Node;

pub async fn list(State(node): State<Arc<Node>>) -> Json<ModelList> {
    Json(ModelList {
        models: node.model_infos(),
    })
}

pub async fn report(State(node): State<Arc<Node>>) -> Json<LoadReport> {
    let at = node.now_ms();
    let r = node.report();
    node.gateway_seen(at);
    Json(r)
}

pub async fn load(State(node): State<Arc<Node>>, body: Bytes) -> Result<Json<ModelInfo>, ApiError> {
    let req: LoadRequest = parse_load(&body)?;
    Ok(Json(node.load(req).await?))
}

/// The load request, with errors naming the field.
fn parse_load(body: &[u8]) -> Result<LoadRequest, ApiError> {
    use realizar_shared::openai::request::{json_object, Fields};
    let map = json_object(body)?;
    let f = Fields(&map);
    let path = f
        .str("path")?
        .ok_or_else(|| ApiError::invalid_param("path", "`path` must be a string"))?
        .to_owned();
    let options = match f.get("options") {
        None => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .map_err(|e| ApiError::invalid_param("options", format!("`options`: {e}")))?,
        ),
    };
    Ok(LoadRequest {
        path,
        id: f.str("id")?.map(str::to_owned),
        pinned: f.bool("pinned")?.unwrap_or(false),
        options,
    })
}

#[derive(serde::Deserialize)]
pub struct UnloadQuery {
    #[serde(default)]
    force: bool,
}

pub async fn unload(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<UnloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Unloaded>, ApiError> {
    let force = query
        .map_err(|e| {
            ApiError::invalid_param("force", format!("`force` must be true or false: {e}"))
        })?
        .force;
    node.unload(id.clone(), force).await?;
    Ok(Json(Unloaded { id, unloaded: true }))
}

/// Arms a panic in the model's executor (routed only with fault injection).
pub async fn fault(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let h = node
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    h.inject_fault();
    Ok(Json(json!({"id": id, "fault": "armed"})))
}
