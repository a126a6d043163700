//! Diagnostic: our top-5 logprobs at the first generated position vs the golden's.
use realizar_node::format::GgufFile;
use realizar_node::model::llama::Llama;
use realizar_node::model::{Logits, Model, Workspace};
use realizar_node::tensor::{Simd, ThreadPool};
use std::sync::Arc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/golden/generation_smollm2.json").unwrap(),
    )
    .unwrap();
    let p = &g["models"][a[2].as_str()]["prompts"][a[3].as_str()];
    let m = Llama::load(Arc::new(GgufFile::open(&a[1]).unwrap())).unwrap();
    let ids: Vec<u32> = p["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mut cache = m.new_cache(64);
    let mut ws = Workspace::default();
    let simd = if a.get(4).is_some_and(|s| s == "scalar") {
        Simd::SCALAR
    } else {
        Simd::detect()
    };
    m.forward(
        &ThreadPool::new(2),
        simd,
        &ids,
        &mut cache,
        &mut ws,
        Logits::Last,
    );
    let l = &ws.logits;
    let max = l.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y)) as f64;
    let lse = l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
    print!("ours  :");
    for &i in &idx[..5] {
        print!(" {i}:{:.3}", l[i] as f64 - lse);
    }
    print!("\ngolden:");
    for e in p["steps"][0]["top5"].as_array().unwrap() {
        print!(" {}:{:.3}", e["id"], e["logprob"].as_f64().unwrap());
    }
    println!();
}
