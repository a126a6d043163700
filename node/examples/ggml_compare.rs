//! Diagnostic: run realizar's ggml-AVX2 numerics mode on a prompt and compare
//! every intermediate tensor with llama.cpp's, as dumped by
//! scripts/ggml_dump.cpp (`DIR/STEP_NAME.bin`: six i32 header words, then the
//! tensor). Prints, per step, the first tensor that differs and how much.
//! `ggml_compare MODEL.gguf DIR ID,ID,... NGEN`
use realizar_node::format::GgufFile;
use realizar_node::model::gemma3::Gemma3;
use realizar_node::model::ggml_avx2::{Gemma3GgmlAvx2, GgmlTraced, LlamaGgmlAvx2};
use realizar_node::model::llama::Llama;
use realizar_node::model::{KvCache, KvType, Logits, Workspace};
use realizar_node::sampling::argmax;
use realizar_node::tensor::ThreadPool;
use std::sync::Arc;

fn read(path: &str) -> Option<(Vec<i32>, Vec<f32>)> {
    let b = std::fs::read(path).ok()?;
    let hdr: Vec<i32> = b[..24]
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if hdr[0] != 0 {
        return None; // not f32
    }
    let v = b[24..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Some((hdr, v))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let f = Arc::new(GgufFile::open(&a[1]).unwrap());
    let m: Box<dyn GgmlTraced> = if f.metadata().architecture() == Some("gemma3") {
        Box::new(Gemma3GgmlAvx2::new(Gemma3::load(f).unwrap()).unwrap())
    } else {
        Box::new(LlamaGgmlAvx2::new(Llama::load(f).unwrap()).unwrap())
    };
    let dir = &a[2];
    let toks: Vec<u32> = a[3].split(',').map(|s| s.parse().unwrap()).collect();
    let ngen: usize = a[4].parse().unwrap();
    let pool = ThreadPool::new(2);
    let mut cache: KvCache = m.new_cache_typed(toks.len() + ngen + 1, KvType::F16);
    let mut toks = toks;
    let mut ws = Workspace::default();
    // SPLIT=N: the last N prompt tokens as a batch of their own (llama-server
    // does this for sliding-window models); the first part is step -1.
    let split: usize = std::env::var("SPLIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut steps: Vec<(i32, Vec<u32>)> = Vec::new();
    if split > 0 && toks.len() > split {
        let rest = toks.split_off(toks.len() - split);
        steps.push((-1, std::mem::replace(&mut toks, rest)));
    }
    let first_step = if steps.is_empty() { 0 } else { -1 };
    for step in first_step..=ngen as i32 {
        if step == -1 {
            let (_, part) = &steps[0];
            m.forward_cache_traced(
                &pool,
                part,
                &mut cache,
                &mut ws,
                Logits::None,
                &mut |_, _| {},
            );
            continue;
        }
        let mut reported = false;
        let mut n_cmp = 0;
        let mut trace = |name: &str, got: &[f32]| {
            let Some((_, want)) = read(&format!("{dir}/{step}_{name}.bin")) else {
                return;
            };
            // The last layer keeps only the output rows: compare the tail.
            let got = &got[got.len().saturating_sub(want.len())..];
            n_cmp += 1;
            let diff = got
                .iter()
                .zip(&want)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            if diff > 0 && !reported {
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                let i = got
                    .iter()
                    .zip(&want)
                    .position(|(x, y)| x.to_bits() != y.to_bits())
                    .unwrap();
                println!(
                    "step {step}: first differing tensor {name}: {diff}/{} elements differ, max |diff| {worst:e}; first at {i}: {} vs {}",
                    want.len(), got[i], want[i]
                );
                reported = true;
            }
        };
        m.forward_cache_traced(&pool, &toks, &mut cache, &mut ws, Logits::Last, &mut trace);
        if !reported {
            println!("step {step}: all {n_cmp} compared tensors bit-identical");
        }
        let next = argmax(&ws.logits);
        println!("step {step}: next token {next}");
        toks = vec![next];
    }
}
