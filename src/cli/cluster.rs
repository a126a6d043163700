//! `realizar cluster`: a local cluster with one command — N node processes
//! on loopback ports and a gateway in front of them. A node process that
//! dies is started again (same port, same id, so the gateway gives it its
//! replicas back); Ctrl-C or SIGTERM stops the gateway and then every node.

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use realizar_gateway::catalog::CatalogEntry;
use realizar_gateway::routing::Policy;
use realizar_gateway::GatewayOptions;
use realizar_shared::config::Checked;

use super::fail;

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The gateway's port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// A model the cluster serves: ID=PATH_OR_NAME[@REPLICAS] (repeatable;
    /// default: smollm2 on two nodes).
    #[arg(long)]
    model: Vec<String>,
    /// Compute threads per model on each node.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Memory budget of each node.
    #[arg(long, default_value_t = 2048)]
    memory_budget_mib: u64,
    /// Passed on to each node (see `realizar node --help`).
    #[arg(long)]
    max_queue: Option<usize>,
    #[arg(long)]
    ctx: Option<usize>,
    #[arg(long)]
    max_batch: Option<usize>,
    #[arg(long)]
    kv_memory_mib: Option<usize>,
    /// How the gateway chooses among a model's owners (see `realizar gateway --help`).
    #[arg(long, default_value = "affinity")]
    policy: Policy,
    #[command(flatten)]
    bound: super::gateway::BoundArgs,
    /// The cluster token also becomes each node's admin token.
    #[command(flatten)]
    security: super::gateway::SecurityArgs,
}

/// A loopback port free now and not in `taken`: a node binds its port only
/// once started, so until then the kernel may offer it again (for the next
/// node), and the gateway's own port is bound last of all.
fn free_port(taken: &[u16]) -> std::io::Result<u16> {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
}

struct NodeProc {
    id: String,
    port: u16,
    child: Option<Child>,
}

fn start(
    exe: &std::path::Path,
    n: &NodeProc,
    a: &ClusterArgs,
    models_dir: &std::path::Path,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("node");
    for (flag, v) in [
        ("--max-queue", a.max_queue),
        ("--ctx", a.ctx),
        ("--max-batch", a.max_batch),
        ("--kv-memory-mib", a.kv_memory_mib),
    ] {
        if let Some(v) = v {
            cmd.arg(flag).arg(v.to_string());
        }
    }
    cmd.args(["--host", "127.0.0.1", "--port"])
        .arg(n.port.to_string())
        .args(["--id", &n.id, "--threads"])
        .arg(a.threads.to_string())
        .arg("--memory-budget-mib")
        .arg(a.memory_budget_mib.to_string())
        // Admin loads of catalog names resolve (and may be fetched) here.
        .arg("--model-dir")
        .arg(models_dir)
        .arg("--allow-downloads")
        .stdin(Stdio::null());
    if let Some(t) = &a.security.cluster_token_file {
        cmd.arg("--admin-token-file").arg(t);
    }
    cmd.spawn()
}

pub fn cluster(a: ClusterArgs) -> ExitCode {
    if a.nodes == 0 {
        return fail("cluster", "--nodes must be at least 1");
    }
    let catalog: Result<Vec<CatalogEntry>, String> = if a.model.is_empty() {
        CatalogEntry::parse(&format!("smollm2@{}", a.nodes.min(2))).map(|e| vec![e])
    } else {
        a.model.iter().map(|m| CatalogEntry::parse(m)).collect()
    };
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => return fail("cluster", e),
    };
    // The bound's flags, checked as the gateway checks them.
    let mut config = realizar_gateway::config::GatewayConfig::default();
    a.bound.apply(&mut config);
    if let Err(e) = config.check("command line") {
        return fail("cluster", e);
    }
    let bound = super::gateway::bound(&config);
    let (api_keys, admin_key, cluster_token) = match a.security.read() {
        Ok(s) => s,
        Err(e) => return fail("cluster", e),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail("cluster", e),
    };
    let models_dir = super::models::models_dir();
    if let Err(e) = std::fs::create_dir_all(&models_dir) {
        return fail("cluster", format!("{}: {e}", models_dir.display()));
    }
    let mut procs = Vec::new();
    let mut taken = vec![a.port];
    for i in 0..a.nodes {
        let port = match free_port(&taken) {
            Ok(p) => p,
            Err(e) => return fail("cluster", e),
        };
        taken.push(port);
        let mut n = NodeProc {
            id: format!("node-{i}"),
            port,
            child: None,
        };
        match start(&exe, &n, &a, &models_dir) {
            Ok(c) => n.child = Some(c),
            Err(e) => return fail("cluster", format!("starting {}: {e}", n.id)),
        }
        procs.push(n);
    }
    let urls: Vec<String> = procs
        .iter()
        .map(|n| format!("http://127.0.0.1:{}", n.port))
        .collect();
    let procs = Arc::new(Mutex::new(procs));
    let opts = GatewayOptions {
        host: "127.0.0.1".into(),
        port: a.port,
        nodes: urls,
        discover_dns: Vec::new(),
        dns_every: Duration::from_secs(5),
        catalog,
        policy: a.policy,
        bound,
        drain_timeout: Duration::from_secs(300),
        down_after: realizar_gateway::membership::DOWN_AFTER,
        max_loads: realizar_gateway::coordinator::MAX_LOADS,
        api_keys,
        admin_key,
        cluster_token,
        limits: realizar_node::service::config::NodeConfig::default().limits(),
    };
    let rt = match super::server_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail("cluster", e),
    };
    // Restart node processes that die.
    let watched = procs.clone();
    let n_nodes = a.nodes;
    let a2 = ClusterArgs {
        model: Vec::new(),
        ..a
    };
    let (exe2, dir2) = (exe.clone(), models_dir.clone());
    rt.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut ps = watched.lock().unwrap_or_else(|e| e.into_inner());
            for n in ps.iter_mut() {
                let exited = match n.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Err(e)) => Some(e.to_string()),
                    _ => None,
                };
                if let Some(why) = exited {
                    tracing::warn!(node = %n.id, %why, "node process exited; starting it again");
                    match start(&exe2, n, &a2, &dir2) {
                        Ok(c) => n.child = Some(c),
                        Err(e) => tracing::error!(node = %n.id, error = %e, "restart failed"),
                    }
                }
            }
        }
    });
    let r = rt.block_on(realizar_gateway::run(
        opts,
        |addr| eprintln!("realizar: cluster of {n_nodes} nodes; gateway on http://{addr}"),
        super::node::shutdown_signal(),
    ));
    // Stop the watcher first, then the nodes, all at once (SIGTERM: each
    // finishes what it has in flight; with the gateway gone, none waits
    // more than a few seconds to be drained).
    drop(rt);
    let mut children: Vec<Child> = procs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
        .filter_map(|n| n.child.take())
        .collect();
    terminate(&mut children);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("cluster", e),
    }
}

/// SIGTERM to each, then SIGKILL to those still running 15 s later.
fn terminate(cs: &mut [Child]) {
    #[cfg(unix)]
    {
        for c in cs.iter() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for _ in 0..150 {
            if cs.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for c in cs.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
