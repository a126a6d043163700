//! The gateway's admin routes: the fleet view (`/admin/cluster`), the
//! model catalog (`/admin/models`), drains (`/admin/nodes/{id}/drain`),
//! and joins (`/admin/nodes/join`, a node's heartbeat). Handlers check and
//! change the shared state; the control loop acts on it at its next poll.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use realizar_shared::error::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::catalog::CatalogEntry;
use crate::coordinator::Drain;
use crate::http::{bearer, same_secret, unauthorized, Gw};
use crate::membership::Health;

/// Read a JSON body; serde's message names the field at fault.
fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(b).map_err(|e| {
        ApiError::bad_request(
            format!("invalid request body: {e}"),
            None,
            "invalid_request",
        )
    })
}

fn checked(e: &CatalogEntry) -> Result<(), ApiError> {
    e.check()
        .map_err(|(field, why)| ApiError::invalid_param(field, format!("`{field}` {why}")))
}

/// Each catalog model with its owners and the nodes serving it now.
fn models_view(gw: &Gw) -> Vec<Value> {
    let table = gw.shared.table.load();
    let placement = gw
        .shared
        .placement
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let catalog = gw.shared.catalog.read().unwrap_or_else(|e| e.into_inner());
    let replicas = gw.shared.replicas.read().unwrap_or_else(|e| e.into_inner());
    catalog
        .entries()
        .iter()
        .map(|e| {
            let ready: Vec<&str> = table
                .models
                .get(&e.id)
                .map(|o| o.iter().map(|x| x.node_id.as_str()).collect())
                .unwrap_or_default();
            json!({
                "id": e.id,
                "path": e.path,
                "replicas": e.replicas,
                "max_replicas": e.max_replicas,
                "replicas_now": replicas.get(&e.id).copied().unwrap_or(e.replicas),
                "pin": e.pin,
                "options": e.options,
                "owners": placement.owners_of(&e.id),
                "ready": ready,
            })
        })
        .collect()
}

pub async fn cluster(State(gw): State<Gw>) -> Json<Value> {
    let version = gw.shared.table.load().version;
    let drains = gw
        .shared
        .drains
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let nodes: Vec<_> = gw
        .shared
        .membership
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .members()
        .map(|m| {
            let state = match (m.health, drains.get(m.id())) {
                (Health::Down, _) => "down",
                (Health::Unknown, _) => "unknown",
                (Health::Up, Some(d)) if d.done.is_some() => "drained",
                (Health::Up, Some(_)) => "draining",
                (Health::Up, None) => "up",
            };
            json!({"id": m.id(), "url": m.url, "state": state, "last_report": m.report})
        })
        .collect();
    let events: Vec<Value> = gw
        .shared
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .all()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect();
    let catalog_version = gw
        .shared
        .catalog
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .version;
    Json(json!({
        "version": version,
        "catalog_version": catalog_version,
        "policy": gw.shared.policy,
        "nodes": nodes,
        "models": models_view(&gw),
        "events": events,
    }))
}

pub async fn list_models(State(gw): State<Gw>) -> Json<Value> {
    Json(json!({"models": models_view(&gw)}))
}

/// `POST /admin/models`: add a model to the catalog or replace its entry.
pub async fn add_model(State(gw): State<Gw>, b: Bytes) -> Result<Response, ApiError> {
    let e: CatalogEntry = body(&b)?;
    checked(&e)?;
    let new = gw
        .shared
        .catalog
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .upsert(e.clone());
    gw.shared.event(
        "catalog",
        "",
        &e.id,
        format!(
            "{} ({} replicas)",
            if new { "added" } else { "replaced" },
            e.replicas
        ),
    );
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(e)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelChange {
    replicas: Option<usize>,
    max_replicas: Option<usize>,
    scale_up_waiting: Option<usize>,
    keep_alive_secs: Option<f64>,
    pin: Option<Vec<String>>,
}

/// `PATCH /admin/models/{id}`: change its replica count or its pins.
pub async fn change_model(
    State(gw): State<Gw>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Json<CatalogEntry>, ApiError> {
    let ch: ModelChange = body(&b)?;
    let mut catalog = gw.shared.catalog.write().unwrap_or_else(|e| e.into_inner());
    let mut e = catalog
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    if let Some(r) = ch.replicas {
        e.replicas = r;
    }
    if ch.max_replicas.is_some() {
        e.max_replicas = ch.max_replicas;
    }
    if ch.scale_up_waiting.is_some() {
        e.scale_up_waiting = ch.scale_up_waiting;
    }
    if ch.keep_alive_secs.is_some() {
        e.keep_alive_secs = ch.keep_alive_secs;
    }
    if let Some(p) = ch.pin {
        e.pin = p;
    }
    checked(&e)?;
    catalog.upsert(e.clone());
    drop(catalog);
    gw.shared.event(
        "catalog",
        "",
        &id,
        format!("{} replicas, pinned to {:?}", e.replicas, e.pin),
    );
    Ok(Json(e))
}

/// `DELETE /admin/models/{id}`: out of the catalog; its replicas are
/// unloaded as they go idle.
pub async fn remove_model(
    State(gw): State<Gw>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    gw.shared
        .catalog
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id)
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    gw.shared.event("catalog", "", &id, "removed");
    Ok(Json(json!({"id": id, "removed": true})))
}

fn known_node(gw: &Gw, id: &str) -> Result<(), ApiError> {
    let known = gw
        .shared
        .membership
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .members()
        .any(|m| m.id() == id);
    if known {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no node `{id}` in the cluster"),
            Some("id"),
            Some("node_not_found"),
        ))
    }
}

/// `POST /admin/nodes/{id}/drain`: no new requests for it, its replicas
/// moved elsewhere warm-first, then (once it holds none and has nothing in
/// flight) drained. Watch `/admin/cluster` for the state.
pub async fn drain(
    State(gw): State<Gw>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    known_node(&gw, &id)?;
    let now = Instant::now();
    let mut drains = gw.shared.drains.write().unwrap_or_else(|e| e.into_inner());
    let state = match drains.get(&id) {
        Some(d) if d.done.is_some() => "drained",
        Some(_) => "draining",
        None => {
            drains.insert(
                id.clone(),
                Drain {
                    started: now,
                    deadline: now + gw.shared.drain_timeout,
                    done: None,
                    by_node: false,
                },
            );
            drop(drains);
            gw.shared.event("drain", &id, "", "asked");
            "draining"
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": state})),
    ))
}

/// `POST /admin/nodes/{id}/undrain`: back in service (placement gives it
/// replicas again).
pub async fn undrain(
    State(gw): State<Gw>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known_node(&gw, &id)?;
    let was = gw
        .shared
        .drains
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id)
        .is_some();
    if was {
        gw.shared.event("undrained", &id, "", "asked");
    }
    Ok(Json(json!({"id": id, "state": "up"})))
}

/// `POST /admin/nodes/join`: a node's heartbeat (its load report). Taken
/// with the admin key or the cluster token, when either is configured.
pub async fn join(State(gw): State<Gw>, headers: HeaderMap, body: Bytes) -> Response {
    let given = bearer(&headers).as_bytes();
    let keys: Vec<&String> = [&gw.shared.admin_key, &gw.shared.cluster_token]
        .into_iter()
        .flatten()
        .collect();
    if !keys.is_empty() && !keys.iter().any(|k| same_secret(given, k.as_bytes())) {
        return unauthorized("cluster token");
    }
    let report: realizar_shared::control::LoadReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(format!("not a load report: {e}"), None, "invalid_report")
                .into_response()
        }
    };
    let url = report.url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.parse::<hyper::Uri>().is_err()
    {
        return ApiError::invalid_param("url", "the report's `url` must be an http(s) URL")
            .into_response();
    }
    let now = Instant::now();
    let mut m = gw
        .shared
        .membership
        .write()
        .unwrap_or_else(|e| e.into_inner());
    m.add(&url, crate::membership::Source::Joined, now);
    if let Some(c) = m.on_report(&url, report, now) {
        tracing::info!(?c, "joined");
        gw.shared.wake.notify_one();
    }
    Json(json!({"joined": url})).into_response()
}
