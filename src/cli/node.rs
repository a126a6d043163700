//! `realizar node` (and the node inside `realizar serve`): flags over the
//! TOML config, then the node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{fail, models};

#[derive(clap::Args)]
pub struct NodeArgs {
    /// TOML configuration (see configs/node.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A model to load: a GGUF path or a known name (smollm2, gemma3),
    /// optionally as ID=PATH. Repeatable.
    #[arg(long)]
    model: Vec<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// The node's name in a cluster, stable across restarts (default: the
    /// advertised URL).
    #[arg(long)]
    id: Option<String>,
    /// The URL a gateway reaches this node at (default: http://HOST:PORT).
    #[arg(long)]
    advertise: Option<String>,
    /// A gateway to join (its base URL): the node sends it its load report
    /// every second.
    #[arg(long)]
    join: Option<String>,
    /// Compute threads per model (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Context length per sequence.
    #[arg(long)]
    ctx: Option<usize>,
    /// Most sequences per batch.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Memory for each model's KV pool.
    #[arg(long)]
    kv_memory_mib: Option<usize>,
    /// Most prompt-lookup draft tokens verified per decoding step
    /// (speculative decoding; 0: off).
    #[arg(long)]
    draft_max: Option<usize>,
    /// Memory for all loaded models; loading past it evicts the least recently used.
    #[arg(long)]
    memory_budget_mib: Option<u64>,
    /// Requests queued or running per model before 429.
    #[arg(long)]
    max_queue: Option<usize>,
    /// Enable POST /admin/fault/{id} (tests only; refused unless built with
    /// the `fault-injection` feature).
    #[arg(long, hide = true)]
    fault_injection: bool,
    /// A directory POST /admin/models may load from (repeatable; default:
    /// the models directory).
    #[arg(long)]
    model_dir: Vec<PathBuf>,
    /// Let POST /admin/models fetch catalog models that are not on disk.
    #[arg(long)]
    allow_downloads: bool,
    /// File holding the token /admin/* requires as `Authorization: Bearer`.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Accept a non-loopback --host without an admin token.
    #[arg(long)]
    allow_open_admin: bool,
    /// Seconds a client may take to send a request head.
    #[arg(long)]
    header_timeout_secs: Option<f64>,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long)]
    idle_timeout_secs: Option<f64>,
    /// Seconds a client may take to send a request body.
    #[arg(long)]
    body_timeout_secs: Option<f64>,
    /// Most open connections; past it new ones get 503.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest request body in MiB; larger ones get 413.
    #[arg(long)]
    max_body_mib: Option<usize>,
    /// After SIGTERM, seconds requests in flight may finish before their
    /// streams end with an error event and the process exits.
    #[arg(long)]
    shutdown_grace_secs: Option<f64>,
    /// After SIGTERM, seconds a node its gateway knows waits to be drained
    /// (its models moved elsewhere) before that shutdown begins; 0: none.
    #[arg(long)]
    leave_timeout_secs: Option<f64>,
    /// Milliseconds one request's tokenization may take before a 400.
    #[arg(long)]
    tokenize_budget_ms: Option<u64>,
    /// Events a stream may leave unread before its sequence pauses.
    #[arg(long)]
    stream_buffer_events: Option<usize>,
    /// Seconds a paused stream's client may read nothing before it is cancelled.
    #[arg(long)]
    stream_stall_secs: Option<f64>,
    /// Socket send buffer per connection in KiB (default: the kernel's autotuning).
    #[arg(long)]
    send_buffer_kib: Option<usize>,
}

pub fn node(args: NodeArgs) -> ExitCode {
    let cfg = match config(args, false) {
        Ok(c) => c,
        Err(e) => return fail("node", e),
    };
    let rt = match super::server_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail("node", e),
    };
    let r = rt.block_on(realizar_node::service::run(
        cfg,
        resolver(),
        |addr| eprintln!("realizar: listening on http://{addr}"),
        shutdown_signal(),
    ));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("node", e),
    }
}

/// How a node finds a model by name: the models directory, fetching
/// catalog models when allowed.
pub fn resolver() -> realizar_node::actors::sources::Resolver {
    std::sync::Arc::new(|m: &str, fetch: bool| models::resolve_with(Path::new(m), fetch))
}

/// The config file with the flags applied, checked; with no model given
/// and `default_model`, SmolLM2.
pub fn config(
    args: NodeArgs,
    default_model: bool,
) -> Result<realizar_node::service::config::NodeConfig, String> {
    use realizar_node::service::config::{ModelEntry, NodeConfig};
    let mut cfg =
        NodeConfig::from_file_and_env(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(h) = args.host {
        cfg.host = h;
    }
    if let Some(p) = args.port {
        cfg.port = p;
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if let Some(b) = args.memory_budget_mib {
        cfg.memory_budget_mib = b;
    }
    if args.id.is_some() {
        cfg.id = args.id;
    }
    if args.advertise.is_some() {
        cfg.advertise = args.advertise;
    }
    if args.join.is_some() {
        cfg.join = args.join;
    }
    cfg.fault_injection |= args.fault_injection;
    cfg.model_dirs.extend(args.model_dir.iter().cloned());
    if cfg.model_dirs.is_empty() {
        cfg.model_dirs.push(models::models_dir());
    }
    cfg.allow_downloads |= args.allow_downloads;
    cfg.allow_open_admin |= args.allow_open_admin;
    if let Some(f) = args.admin_token_file {
        cfg.admin_token_file = Some(f);
    }
    for (dst, v) in [
        (&mut cfg.header_timeout_secs, args.header_timeout_secs),
        (&mut cfg.idle_timeout_secs, args.idle_timeout_secs),
        (&mut cfg.body_timeout_secs, args.body_timeout_secs),
        (&mut cfg.shutdown_grace_secs, args.shutdown_grace_secs),
        (&mut cfg.leave_timeout_secs, args.leave_timeout_secs),
        (&mut cfg.stream_stall_secs, args.stream_stall_secs),
    ] {
        if let Some(v) = v {
            *dst = v;
        }
    }
    if let Some(n) = args.max_connections {
        cfg.max_connections = n;
    }
    if let Some(n) = args.max_body_mib {
        cfg.max_body_mib = n;
    }
    if let Some(n) = args.tokenize_budget_ms {
        cfg.tokenize_budget_ms = n;
    }
    if let Some(n) = args.stream_buffer_events {
        cfg.stream_buffer_events = n;
    }
    if let Some(n) = args.send_buffer_kib {
        cfg.send_buffer_kib = n;
    }
    cfg.check_limits("command line")
        .map_err(|e| e.to_string())?;
    if let Some(q) = args.max_queue {
        cfg.max_queue = q;
    }
    let o = &mut cfg.model_defaults;
    if let Some(c) = args.ctx {
        o.n_ctx = c;
    }
    if let Some(b) = args.max_batch {
        o.max_batch = b;
    }
    if let Some(m) = args.kv_memory_mib {
        o.kv_memory_mib = m;
    }
    if let Some(d) = args.draft_max {
        o.draft_max = d;
    }
    o.check("command line", "flags")
        .map_err(|e| e.to_string())?;
    for m in &args.model {
        let (id, path) = match m.split_once('=') {
            Some((id, path)) => (id.to_owned(), path.to_owned()),
            None => {
                let p = Path::new(m);
                let id = if p.exists() {
                    p.file_stem()
                        .map_or(m.clone(), |s| s.to_string_lossy().into_owned())
                } else {
                    m.clone()
                };
                (id, m.clone())
            }
        };
        realizar_node::actors::registry::check_model_id(&id)
            .map_err(|e| format!("--model {m}: {e}"))?;
        // What the operator names on the command line is pinned: never
        // evicted, and unloaded only with `force`.
        cfg.models.push(ModelEntry {
            id,
            path,
            pinned: true,
            options: None,
        });
    }
    if default_model && cfg.models.is_empty() {
        cfg.models.push(ModelEntry {
            id: "smollm2".into(),
            path: "smollm2".into(),
            pinned: true,
            options: None,
        });
    }
    Ok(cfg)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
