//! `realizar gateway`: the OpenAI front door over a fleet of nodes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use realizar_gateway::control::CatalogEntry;
use realizar_gateway::GatewayOptions;

use super::fail;

#[derive(clap::Args)]
pub struct GatewayArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// A node's base URL (repeatable).
    #[arg(long)]
    node: Vec<String>,
    /// A DNS name (NAME:PORT) whose addresses are nodes, re-resolved
    /// periodically: a docker-compose service, a Kubernetes headless
    /// service (repeatable).
    #[arg(long)]
    discover_dns: Vec<String>,
    /// Seconds between DNS resolutions.
    #[arg(long, default_value_t = 5.0)]
    dns_every_secs: f64,
    /// A model the cluster serves: ID=PATH_OR_NAME[@REPLICAS] (repeatable).
    #[arg(long)]
    model: Vec<String>,
    /// Bounded-load slack: an owner takes a request while its load is
    /// under (1+ε)× the mean of the model's owners.
    #[arg(long, default_value_t = 0.25)]
    epsilon: f64,
    /// API keys the OpenAI routes accept, one per line (also
    /// REALIZAR_API_KEYS, comma-separated). None: open.
    #[arg(long)]
    api_keys_file: Option<PathBuf>,
    /// The key /admin/* needs.
    #[arg(long)]
    admin_key_file: Option<PathBuf>,
    /// The token the gateway presents to nodes' admin routes (their
    /// --admin-token-file).
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
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

fn api_keys(a: &GatewayArgs) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = Vec::new();
    if let Some(p) = &a.api_keys_file {
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
    Ok(keys)
}

pub fn gateway(a: GatewayArgs) -> ExitCode {
    let catalog: Result<Vec<CatalogEntry>, String> =
        a.model.iter().map(|m| CatalogEntry::parse(m)).collect();
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => return fail("gateway", e),
    };
    if !(a.epsilon.is_finite() && a.epsilon > 0.0) {
        return fail("gateway", "--epsilon must be a number above 0");
    }
    let keys = match api_keys(&a) {
        Ok(k) => k,
        Err(e) => return fail("gateway", e),
    };
    let admin_key = match a
        .admin_key_file
        .as_ref()
        .map(|p| first_line(p, "--admin-key-file"))
    {
        Some(Err(e)) => return fail("gateway", e),
        Some(Ok(k)) => Some(k),
        None => None,
    };
    let cluster_token = match a
        .cluster_token_file
        .as_ref()
        .map(|p| first_line(p, "--cluster-token-file"))
    {
        Some(Err(e)) => return fail("gateway", e),
        Some(Ok(k)) => Some(k),
        None => None,
    };
    let limits = realizar_node::service::config::NodeConfig::default().limits();
    let opts = GatewayOptions {
        host: a.host,
        port: a.port,
        nodes: a.node,
        discover_dns: a.discover_dns,
        dns_every: Duration::from_secs_f64(a.dns_every_secs.max(0.1)),
        catalog,
        epsilon: a.epsilon,
        api_keys: keys,
        admin_key,
        cluster_token,
        limits,
    };
    let rt = match super::server_runtime() {
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
