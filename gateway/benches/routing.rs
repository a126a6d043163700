//! The routing decision's cost: from a request's model and affinity key to
//! the chosen node, over a routing table built from real load reports —
//! 10, 100 and 1,000 nodes serving 10,000 models, 3 replicas each. The
//! criterion figure is the mean; p50 and p99 of single decisions (timed
//! one by one over 200,000 decisions) are printed after it.
//!
//!   cargo bench -p realizar-gateway --bench routing

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use realizar_gateway::catalog::{Catalog, CatalogEntry};
use realizar_gateway::hash;
use realizar_gateway::membership::{Membership, Source};
use realizar_gateway::placement::{place, ModelSlot, NodeSlot};
use realizar_gateway::routing::{choose, Bound, Keys};
use realizar_gateway::table::{RoutingTable, View};
use realizar_shared::control::{LoadReport, ModelInfo, ModelState};
use realizar_shared::openai::Conversation;

const MODELS: usize = 10_000;
const REPLICAS: usize = 3;

fn table(n_nodes: usize) -> RoutingTable {
    let nodes: Vec<NodeSlot> = (0..n_nodes)
        .map(|i| NodeSlot {
            id: format!("node-{i}"),
            capacity: 64 << 30,
            refuses: Vec::new(),
        })
        .collect();
    let models: Vec<ModelSlot> = (0..MODELS)
        .map(|i| ModelSlot {
            id: format!("model-{i}"),
            replicas: REPLICAS,
            bytes: 1,
            pin: Vec::new(),
        })
        .collect();
    let p = place(&nodes, &models);
    let mut held: BTreeMap<&str, Vec<ModelInfo>> = BTreeMap::new();
    for (m, owners) in &p.owners {
        for (k, o) in owners.iter().enumerate() {
            held.entry(o.as_str()).or_default().push(ModelInfo {
                inflight: k,
                running: k,
                affinity_keys: (0..8).map(|j| hash::mix(j + k as u64)).collect(),
                conversation_keys: (0..8).map(|j| hash::mix(!(j + k as u64))).collect(),
                ..ModelInfo::idle(m, ModelState::Ready)
            });
        }
    }
    let now = Instant::now();
    let mut m = Membership::new(Duration::from_secs(3));
    for n in &nodes {
        let url = format!("http://{}", n.id);
        m.add(&url, Source::Static, now);
        m.on_report(
            &url,
            LoadReport {
                memory_budget_bytes: n.capacity,
                models: held.remove(n.id.as_str()).unwrap_or_default(),
                ..LoadReport::empty(&n.id, &url)
            },
            now,
        );
    }
    let catalog = Catalog::new(
        (0..MODELS)
            .map(|i| CatalogEntry::parse(&format!("model-{i}@{REPLICAS}")).unwrap())
            .collect(),
    )
    .unwrap();
    let drains = BTreeSet::new();
    let view = View {
        membership: &m,
        placement: &p,
        catalog: &catalog,
        drains: &drains,
    };
    RoutingTable::build(
        &view,
        &mut BTreeMap::new(),
        &BTreeMap::new(),
        &RoutingTable::default(),
        1,
        Instant::now(),
    )
}

/// One decision, as the proxy makes it: find the model's owners, key the
/// request, choose.
fn decide(t: &RoutingTable, model: &str, head: &[u8]) -> usize {
    let conversation = Conversation {
        own: hash::of_bytes(head),
        previous: Some(hash::mix(head.len() as u64)),
    };
    let keys = Keys::new(None, head, 256, Some(conversation));
    let (_, cands) = t.candidates(model, &keys, true, &|_| false);
    choose(keys.rank, head.len() >= 256, &cands, Bound::default())
        .unwrap()
        .0
}

fn bench(c: &mut Criterion) {
    let heads: Vec<String> = (0..1024)
        .map(|i| format!("[{{\"role\":\"system\",\"content\":\"tenant {i}: you are a helpful assistant for the billing team of a large company\"}}]"))
        .collect();
    let names: Vec<String> = (0..MODELS).map(|i| format!("model-{i}")).collect();
    let mut g = c.benchmark_group("routing decision (10,000 models)");
    for n in [10usize, 100, 1000] {
        let t0 = Instant::now();
        let t = table(n);
        let built = t0.elapsed();
        let mut i = 0usize;
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{n} nodes")),
            &t,
            |b, t| {
                b.iter(|| {
                    i = i.wrapping_add(7919);
                    decide(t, &names[i % MODELS], heads[i % heads.len()].as_bytes())
                })
            },
        );
        let mut samples: Vec<u64> = (0..200_000usize)
            .map(|k| {
                let j = k.wrapping_mul(7919);
                let s = Instant::now();
                std::hint::black_box(decide(
                    &t,
                    &names[j % MODELS],
                    heads[j % heads.len()].as_bytes(),
                ));
                s.elapsed().as_nanos() as u64
            })
            .collect();
        samples.sort_unstable();
        println!(
            "{n} nodes: p50 {} ns, p99 {} ns, max {} ns over {} decisions (table built in {built:?})",
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
            samples[samples.len() - 1],
            samples.len()
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
