//! `realizar serve`: one machine on the cluster's code path. The gateway
//! binds the public address; the node it routes to runs in the same process
//! on a private loopback port, its admin routes behind a token made up at
//! start. The models given (SmolLM2 when none is) are the gateway's catalog
//! with one replica each, and the node starts loading them at once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use realizar_gateway::catalog::CatalogEntry;
use realizar_gateway::config::GatewayConfig;
use realizar_node::service::{is_loopback, read_token};
use tokio::sync::{oneshot, watch};

use super::fail;
use super::gateway::{with_secrets, SecurityArgs};
use super::node::{self, NodeArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// API keys the OpenAI routes accept, one per line (also
    /// REALIZAR_API_KEYS, comma-separated). None: open.
    #[arg(long)]
    api_keys_file: Option<PathBuf>,
}

pub fn serve(a: ServeArgs) -> ExitCode {
    let (node_cfg, opts) = match configs(a) {
        Ok(c) => c,
        Err(e) => return fail("serve", e),
    };
    let rt = match super::server_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail("serve", e),
    };
    match rt.block_on(run(node_cfg, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("serve", e),
    }
}

type NodeConfig = realizar_node::service::config::NodeConfig;

/// The node's config (private address, made-up admin token) and the
/// gateway's (the public address, the admin token as its admin key, the
/// models as its catalog, the node's connection limits).
fn configs(a: ServeArgs) -> Result<(NodeConfig, realizar_gateway::GatewayOptions), String> {
    let mut cfg = node::config(a.node, true)?;
    if cfg.join.is_some() || cfg.advertise.is_some() {
        return Err(
            "serve runs its own gateway: `join` and `advertise` are for `realizar node`".into(),
        );
    }
    let admin_key = cfg
        .admin_token_file
        .take()
        .as_deref()
        .map(read_token)
        .transpose()?;
    if admin_key.is_none() && !is_loopback(&cfg.host) && !cfg.allow_open_admin {
        return Err(format!(
            "refusing to bind {} without an admin token: anyone who can reach it could load and unload models. \
             Give --admin-token-file (admin_token_file), or --allow-open-admin to accept that",
            cfg.host
        ));
    }
    let (api_keys, _, _) = SecurityArgs {
        api_keys_file: a.api_keys_file,
        ..Default::default()
    }
    .read()?;
    let token = secret()?;
    let mut g = GatewayConfig {
        host: std::mem::replace(&mut cfg.host, "127.0.0.1".into()),
        port: std::mem::replace(&mut cfg.port, 0),
        ..GatewayConfig::default()
    };
    g.models = cfg
        .models
        .iter()
        .map(|m| CatalogEntry {
            id: m.id.clone(),
            path: m.path.clone(),
            replicas: 1,
            pin: Vec::new(),
            options: m.options.clone(),
            max_replicas: None,
            scale_up_waiting: None,
            keep_alive_secs: None,
        })
        .collect();
    let mut opts = with_secrets(g, (api_keys, admin_key, Some(token.clone())));
    opts.limits = cfg.limits();
    cfg.admin_token = Some(token);
    // Its gateway stops with it: nobody to drain it for.
    cfg.leave_timeout_secs = 0.0;
    cfg.id.get_or_insert_with(|| "local".into());
    Ok((cfg, opts))
}

/// Node first (its address is the gateway's one member), then the gateway;
/// Ctrl-C or SIGTERM stops both, each draining as it does on its own, and
/// either one failing stops the other.
async fn run(cfg: NodeConfig, mut opts: realizar_gateway::GatewayOptions) -> Result<(), String> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            node::shutdown_signal().await;
            let _ = tx.send(true);
        });
    }
    let (addr_tx, addr_rx) = oneshot::channel();
    let mut node_task = tokio::spawn(realizar_node::service::run(
        cfg,
        node::resolver(),
        move |addr| {
            let _ = addr_tx.send(addr);
        },
        stop(stop_rx.clone()),
    ));
    let addr = match addr_rx.await {
        Ok(a) => a,
        // The node stopped before it bound: its error says why.
        Err(_) => {
            return match (&mut node_task).await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err("the node stopped before it listened".into()),
                Err(e) => Err(format!("the node: {e}")),
            }
        }
    };
    opts.nodes = vec![format!("http://{addr}")];
    let gateway = realizar_gateway::run(
        opts,
        |a| eprintln!("realizar: listening on http://{a}"),
        stop(stop_rx),
    );
    let g = gateway.await;
    // A gateway that could not start (say, its port taken) stops the node.
    let _ = stop_tx.send(true);
    let n = node_task
        .await
        .map_err(|e| format!("the node: {e}"))
        .and_then(|r| r);
    g.and(n)
}

/// 32 random bytes in hex, from the kernel.
fn secret() -> Result<String, String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("making the node's admin token (/dev/urandom): {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
