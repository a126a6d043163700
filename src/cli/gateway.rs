//! `realizar gateway`: the OpenAI front door over a fleet of nodes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use realizar_gateway::catalog::CatalogEntry;
use realizar_gateway::config::GatewayConfig;
use realizar_gateway::routing::Policy;
use realizar_gateway::GatewayOptions;
use realizar_shared::config::Checked;

use super::fail;

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// TOML configuration (see configs/cluster.toml); flags override it,
    /// --node and --model add to its lists.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// A node's base URL (repeatable).
    #[arg(long)]
    node: Vec<String>,
    /// A DNS name (NAME:PORT) whose addresses are nodes, re-resolved
    /// periodically: a docker-compose service, a Kubernetes headless
    /// service (repeatable).
    #[arg(long)]
    discover_dns: Vec<String>,
    /// Seconds between DNS resolutions.
    #[arg(long)]
    dns_every_secs: Option<f64>,
    /// A model the cluster serves: ID=PATH_OR_NAME[@REPLICAS] (repeatable).
    #[arg(long)]
    model: Vec<String>,
    /// How to choose among a model's ready owners: affinity (bounded-load
    /// rendezvous on the user, session or prompt start), least-loaded,
    /// round-robin.
    #[arg(long)]
    policy: Option<Policy>,
    #[command(flatten)]
    bound: BoundArgs,
    /// Seconds a drain waits for in-flight requests and warm replicas
    /// elsewhere before unloading the node's replicas anyway.
    #[arg(long)]
    drain_timeout_secs: Option<f64>,
    /// Seconds without an answer (poll or heartbeat) after which a node
    /// is down and its requests go to other owners.
    #[arg(long)]
    down_after_secs: Option<f64>,
    /// Replica loads under way at once across the cluster (each node
    /// takes one at a time).
    #[arg(long)]
    max_loads: Option<usize>,
    /// Threads serving requests. The gateway only moves bytes: one thread
    /// serves thousands of requests a second, and a second one mostly adds
    /// thread wake-ups (measured: BENCHMARKS.md).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    security: SecurityArgs,
}

/// The load bound's knobs, shared by `gateway` and `cluster`.
#[derive(clap::Args)]
pub struct BoundArgs {
    /// Bounded-load slack: an owner takes a request while its load is
    /// under (1+ε)× the mean of the model's owners.
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Below this many sequences in flight a node is never too busy to
    /// take its keys' requests.
    #[arg(long)]
    pub spill_floor: Option<u64>,
    /// The slack for a request whose previous turn, very prompt or prompt
    /// start the owner has cached.
    #[arg(long)]
    pub cached_epsilon: Option<f64>,
}

impl BoundArgs {
    /// Over the config's values.
    pub fn apply(&self, c: &mut GatewayConfig) {
        if let Some(v) = self.epsilon {
            c.epsilon = v;
        }
        if let Some(v) = self.spill_floor {
            c.spill_floor = v;
        }
        if let Some(v) = self.cached_epsilon {
            c.cached_epsilon = v;
        }
    }
}

/// The routing bound a checked config gives.
pub fn bound(c: &GatewayConfig) -> realizar_gateway::routing::Bound {
    realizar_gateway::routing::Bound {
        epsilon: c.epsilon,
        floor: c.spill_floor,
        cached_epsilon: c.cached_epsilon,
    }
}

/// Keys and tokens, shared by `gateway` and `cluster`.
#[derive(clap::Args, Default)]
pub struct SecurityArgs {
    /// API keys the OpenAI routes accept, one per line (also
    /// REALIZAR_API_KEYS, comma-separated). None: open.
    #[arg(long)]
    pub api_keys_file: Option<PathBuf>,
    /// The key /admin/* needs.
    #[arg(long)]
    pub admin_key_file: Option<PathBuf>,
    /// The token the gateway presents to nodes' admin routes (their
    /// --admin-token-file).
    #[arg(long)]
    pub cluster_token_file: Option<PathBuf>,
}

/// (API keys, admin key, cluster token) from their files and the environment.
pub type Secrets = (Vec<String>, Option<String>, Option<String>);

impl SecurityArgs {
    pub fn read(&self) -> Result<Secrets, String> {
        let mut keys: Vec<String> = Vec::new();
        if let Some(p) = &self.api_keys_file {
            let t = std::fs::read_to_string(p)
                .map_err(|e| format!("--api-keys-file {}: {e}", p.display()))?;
            keys.extend(
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if let Ok(v) = std::env::var("REALIZAR_API_KEYS") {
            keys.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            );
        }
        let admin = self
            .admin_key_file
            .as_ref()
            .map(|p| first_line(p, "--admin-key-file"))
            .transpose()?;
        let token = self
            .cluster_token_file
            .as_ref()
            .map(|p| first_line(p, "--cluster-token-file"))
            .transpose()?;
        Ok((keys, admin, token))
    }
}

fn first_line(p: &PathBuf, what: &str) -> Result<String, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("{what} {}: {e}", p.display()))?;
    let t = t.lines().next().unwrap_or("").trim().to_owned();
    if t.len() < 16 {
        return Err(format!(
            "{what} {}: needs at least 16 characters",
            p.display()
        ));
    }
    Ok(t)
}

/// The config file with the flags applied, checked.
fn options(a: GatewayArgs) -> Result<GatewayOptions, String> {
    let mut c = GatewayConfig::from_file_and_env(a.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(h) = a.host {
        c.host = h;
    }
    if let Some(p) = a.port {
        c.port = p;
    }
    c.nodes.extend(a.node);
    c.discover_dns.extend(a.discover_dns);
    if let Some(v) = a.dns_every_secs {
        c.dns_every_secs = v;
    }
    if let Some(v) = a.policy {
        c.policy = v;
    }
    a.bound.apply(&mut c);
    if let Some(v) = a.drain_timeout_secs {
        c.drain_timeout_secs = v;
    }
    if let Some(v) = a.down_after_secs {
        c.down_after_secs = v;
    }
    if let Some(v) = a.max_loads {
        c.max_loads = v;
    }
    for m in &a.model {
        c.models.push(CatalogEntry::parse(m)?);
    }
    let security = SecurityArgs {
        api_keys_file: a.security.api_keys_file.or(c.api_keys_file.take()),
        admin_key_file: a.security.admin_key_file.or(c.admin_key_file.take()),
        cluster_token_file: a
            .security
            .cluster_token_file
            .or(c.cluster_token_file.take()),
    };
    // The flags are checked as the file is: the same messages.
    let file = a
        .config
        .as_ref()
        .map_or("command line".to_owned(), |p| p.display().to_string());
    c.check(&file).map_err(|e| e.to_string())?;
    Ok(with_secrets(c, security.read()?))
}

/// A checked config and the secrets as the gateway's options (the
/// connection limits: a node's defaults).
pub fn with_secrets(c: GatewayConfig, secrets: Secrets) -> GatewayOptions {
    let (api_keys, admin_key, cluster_token) = secrets;
    let bound = bound(&c);
    GatewayOptions {
        host: c.host,
        port: c.port,
        nodes: c.nodes,
        discover_dns: c.discover_dns,
        dns_every: Duration::from_secs_f64(c.dns_every_secs),
        catalog: c.models,
        policy: c.policy,
        bound,
        drain_timeout: Duration::from_secs_f64(c.drain_timeout_secs),
        down_after: Duration::from_secs_f64(c.down_after_secs),
        max_loads: c.max_loads,
        api_keys,
        admin_key,
        cluster_token,
        limits: realizar_node::service::config::NodeConfig::default().limits(),
    }
}

pub fn gateway(a: GatewayArgs) -> ExitCode {
    let workers = a.workers;
    let opts = match options(a) {
        Ok(o) => o,
        Err(e) => return fail("gateway", e),
    };
    let rt = match super::runtime(workers) {
        Ok(rt) => rt,
        Err(e) => return fail("gateway", e),
    };
    let r = rt.block_on(realizar_gateway::run(
        opts,
        |addr| eprintln!("realizar: gateway listening on http://{addr}"),
        super::node::shutdown_signal(),
    ));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("gateway", e),
    }
}
