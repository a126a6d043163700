//! Diagnostic: how a model's greedy stream and first-position top-5 compare
//! with llama.cpp's goldens, on the detected SIMD level, AVX2 and the scalar
//! path, each with an f16 and an f32 KV cache (the top-5 side by side for
//! SIMD + f16). scripts/llamacpp-crosscheck.sh gives llama.cpp's own numbers.
//! `diag_streams MODEL.gguf GOLDEN.json VARIANT`
use realizar_node::format::GgufFile;
use realizar_node::model::{load, KvType, Logits, Workspace};
use realizar_node::tensor::{Simd, ThreadPool};
use realizar_node::tokenizer::Tokenizer;
use std::sync::Arc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&a[2]).unwrap()).unwrap();
    let f = Arc::new(GgufFile::open(&a[1]).unwrap());
    let tok = Tokenizer::from_gguf(f.metadata()).unwrap();
    let m = load(f).unwrap();
    let pool = ThreadPool::new(2);
    let prompts = if g["models"].is_object() && g["models"].get(&a[3]).is_some() {
        g["models"][&a[3]]["prompts"].as_object().unwrap().clone()
    } else {
        g["prompts"].as_object().unwrap().clone()
    };
    for (key, p) in &prompts {
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
        let steps = p["steps"].as_array().unwrap();
        for (name, simd) in [
            ("simd", Simd::detect()),
            ("avx2", Simd::detect().without_avx512()),
            ("scalar", Simd::SCALAR),
        ] {
            for kv in [KvType::F16, KvType::F32] {
                let mut cache = m.new_cache_typed(ids.len() + 20, kv);
                let mut ws = Workspace::default();
                m.forward(&pool, simd, &ids, &mut cache, &mut ws, Logits::Last);
                let mask = |l: &mut Vec<f32>| {
                    for (id, v) in l.iter_mut().enumerate() {
                        if tok.vocab.is_end_of_generation(id as u32) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                };
                mask(&mut ws.logits);
                let max = ws.logits.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y)) as f64;
                let lse = ws
                    .logits
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln()
                    + max;
                if name == "simd" && kv == KvType::F16 {
                    let mut idx: Vec<usize> = (0..ws.logits.len()).collect();
                    idx.sort_by(|&x, &y| ws.logits[y].total_cmp(&ws.logits[x]));
                    let ours: Vec<String> = idx[..5]
                        .iter()
                        .map(|&i| format!("{i}:{:.3}", ws.logits[i] as f64 - lse))
                        .collect();
                    let gold: Vec<String> = steps[0]["top5"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| format!("{}:{:.3}", e["id"], e["logprob"].as_f64().unwrap()))
                        .collect();
                    println!(
                        "{key} top-5 ours   {}\n{key} top-5 golden {}",
                        ours.join(" "),
                        gold.join(" ")
                    );
                }
                let mut worst: f64 = 0.0;
                for e in steps[0]["top5"].as_array().unwrap() {
                    let id = e["id"].as_u64().unwrap() as usize;
                    worst = worst
                        .max((ws.logits[id] as f64 - lse - e["logprob"].as_f64().unwrap()).abs());
                }
                let mut div = None;
                for i in 0..16 {
                    let next = realizar_node::sampling::argmax(&ws.logits);
                    if next != want[i] {
                        // The smallest llama.cpp margin up to here: the issue
                        // allows a divergence only after one below 0.01.
                        let margin = steps[..=i]
                            .iter()
                            .map(|s| s["margin"].as_f64().unwrap_or(f64::NAN))
                            .fold(f64::INFINITY, f64::min);
                        div = Some((i, margin));
                        break;
                    }
                    m.forward(&pool, simd, &[next], &mut cache, &mut ws, Logits::Last);
                    mask(&mut ws.logits);
                }
                let d = match div {
                    Some((i, mg)) => {
                        format!("diverges at {i} (smallest llama.cpp margin up to there {mg:.3})")
                    }
                    None => "16/16".into(),
                };
                println!("{key} {name:6} {kv:?}: top-5 max |dlogprob| {worst:.3}; {d}");
            }
        }
    }
}
