//! Diagnostic: top-5 raw logits at the last prompt position vs the numpy golden.
use realizar_node::format::GgufFile;
use realizar_node::model::llama::Llama;
use realizar_node::model::{Logits, Workspace};
use realizar_node::tensor::{Simd, ThreadPool};
use std::sync::Arc;

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/golden/logits_smollm2_f32_numpy.json").unwrap(),
    )
    .unwrap();
    let m = Llama::load(Arc::new(GgufFile::open(path).unwrap())).unwrap();
    let pool = ThreadPool::new(2);
    for c in g["cases"].as_array().unwrap() {
        let ids: Vec<u32> = c["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut cache = m.new_cache(64);
        let mut ws = Workspace::default();
        m.forward(
            &pool,
            Simd::detect(),
            &ids,
            &mut cache,
            &mut ws,
            Logits::Last,
        );
        for e in c["top5_next"].as_array().unwrap() {
            let id = e["id"].as_u64().unwrap() as usize;
            let want = e["logit"].as_f64().unwrap();
            println!(
                "id {id:6}: ours {:10.5} numpy {want:10.5} diff {:+.5}",
                ws.logits[id],
                ws.logits[id] as f64 - want
            );
        }
        println!();
    }
}
