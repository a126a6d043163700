//! realizar-gateway: the cluster front door.
//!
//! - `hash`, `placement`, `routing`: pure functions of membership and load
//!   (weighted rendezvous placement of models over nodes; bounded-load
//!   affinity routing among a model's owners), so gateway replicas agree
//!   without shared state;
//! - `membership`: who is in the cluster and who is up;
//! - `catalog`: the models the cluster serves (changed at run time through
//!   `/admin/models`); `config`: the gateway's TOML;
//! - `control`: the loop that polls nodes, sets each model's replica count
//!   (`scale`), rebuilds the routing snapshot (`table`) and carries out the
//!   `coordinator`'s plan (loads, warm-first unloads, drains), logging it
//!   (`events`);
//! - `http`, `client`: the OpenAI front door and the proxy to the nodes;
//!   `failover`: streams continued on another owner when theirs breaks;
//! - `sim`: the cluster simulator, the above against simulated nodes.

pub mod admin;
pub mod breaker;
pub mod catalog;
pub mod client;
pub mod config;
pub mod control;
pub mod coordinator;
pub mod events;
pub mod failover;
pub mod fleet_metrics;
pub mod hash;
pub mod http;
pub mod membership;
pub mod placement;
pub mod routing;
pub mod scale;
pub mod sim;
pub mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use realizar_shared::http_server::Limits;

use catalog::{Catalog, CatalogEntry};
use coordinator::Drain;
use events::Events;
use membership::{Membership, Source};
use placement::Placement;
use routing::Policy;
use table::RoutingTable;

/// State the control loop writes and requests read.
pub struct Shared {
    pub membership: RwLock<Membership>,
    /// The routing snapshot: swapped whole, read without locks.
    pub table: ArcSwap<RoutingTable>,
    pub placement: RwLock<Placement>,
    pub catalog: RwLock<Catalog>,
    /// Nodes (by id) being drained or drained.
    pub drains: RwLock<BTreeMap<String, Drain>>,
    /// How long a drain waits for in-flight requests and warm replicas
    /// elsewhere before it unloads the node's replicas anyway.
    pub drain_timeout: Duration,
    /// Replica loads under way at once across the cluster.
    pub max_loads: usize,
    pub events: Mutex<Events>,
    /// Each catalog model's replica count now (demand-driven: scale.rs).
    pub replicas: RwLock<BTreeMap<String, usize>>,
    /// Models requests are waiting for a replica of, and when they last
    /// said so.
    pub wanted: Mutex<BTreeMap<String, Instant>>,
    /// Requests waiting for a replica (bounded).
    pub waiters: std::sync::atomic::AtomicUsize,
    /// A node came up between rounds (a heartbeat): the control loop runs
    /// a round now instead of at its next tick, so a restarted gateway
    /// routes as soon as it has heard from the nodes.
    pub wake: tokio::sync::Notify,
    pub policy: Policy,
    /// Requests routed (round-robin's turn).
    pub turn: AtomicU64,
    /// Bounded load: an owner takes a request while its load is under
    /// (1+ε)× the owners' mean or under the floor.
    pub bound: routing::Bound,
    /// Keys the API routes accept (none: open).
    pub api_keys: Vec<String>,
    /// Key the `/admin/*` routes need (none: open).
    pub admin_key: Option<String>,
    /// The token shared with the nodes (their admin token); joining nodes
    /// present it.
    pub cluster_token: Option<String>,
}

impl Shared {
    /// Log a coordinator event (events.rs).
    pub fn event(&self, kind: &'static str, node: &str, model: &str, detail: impl Into<String>) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(kind, node, model, detail);
    }
}

pub struct GatewayOptions {
    pub host: String,
    pub port: u16,
    /// Node base URLs.
    pub nodes: Vec<String>,
    /// `NAME:PORT` resolved every `dns_every`.
    pub discover_dns: Vec<String>,
    pub dns_every: Duration,
    pub catalog: Vec<CatalogEntry>,
    pub policy: Policy,
    pub bound: routing::Bound,
    pub drain_timeout: Duration,
    /// Silence after which a node is down (membership.rs).
    pub down_after: Duration,
    pub max_loads: usize,
    pub api_keys: Vec<String>,
    pub admin_key: Option<String>,
    /// Presented to nodes as their admin token.
    pub cluster_token: Option<String>,
    pub limits: Limits,
}

/// Run the gateway until `shutdown` resolves.
pub async fn run(
    o: GatewayOptions,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let now = Instant::now();
    let mut m = Membership::new(o.down_after);
    for u in &o.nodes {
        m.add(u.trim_end_matches('/'), Source::Static, now);
    }
    let shared = Arc::new(Shared {
        membership: RwLock::new(m),
        table: ArcSwap::from_pointee(RoutingTable::default()),
        placement: RwLock::new(Placement::default()),
        catalog: RwLock::new(Catalog::new(o.catalog)?),
        drains: RwLock::new(BTreeMap::new()),
        drain_timeout: o.drain_timeout,
        max_loads: o.max_loads,
        events: Mutex::new(Events::new(now)),
        replicas: RwLock::new(BTreeMap::new()),
        wanted: Mutex::new(BTreeMap::new()),
        waiters: std::sync::atomic::AtomicUsize::new(0),
        wake: tokio::sync::Notify::new(),
        policy: o.policy,
        turn: AtomicU64::new(0),
        bound: o.bound,
        api_keys: o.api_keys,
        admin_key: o.admin_key,
        cluster_token: o.cluster_token.clone(),
    });
    let prometheus = install_metrics()?;
    let client = client::NodeClient::new(o.cluster_token);
    tokio::spawn(control::run(shared.clone(), client.clone()));
    for name in o.discover_dns {
        tokio::spawn(discover(shared.clone(), name, o.dns_every));
    }
    let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port))
        .await
        .map_err(|e| format!("binding {}:{}: {e}", o.host, o.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    on_bound(addr);
    let router = http::router(
        http::Gw {
            shared,
            client,
            prometheus,
        },
        o.limits.clone(),
    );
    realizar_shared::http_server::serve(listener, router, o.limits, shutdown, || async {})
        .await
        .map_err(|e| e.to_string())
}

/// Re-resolve a `NAME:PORT` (a compose service, a Kubernetes headless
/// service) and keep membership to its addresses.
async fn discover(shared: Arc<Shared>, name: String, every: Duration) {
    loop {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => {
                let mut urls: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
                urls.sort();
                urls.dedup();
                let changes = shared
                    .membership
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_dns(&urls, Instant::now());
                for c in changes {
                    tracing::info!(?c, dns = %name, "membership");
                }
            }
            Err(e) => tracing::warn!(dns = %name, error = %e, "resolving failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The process's Prometheus recorder, with the gateway's metrics described.
fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use realizar_shared::metrics as m;
    let h = m::recorder()?;
    describe_counter!(
        m::GATEWAY_REQUESTS,
        "Requests proxied, by model, route reason and status"
    );
    describe_counter!(m::GATEWAY_RETRIES, "Requests sent again to another owner");
    describe_counter!(
        m::GATEWAY_RESUMES,
        "Streams continued on another owner after theirs broke"
    );
    describe_histogram!(
        m::GATEWAY_UPSTREAM_HEAD_SECONDS,
        Unit::Seconds,
        "From sending a request to a node to its response head"
    );
    describe_histogram!(
        m::GATEWAY_ROUTING_SECONDS,
        Unit::Seconds,
        "Time to choose a node for a request"
    );
    describe_gauge!(m::GATEWAY_NODES_UP, "Nodes up");
    describe_gauge!(
        m::GATEWAY_BREAKER_OPEN,
        "1 while the node's circuit breaker is open"
    );
    describe_gauge!(
        m::GATEWAY_NODES_KNOWN,
        "Nodes known (up, down or not yet answered)"
    );
    describe_counter!(
        m::GATEWAY_REPLICA_LOADS,
        "Replica loads asked of nodes, by outcome"
    );
    describe_counter!(
        m::GATEWAY_REPLICA_UNLOADS,
        "Replica unloads asked of nodes, by outcome"
    );
    describe_counter!(
        m::GATEWAY_PLACEMENT_MOVES,
        "Replicas whose owner changed between two placements"
    );
    Ok(h)
}
