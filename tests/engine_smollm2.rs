//! SmolLM2 against llama.cpp: tokenizer ids (tests/golden/tokenizer_smollm2.json)
//! greedy generation with top-5 logprobs (tests/golden/generation_smollm2.json)
//! on the F32 file our own convert tool makes from the Q4_1 file, and the
//! last-position logits of that F32 file against an independent numpy
//! forward (tests/golden/logits_smollm2_f32_numpy.json).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::generation::{check, check_every_step, Bar, QUANTIZED};
use common::{derived, golden, q4_1_path};
use realizar_node::format::GgufFile;
use realizar_node::model::ggml_avx2::LlamaGgmlAvx2;
use realizar_node::model::llama::Llama;
use realizar_node::model::{KvType, Logits, Model, Workspace};
use realizar_node::tensor::{GgmlType, Simd, ThreadPool};
use realizar_node::tokenizer::Tokenizer;

fn load(path: &Path) -> (Llama, Tokenizer) {
    let f = Arc::new(GgufFile::open(path).unwrap());
    let tok = Tokenizer::from_gguf(f.metadata()).unwrap();
    (Llama::load(f).unwrap(), tok)
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let (_, tok) = load(&q4_1_path());
    let g = golden("tokenizer_smollm2.json");
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false, true), want, "text {text:?}");
        // And decoding gives the text back.
        assert_eq!(tok.decode(&want, true), text);
    }
}

/// llama.cpp's F32 generation: the bar (same 16 tokens unless
/// llama.cpp's top two came within 0.01; the first position's top-5 in the
/// same order, logprobs within 0.02).
fn check_generation(variant: &str, path: &Path, logprob_tol: f64, kv: KvType) {
    let (model, tok) = load(path);
    let g = golden("generation_smollm2.json");
    let bar = Bar {
        logprob: logprob_tol,
        margin: 0.01,
        same_ranks: true,
        kv,
    };
    check(
        variant,
        &model,
        &tok,
        g["models"][variant]["prompts"].as_object().unwrap(),
        &bar,
    );
}

#[test]
fn f32_generation_matches_llama_cpp() {
    check_generation("F32", &derived(GgmlType::F32), 0.02, KvType::F32);
}

/// The quantized files against llama.cpp, at twice the spread between two
/// builds of llama.cpp itself (see `QUANTIZED`), not at the 0.02/0.05.
fn check_quantized(variant: &str, path: &Path) {
    let (model, tok) = load(path);
    let g = golden("generation_smollm2.json");
    let prompts = g["models"][variant]["prompts"].as_object().unwrap();
    check(variant, &model, &tok, prompts, &QUANTIZED);
}

#[test]
fn q8_0_generation_follows_llama_cpp_within_its_cross_build_spread() {
    check_quantized("Q8_0", &derived(GgmlType::Q8_0));
}

#[test]
fn q4_1_generation_follows_llama_cpp_within_its_cross_build_spread() {
    check_quantized("Q4_1", &q4_1_path());
}

/// The bar for the quantized files, and more: in the ggml-avx2
/// numerics mode (arithmetic of llama.cpp's AVX2 build, the build that made
/// the goldens) every one of the 32 steps of every prompt gives llama.cpp's
/// token and top-5, logprobs within 1e-3 (llama-server's softmax is f32).
fn check_ggml_avx2(variant: &str, path: &Path) {
    let (model, tok) = load(path);
    let model = LlamaGgmlAvx2::new(model).unwrap();
    let g = golden("generation_smollm2.json");
    let prompts = g["models"][variant]["prompts"].as_object().unwrap();
    check_every_step(variant, &model, &tok, prompts, 1e-3, None);
}

#[test]
fn q8_0_generation_matches_llama_cpp_in_ggml_avx2_numerics() {
    check_ggml_avx2("Q8_0", &derived(GgmlType::Q8_0));
}

#[test]
fn q4_1_generation_matches_llama_cpp_in_ggml_avx2_numerics() {
    check_ggml_avx2("Q4_1", &q4_1_path());
}

/// The goldens were made with llama.cpp's f16 KV cache: ours must meet the same bar.
#[test]
fn f32_generation_with_an_f16_kv_cache_matches_llama_cpp() {
    check_generation("F32", &derived(GgmlType::F32), 0.02, KvType::F16);
}

#[test]
fn f32_logits_match_the_numpy_reference() {
    let (model, tok) = load(&derived(GgmlType::F32));
    let g = golden("logits_smollm2_f32_numpy.json");
    let pool = ThreadPool::new(2);
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for c in cases {
        let ids: Vec<u32> = c["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(c["prompt"].as_str().unwrap(), false, false), ids);
        let mut cache = model.new_cache(64);
        let mut ws = Workspace::default();
        model.forward(
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
            let diff = (ws.logits[id] as f64 - want).abs();
            assert!(
                diff <= 1e-3,
                "{:?}: logit of {id}: {} vs numpy {want} (diff {diff})",
                c["prompt"],
                ws.logits[id]
            );
        }
        // And the 16 greedy tokens (numpy takes plain argmax, no EOS masking).
        let want: Vec<u32> = c["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next = realizar_node::sampling::argmax(&ws.logits);
            got.push(next);
            model.forward(
                &pool,
                Simd::detect(),
                &[next],
                &mut cache,
                &mut ws,
                Logits::Last,
            );
        }
        assert_eq!(got, want, "{:?}", c["prompt"]);
    }
}

/// Perplexity of /usr/share/common-licenses/GPL-3 at ctx 512 within 1% of
/// llama-perplexity's figures (tests/golden/perplexity.json).
fn check_perplexity(file_name: &str, path: &Path) {
    let g = golden("perplexity.json");
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == file_name)
        .unwrap()
        .clone();
    let want = case["ppl"].as_f64().unwrap();
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("GPL-3 text (Debian base-files)");
    let (model, tok) = load(path);
    let pool = ThreadPool::new(2);
    let p = realizar_node::eval::perplexity(
        &model,
        &tok,
        &pool,
        Simd::detect(),
        &text,
        512,
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(p.chunks, 14, "llama-perplexity scored 14 chunks");
    let rel = (p.ppl - want).abs() / want;
    eprintln!(
        "{file_name}: ppl {:.4} vs llama.cpp {want} ({:+.3}%)",
        p.ppl,
        100.0 * (p.ppl - want) / want
    );
    assert!(
        rel <= 0.01,
        "{file_name}: ppl {} vs {want} ({:.2}% off)",
        p.ppl,
        rel * 100.0
    );
}

#[test]
fn perplexity_q4_1() {
    check_perplexity("SmolLM2-135M-Instruct.Q4_1.gguf", &q4_1_path());
}

#[test]
fn perplexity_q8_0() {
    check_perplexity("SmolLM2-135M-Instruct.Q8_0.gguf", &derived(GgmlType::Q8_0));
}

#[test]
fn perplexity_f32() {
    check_perplexity("SmolLM2-135M-Instruct.F32.gguf", &derived(GgmlType::F32));
}

#[test]
fn the_files_chat_template_renders_chatml() {
    use realizar_node::tokenizer::ChatMessage;
    let m = realizar_node::model::LoadedModel::open(&q4_1_path()).unwrap();
    let (t, tok) = (m.chat_template().unwrap(), m.tok);
    assert_eq!(t.builtin, None);
    let text = t
        .render(&[ChatMessage::new("user", "What is 2+2?")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text, false, true);
    assert_eq!(
        ids.iter()
            .filter(|&&i| tok.vocab.tokens[i as usize] == "<|im_start|>")
            .count(),
        3
    );
    // With an explicit system message the default one is not added.
    let text = t
        .render(
            &[
                ChatMessage::new("system", "S"),
                ChatMessage::new("user", "U"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    );
}

/// Three sequences run together through the paged pool (blocks of 16,
/// interleaved table entries, prompts prefilled in chunks of 7 while the
/// others decode) give the same logits as each run alone in its own cache.
#[test]
fn batched_paged_forward_equals_one_sequence_at_a_time() {
    let (m, tok) = load(&q4_1_path());
    check_batched(&m, &tok, 1e-4);
}

/// The same with the weights repacked as `model::load` does on AVX-512
/// VNNI CPUs (the packed products and the row-parallel attention serve
/// every batch, so here too a sequence's logits do not depend on its
/// companions or its chunks).
#[test]
fn packed_batched_paged_forward_equals_one_sequence_at_a_time() {
    let (m, tok) = load(&q4_1_path());
    check_batched(&m.packed(), &tok, 1e-4);
}

/// The same in ggml-avx2 numerics: Q4_1 and Q8_0 rows are summed the same
/// way whatever the batch, so batched steps (prefill chunks with no logits,
/// several sequences, interleaved block tables) give one-at-a-time's logits
/// exactly.
#[test]
fn ggml_avx2_batched_steps_equal_one_sequence_at_a_time() {
    let (m, tok) = load(&q4_1_path());
    let m = LlamaGgmlAvx2::new(m).unwrap();
    check_batched(&m, &tok, 0.0);
}

/// Three prompts run alone and as batched steps over one paged pool: every
/// step's logits within `tol`.
fn check_batched(m: &dyn Model, tok: &Tokenizer, tol: f32) {
    use realizar_node::model::SeqStep;
    let pool = ThreadPool::new(2);
    let simd = Simd::detect();
    let prompts = [
        "The quick brown fox jumps over the lazy dog because",
        "Paris is the capital of",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,",
    ];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, true, true)).collect();
    let n_gen = 12;
    // Reference: each alone, greedy, keeping every step's logits.
    let mut reference = Vec::new();
    for p in &ids {
        let mut cache = m.new_cache_typed(p.len() + n_gen, KvType::F16);
        let mut ws = Workspace::default();
        m.forward(&pool, simd, p, &mut cache, &mut ws, Logits::Last);
        let mut steps = vec![ws.logits.clone()];
        for _ in 1..n_gen {
            let next = realizar_node::sampling::argmax(&ws.logits);
            m.forward(&pool, simd, &[next], &mut cache, &mut ws, Logits::Last);
            steps.push(ws.logits.clone());
        }
        reference.push(steps);
    }
    // Batched: block tables interleave, so a sequence's positions are spread
    // over the pool.
    let bs = 16;
    let mut kv = m.new_pool(bs, 24, KvType::F16);
    let tables: Vec<Vec<u32>> = (0..3u32)
        .map(|s| (0..8).map(|j| j * 3 + s).collect())
        .collect();
    let mut toks = ids.clone();
    let mut done = [0usize; 3]; // positions computed
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    let mut ws = Workspace::default();
    let n_vocab = m.n_vocab();
    while got.iter().any(|g| g.len() < n_gen) {
        let mut plan = Vec::new();
        for s in 0..3 {
            if got[s].len() < n_gen {
                let n = (toks[s].len() - done[s]).min(7);
                plan.push((s, n));
            }
        }
        let steps: Vec<SeqStep> = plan
            .iter()
            .map(|&(s, n)| SeqStep {
                tokens: &toks[s][done[s]..done[s] + n],
                pos0: done[s],
                table: &tables[s],
                logits: if done[s] + n == toks[s].len() {
                    Logits::Last
                } else {
                    Logits::None
                },
            })
            .collect();
        m.forward_batch(&pool, simd, &steps, &mut kv, &mut ws);
        let mut row = 0;
        for &(s, n) in &plan {
            done[s] += n;
            if done[s] == toks[s].len() {
                let l = ws.logits[row * n_vocab..(row + 1) * n_vocab].to_vec();
                row += 1;
                toks[s].push(realizar_node::sampling::argmax(&l));
                got[s].push(l);
            }
        }
    }
    for s in 0..3 {
        for (k, (a, b)) in got[s].iter().zip(&reference[s]).enumerate() {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= tol,
                "sequence {s} step {k}: logits differ by {worst}"
            );
        }
    }
}

/// Weights the ggml-avx2 numerics do not follow are refused with an error
/// naming the file and the tensor, not run approximately.
#[test]
fn ggml_avx2_numerics_refuse_an_f32_model_by_name() {
    use realizar_node::model::{load_with, Numerics};
    let f = Arc::new(GgufFile::open(derived(GgmlType::F32)).unwrap());
    let e = load_with(f, Numerics::GgmlAvx2).err().unwrap().to_string();
    assert!(
        e.contains("SmolLM2-135M-Instruct.F32.gguf")
            && e.contains("ggml-avx2")
            && e.contains("token_embd.weight: type F32"),
        "{e}"
    );
}

/// `perplexity --kl-divergence-base`: a model against itself diverges by
/// nothing and always agrees; Q8_0 against the F32 file it was made from
/// diverges a little, mostly agrees, and each side's perplexity is what
/// `perplexity` gives for that file alone; a base of another vocabulary
/// is refused.
#[test]
fn kl_divergence_against_the_base_model() {
    use realizar_node::eval::{kl_divergence, perplexity, PerplexityError};
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("GPL-3 text (Debian base-files)");
    let text: String = text.chars().take(6000).collect();
    let (q8, tok) = load(&derived(GgmlType::Q8_0));
    let (f32m, _) = load(&derived(GgmlType::F32));
    let pool = ThreadPool::new(2);
    let simd = Simd::detect();
    let ctx = 128;
    let same = kl_divergence(&q8, &q8, &tok, &pool, simd, &text, ctx, |_, _, _| {}).unwrap();
    assert!(same.scored_tokens > 300, "{same:?}");
    assert_eq!((same.mean, same.max, same.top1_agreement), (0.0, 0.0, 1.0));
    assert_eq!(same.ppl, same.base_ppl);
    let k = kl_divergence(&q8, &f32m, &tok, &pool, simd, &text, ctx, |_, _, _| {}).unwrap();
    eprintln!("Q8_0 vs F32 (ctx {ctx}): {k:?}");
    assert_eq!(k.scored_tokens, same.scored_tokens);
    assert!(k.mean > 0.0 && k.mean < 0.05, "{k:?}");
    assert!(k.median <= k.p99 && k.p99 <= k.max, "{k:?}");
    assert!(k.top1_agreement > 0.85 && k.top1_agreement < 1.0, "{k:?}");
    let alone = |m: &dyn Model| {
        perplexity(m, &tok, &pool, simd, &text, ctx, |_, _, _| {})
            .unwrap()
            .ppl
    };
    assert!((k.ppl - alone(&q8)).abs() < 1e-9 * k.ppl, "{k:?}");
    assert!((k.base_ppl - alone(&f32m)).abs() < 1e-9 * k.ppl, "{k:?}");
    let gemma = common::root().join("models/gemma-3-270m-q4_k_m.gguf");
    let gf = Arc::new(GgufFile::open(&gemma).unwrap());
    let g = realizar_node::model::load(gf).unwrap();
    let e =
        kl_divergence(&q8, g.as_ref(), &tok, &pool, simd, &text, ctx, |_, _, _| {}).unwrap_err();
    assert!(matches!(e, PerplexityError::VocabMismatch { .. }), "{e}");
}

/// A base file as llama-perplexity saves one (tools/perplexity: `_logits_`,
/// n_ctx, n_vocab, n_chunk, the tokens, then per scored position an f32
/// scale and minimum and one u16 per token over [max − 16, max]), written
/// from `base`'s logits over `chunks`.
fn write_llama_base(path: &Path, base: &dyn Model, chunks: &[Vec<u32>], bos: Option<u32>) {
    let (n_ctx, n_vocab) = (chunks[0].len(), base.n_vocab());
    let mut b = b"_logits_".to_vec();
    b.extend((n_ctx as u32).to_le_bytes());
    b.extend((n_vocab as i32).to_le_bytes());
    b.extend((chunks.len() as i32).to_le_bytes());
    for c in chunks {
        for &t in c {
            b.extend((t as i32).to_le_bytes());
        }
    }
    let pool = ThreadPool::new(2);
    let (mut cache, mut ws) = (base.new_cache(n_ctx), Workspace::default());
    for c in chunks {
        let mut c = c.clone();
        if let Some(t) = bos {
            c[0] = t;
        }
        cache.clear();
        base.forward(&pool, Simd::detect(), &c, &mut cache, &mut ws, Logits::All);
        for j in n_ctx / 2..n_ctx - 1 {
            let l = &ws.logits[j * n_vocab..(j + 1) * n_vocab];
            let max = l.iter().fold(f32::MIN, |m, &x| m.max(x));
            let min = l.iter().fold(f32::MAX, |m, &x| m.min(x)).max(max - 16.0);
            let sum: f64 = l.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let scale = (max - min) / 65535.0;
            b.extend(scale.to_le_bytes());
            b.extend((min - max - sum.ln() as f32).to_le_bytes());
            for &x in l {
                let v = if x > min {
                    ((x - min) / scale).round() as u16
                } else {
                    0
                };
                b.extend(v.to_le_bytes());
            }
            if n_vocab % 2 == 1 {
                b.extend(0u16.to_le_bytes());
            }
        }
    }
    std::fs::write(path, b).unwrap();
}

/// `perplexity --kl-divergence-base FILE.kld`: against a base saved the
/// way llama-perplexity saves one, the figures agree with the same
/// comparison run against the base model itself, up to the file's 16-bit
/// log-probs; a model against its own saved base agrees everywhere; a
/// truncated file is refused, naming it.
#[test]
fn kl_divergence_against_a_llama_perplexity_base_file() {
    use realizar_node::eval::kld::KldBase;
    use realizar_node::eval::{kl_divergence, kl_divergence_from_file};
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .expect("GPL-3 text (Debian base-files)");
    let text: String = text.chars().take(3000).collect();
    let (q8, tok) = load(&derived(GgmlType::Q8_0));
    let (f32m, _) = load(&derived(GgmlType::F32));
    let (pool, simd, ctx) = (ThreadPool::new(2), Simd::detect(), 128);
    let tokens = tok.encode(&text, true, false);
    let chunks: Vec<Vec<u32>> = tokens.chunks_exact(ctx).map(<[u32]>::to_vec).collect();
    let bos = if tok.vocab.add_bos {
        tok.vocab.bos
    } else {
        None
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f32.kld");
    write_llama_base(&file, &f32m, &chunks, bos);
    let direct = kl_divergence(&q8, &f32m, &tok, &pool, simd, &text, ctx, |_, _, _| {}).unwrap();
    let mut base = KldBase::open(&file).unwrap();
    let k = kl_divergence_from_file(&q8, &mut base, bos, &pool, simd, |_, _, _| {}).unwrap();
    eprintln!("against the model: {direct:?}\nagainst its saved base: {k:?}");
    assert_eq!(k.scored_tokens, direct.scored_tokens);
    assert_eq!(k.ppl, direct.ppl);
    assert!((k.base_ppl / direct.base_ppl - 1.0).abs() < 1e-4, "{k:?}");
    assert!((k.mean / direct.mean - 1.0).abs() < 0.01, "{k:?}");
    let n = k.scored_tokens as f64;
    assert!(
        (k.top1_agreement - direct.top1_agreement).abs() * n <= 2.0,
        "{k:?}"
    );
    let mut own = KldBase::open(&file).unwrap();
    let same = kl_divergence_from_file(&f32m, &mut own, bos, &pool, simd, |_, _, _| {}).unwrap();
    assert!(same.mean < 1e-6 && same.top1_agreement == 1.0, "{same:?}");
    // Cut inside its last position.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let mut cut = KldBase::open(&file).unwrap();
    let e = kl_divergence_from_file(&q8, &mut cut, bos, &pool, simd, |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("f32.kld"), "{e}");
}
