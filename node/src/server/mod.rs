//! The node process: actors that own loaded models, the executor that runs
//! continuous batching over a paged KV cache, and the OpenAI-compatible API.

pub mod blocks;
pub mod config;
pub mod executor;
pub mod http;
pub mod registry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ractor::Actor;
use tokio::sync::Semaphore;

use config::NodeConfig;
use registry::{
    LoadSpec, ModelDirs, Models, Origin, Registry, RegistryArgs, RegistryMsg, Resolver,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Install the Prometheus recorder (once per process) and describe the metrics.
fn install_metrics() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("realizar_batch_size".into()), BATCH_BUCKETS)
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("metrics: {e}"))?;
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "realizar_http_requests_total",
        "HTTP requests by endpoint and status"
    );
    describe_histogram!(
        "realizar_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request handling time (until the response head)"
    );
    describe_histogram!(
        "realizar_time_to_first_token_seconds",
        Unit::Seconds,
        "Arrival to first generated token"
    );
    describe_histogram!(
        "realizar_inter_token_latency_seconds",
        Unit::Seconds,
        "Time between consecutive generated tokens of a sequence"
    );
    describe_histogram!(
        "realizar_e2e_request_latency_seconds",
        Unit::Seconds,
        "Arrival to last generated token"
    );
    describe_histogram!(
        "realizar_request_queue_seconds",
        Unit::Seconds,
        "Arrival to admission into the running batch"
    );
    describe_histogram!("realizar_batch_size", "Sequences per forward step");
    describe_histogram!(
        "realizar_model_load_seconds",
        Unit::Seconds,
        "Time to open, build and warm a model"
    );
    describe_counter!(
        "realizar_prompt_tokens_total",
        "Prompt tokens of finished requests"
    );
    describe_counter!(
        "realizar_generation_tokens_total",
        "Generated tokens of finished requests"
    );
    describe_gauge!(
        "realizar_running_sequences",
        "Sequences in the running batch"
    );
    describe_gauge!(
        "realizar_waiting_sequences",
        "Sequences waiting for admission"
    );
    describe_gauge!("realizar_kv_blocks_used", "KV blocks held by sequences");
    describe_gauge!("realizar_kv_blocks_capacity", "KV blocks in the pool");
    describe_counter!(
        "realizar_prefix_cache_hits_total",
        "Prompt tokens found in the prefix cache"
    );
    describe_counter!(
        "realizar_prefix_cache_queries_total",
        "Prompt tokens looked up in the prefix cache"
    );
    describe_counter!(
        "realizar_preemptions_total",
        "Sequences preempted for lack of KV blocks"
    );
    describe_counter!(
        "realizar_cancelled_requests_total",
        "Sequences dropped because their client went away"
    );
    describe_counter!(
        "realizar_stalled_streams_total",
        "Streams cancelled because their client stopped reading"
    );
    describe_counter!(
        "realizar_rejected_requests_total",
        "Requests refused because the queue was full"
    );
    describe_counter!(
        "realizar_executor_restarts_total",
        "Executor restarts after a panic"
    );
    describe_counter!(
        "realizar_model_actor_restarts_total",
        "Model actor restarts after a failure"
    );
    describe_counter!(
        "realizar_model_evictions_total",
        "Models evicted to fit the memory budget"
    );
    describe_gauge!("realizar_loaded_models", "Models loaded");
    let _ = HANDLE.set(h.clone());
    Ok(h)
}

/// Whether `host` names only this machine.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The admin token from its file: the first line, trimmed, not empty.
fn read_token(path: &std::path::Path) -> Result<String, String> {
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
    let admin_token = cfg
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    if admin_token.is_none() && !is_loopback(&cfg.host) && !cfg.allow_open_admin {
        return Err(format!(
            "refusing to bind {} without an admin token: anyone who can reach it could load and unload models. \
             Give --admin-token-file (admin_token_file), or --allow-open-admin to accept that",
            cfg.host
        ));
    }
    let prometheus = install_metrics()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let started = Instant::now();
    let models: Models = Default::default();
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
        },
    )
    .await
    .map_err(|e| format!("starting the registry: {e}"))?;
    let limits = cfg.limits();
    let cpu = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let state = Arc::new(http::AppState {
        models,
        registry: registry.clone(),
        prometheus,
        started,
        max_queue: cfg.max_queue,
        fault_injection: cfg.fault_injection,
        default_options: cfg.model_defaults.clone(),
        next_id: AtomicU64::new(1),
        draining: AtomicBool::new(false),
        admin_token,
        cpu_slots: Arc::new(Semaphore::new(cpu)),
        tokenize_budget: Duration::from_millis(cfg.tokenize_budget_ms),
        limits: Arc::new(limits.clone()),
    });
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| format!("binding {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, max_connections = limits.effective_max_connections(), "listening");
    on_bound(addr);
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
    let draining = async move {
        shutdown.await;
        st.draining.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: no new connections; waiting for requests in flight");
    };
    let reg = registry.clone();
    let r = realizar_shared::http_server::serve(
        listener,
        http::router(state),
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
