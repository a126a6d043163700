//! The node process: configuration, the facade the HTTP layer calls, the
//! metrics recorder, and `run`, which wires the registry actor, the facade
//! and the HTTP listener together.

pub mod config;
pub mod facade;
mod join;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::Actor;
use realizar_shared::config::Checked;
use realizar_shared::control::ModelState;
use tokio::sync::Semaphore;

use crate::actors::registry::{
    Evictions, LoadSpec, Models, Registry, RegistryArgs, RegistryMsg, Transitions,
};
use crate::actors::sources::{ModelDirs, Origin, Resolver};
use config::NodeConfig;
use facade::{Identity, Node};

/// Whether `host` names only this machine.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The admin token from its file: the first line, trimmed, not empty.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin_token_file {}: {e}", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim().to_owned();
    if t.len() < 16 {
        return Err(format!(
            "admin_token_file {}: the token must have at least 16 characters",
            path.display()
        ));
    }
    Ok(t)
}

/// A gateway heard from within this long is taken to be draining the node.
const GATEWAY_GONE: Duration = Duration::from_secs(3);

/// Before shutting down, a node that a gateway knows asks to be drained
/// (its report says `leaving`) and serves on until the gateway has moved
/// its models away and unloaded them here, so that nothing in flight or
/// routed meanwhile fails. It stops waiting when the gateway falls silent
/// or after `limit`.
async fn leave(node: &Node, limit: Duration) {
    let gateway_near = || node.since_gateway().is_some_and(|d| d < GATEWAY_GONE);
    if limit.is_zero() || !gateway_near() {
        return;
    }
    node.leaving.store(true, Ordering::SeqCst);
    let asked_ms = node.now_ms();
    tracing::info!(
        limit_secs = limit.as_secs_f64(),
        "stopping: asking the gateway to drain this node first"
    );
    let t0 = Instant::now();
    loop {
        let empty = node
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            && node
                .transitions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        // Once the gateway has heard it is leaving, so that it places
        // nothing here meanwhile.
        let heard = node.gateway_seen_ms.load(Ordering::SeqCst) > asked_ms;
        if empty && heard {
            tracing::info!(
                secs = t0.elapsed().as_secs_f64(),
                "drained: every model moved away"
            );
            return;
        }
        if !gateway_near() {
            tracing::warn!("the gateway fell silent; stopping undrained");
            return;
        }
        if t0.elapsed() >= limit {
            tracing::warn!(
                limit_secs = limit.as_secs_f64(),
                "not drained in time; stopping anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start the node: bind, serve the API, and load the configured models in
/// the background (`/health` answers 503 until one is ready). Calls
/// `on_bound` with the address once listening; runs until `shutdown`
/// resolves, then drains as realizar_shared::http_server describes: requests
/// in flight get `shutdown_grace_secs`, then every remaining sequence ends
/// with an error event and the function returns.
pub async fn run(
    cfg: NodeConfig,
    resolver: Resolver,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    cfg.check("the configuration").map_err(|e| e.to_string())?;
    let admin_token = match &cfg.admin_token {
        Some(t) => Some(t.clone()),
        None => cfg
            .admin_token_file
            .as_deref()
            .map(read_token)
            .transpose()?,
    };
    if admin_token.is_none() && !is_loopback(&cfg.host) && !cfg.allow_open_admin {
        return Err(format!(
            "refusing to bind {} without an admin token: anyone who can reach it could load and unload models. \
             Give --admin-token-file (admin_token_file), or --allow-open-admin to accept that",
            cfg.host
        ));
    }
    let prometheus = metrics::install()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let started = Instant::now();
    let models: Models = Default::default();
    let transitions: Transitions = Default::default();
    let evictions: Evictions = Default::default();
    let dirs = ModelDirs::new(&cfg.model_dirs, cfg.allow_downloads);
    if dirs.dirs.is_empty() {
        tracing::warn!("no model directory exists: POST /admin/models can load nothing");
    }
    let (registry, _) = Actor::spawn(
        None,
        Registry,
        RegistryArgs {
            models: models.clone(),
            budget_bytes: cfg.memory_budget_mib << 20,
            threads: cfg.threads(),
            max_queue: cfg.max_queue,
            resolver,
            dirs,
            started,
            stream_buffer: cfg.stream_buffer_events,
            stall: Duration::from_secs_f64(cfg.stream_stall_secs),
            transitions: transitions.clone(),
            evictions: evictions.clone(),
        },
    )
    .await
    .map_err(|e| format!("starting the registry: {e}"))?;
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| format!("binding {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // With port 0 the advertised URL takes the port bound.
    let mut cfg = cfg;
    if cfg.port == 0 {
        cfg.port = addr.port();
    }
    let limits = cfg.limits();
    let cpu = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let state = Arc::new(Node {
        models,
        transitions,
        evictions,
        registry: registry.clone(),
        prometheus,
        started,
        identity: Identity {
            id: cfg.node_id(),
            url: cfg.advertised_url(),
            budget_bytes: cfg.memory_budget_mib << 20,
            threads: cfg.threads(),
        },
        max_queue: cfg.max_queue,
        fault_injection: cfg.fault_injection,
        default_options: cfg.model_defaults.clone(),
        next_id: AtomicU64::new(1),
        draining: AtomicBool::new(false),
        leaving: AtomicBool::new(false),
        gateway_seen_ms: AtomicU64::new(0),
        admin_token,
        cpu_slots: Arc::new(Semaphore::new(cpu)),
        tokenize_budget: Duration::from_millis(cfg.tokenize_budget_ms),
        limits: Arc::new(limits.clone()),
    });
    // The configured models are loading from now on: a gateway that asks
    // before the loads start must not ask for them again.
    {
        let mut t = state.transitions.write().unwrap_or_else(|e| e.into_inner());
        for m in &cfg.models {
            t.insert(m.id.clone(), ModelState::Loading);
        }
    }
    tracing::info!(%addr, max_connections = limits.effective_max_connections(), "listening");
    on_bound(addr);
    if let Some(gateway) = cfg.join.clone() {
        tokio::spawn(join::heartbeat(state.clone(), gateway));
    }
    let defaults = cfg.model_defaults.clone();
    let entries = cfg.models.clone();
    let reg = registry.clone();
    tokio::spawn(async move {
        for m in entries {
            let spec = LoadSpec {
                id: m.id.clone(),
                path: m.path.clone(),
                pinned: m.pinned,
                options: m.options.clone().unwrap_or_else(|| defaults.clone()),
                origin: Origin::Operator,
            };
            match reg.call(|r| RegistryMsg::Load(spec, r), None).await {
                Ok(ractor::rpc::CallResult::Success(Ok(info))) => {
                    tracing::info!(model = %info.id, seconds = info.load_seconds, mib = info.bytes >> 20, "model ready")
                }
                Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                    tracing::error!(model = %m.id, error = %e, "load failed")
                }
                other => tracing::error!(model = %m.id, "load failed: {:?}", other.err()),
            }
        }
    });
    let st = state.clone();
    let leave_timeout = Duration::from_secs_f64(cfg.leave_timeout_secs);
    let draining = async move {
        shutdown.await;
        leave(&st, leave_timeout).await;
        st.draining.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: no new connections; waiting for requests in flight");
    };
    let reg = registry.clone();
    let r = realizar_shared::http_server::serve(
        listener,
        crate::http::router(state),
        limits,
        draining,
        || async move {
            let _ = reg
                .call(
                    |r| RegistryMsg::StopAll("the node is shutting down".into(), r),
                    Some(Duration::from_secs(2)),
                )
                .await;
        },
    )
    .await
    .map_err(|e| e.to_string());
    registry.stop(None);
    r
}
