//! Diagnostic: per-step logprob differences against the llama.cpp golden.
use realizar_node::format::GgufFile;
use realizar_node::model::llama::Llama;
use realizar_node::model::{Logits, Workspace};
use realizar_node::tensor::{Simd, ThreadPool};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, variant, key) = (&args[1], &args[2], &args[3]);
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/golden/generation_smollm2.json").unwrap(),
    )
    .unwrap();
    let p = &g["models"][variant.as_str()]["prompts"][key.as_str()];
    let f = Arc::new(GgufFile::open(path).unwrap());
    let m = Llama::load(f).unwrap();
    let pool = ThreadPool::new(2);
    let ids: Vec<u32> = p["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<u32> = p["generated_token_ids"]
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
    for (step, s) in p["steps"].as_array().unwrap().iter().enumerate().take(20) {
        let l = &ws.logits;
        let max = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        let mut worst = 0f64;
        for e in s["top5"].as_array().unwrap() {
            let id = e["id"].as_u64().unwrap() as usize;
            worst = worst.max((l[id] as f64 - lse - e["logprob"].as_f64().unwrap()).abs());
        }
        println!(
            "step {step:2}: max |Δlogprob| over golden top5 = {worst:.4}  margin {:.4}",
            s["margin"].as_f64().unwrap()
        );
        m.forward(
            &pool,
            Simd::detect(),
            &[want[step]],
            &mut cache,
            &mut ws,
            Logits::Last,
        );
    }
}
