//! The cluster simulator's table (BENCHMARKS.md): for each cluster size,
//! one trace (sim/trace.rs) run under every policy (sim/mod.rs).
//!
//!   cargo bench -p realizar-gateway --bench cluster_sim
//!
//! Options: --nodes 10,100,1000 (the sizes), --seconds S (of arrivals,
//! default 120), --utilization U (offered load against the replicas'
//! capacity with nothing cached, default 1.0), --seed N, --no-churn (no
//! join, failure or drain), --no-conversations (the gateway sees no chat
//! history: keys from the user and the prompt's start only), --epsilon E
//! --cached-epsilon E and --floor N (the affinity policy's bounds), --policy TEXT
//! (only policies whose name contains it).

use realizar_gateway::routing::Policy;
use realizar_gateway::sim::radix::Thresholds;
use realizar_gateway::sim::{run, trace_for, Config, SimPolicy};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    let number = |name: &str| {
        arg(name).map(|s| {
            s.parse::<f64>()
                .unwrap_or_else(|_| panic!("{name}: a number, not `{s}`"))
        })
    };
    let sizes: Vec<usize> = arg("--nodes")
        .unwrap_or_else(|| "10,100,1000".into())
        .split(',')
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("--nodes: a comma-separated list of counts, not `{s}`"))
        })
        .collect();
    let only = arg("--policy");
    // Each policy, and ours again with twice the slack for cached requests.
    let runs: Vec<(SimPolicy, Option<f64>)> = vec![
        (SimPolicy::Gateway(Policy::RoundRobin), None),
        (SimPolicy::Gateway(Policy::LeastLoaded), None),
        (SimPolicy::Radix(Thresholds::SGLANG), None),
        (SimPolicy::Gateway(Policy::Affinity), None),
        (SimPolicy::Gateway(Policy::Affinity), Some(2.0)),
    ];
    println!(
        "| nodes | policy | requests | hit ratio | busiest/mean | queue p50 / p99 s | TTFT p50 / p99 s | moves | resent | routing p50 / p99 ns | warm p50 ns | sim s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let mut cfg = Config::for_nodes(n);
        cfg.churn = !flag("--no-churn");
        cfg.conversations = !flag("--no-conversations");
        if let Some(u) = number("--utilization") {
            cfg.utilization = u;
        }
        if let Some(s) = number("--seconds") {
            cfg.shape.seconds = s;
        }
        if let Some(s) = number("--seed") {
            cfg.seed = s as u64;
        }
        if let Some(e) = number("--epsilon") {
            cfg.bound.epsilon = e;
        }
        if let Some(e) = number("--cached-epsilon") {
            cfg.bound.cached_epsilon = e;
        }
        if let Some(f) = number("--floor") {
            cfg.bound.floor = f as u64;
        }
        let trace = trace_for(&cfg);
        for (p, cached_epsilon) in &runs {
            let mut name = p.name();
            let mut c = cfg.clone();
            if let Some(e) = cached_epsilon {
                c.bound.cached_epsilon = *e;
                name = format!("{name}, cached slack {e}");
            }
            if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
                continue;
            }
            let r = run(&c, &trace, *p);
            println!(
                "| {} | {name} | {} | {:.3} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} | {:.0} / {:.0} | {:.0} | {:.1} |",
                r.nodes,
                r.requests - r.unfinished,
                r.hit_ratio,
                r.imbalance,
                r.queue_p50_s,
                r.queue_p99_s,
                r.ttft_p50_s,
                r.ttft_p99_s,
                r.moves,
                r.resent,
                r.route_ns_p50,
                r.route_ns_p99,
                r.route_warm_ns_p50,
                r.wall_s
            );
        }
    }
}
