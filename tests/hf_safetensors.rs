//! SmolLM2 as a Hugging Face safetensors directory, written by `realizar
//! export` from the Q4_1 file: its tensors in HF layout against the golden
//! probe (tests/golden/hf_layout_probe.json: gguf-package dequantization and
//! the inverse of llama.cpp's q/k permutation), its tokenizer.json against
//! llama.cpp's token ids, and its generation (read back through the HF
//! import, F32 and BF16) against the GGUF F32 file's. The exported
//! tokenizer.json is also loaded by Hugging Face `tokenizers` (Python, in the
//! virtualenv scripts/test.sh makes; REALIZAR_TEST_PYTHON names it).

mod common;

use common::{derived, golden, python, q4_1_path, root};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use realizar_node::format::hf_convert::open_model_file;
use realizar_node::format::{GgufFile, SafetensorsCheckpoint};
use realizar_node::model::{KvType, LoadedModel, Logits, Model, Workspace};
use realizar_node::tensor::{GgmlType, Simd, ThreadPool};
use realizar_node::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

static LOCK: OnceLock<Mutex<()>> = OnceLock::new();

/// models/derived/hf-smollm2-<type>: exported once by the CLI (into a
/// partial directory, then renamed, so a half-written one is never used).
fn exported(ty: &str) -> PathBuf {
    let _g = LOCK.get_or_init(Default::default).lock().unwrap();
    let base = root().join("models/derived");
    std::fs::create_dir_all(&base).unwrap();
    let out = base.join(format!("hf-smollm2-{}", ty.to_ascii_lowercase()));
    if !out.join("tokenizer_config.json").is_file() {
        let tmp = base.join(format!(".hf-{ty}.{}.partial", std::process::id()));
        let st = common::realizar()
            .args(["export", "--type", ty])
            .arg(q4_1_path())
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(st.success(), "realizar export --type {ty} failed");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

fn load(path: &Path) -> (Arc<dyn Model>, Tokenizer, Arc<GgufFile>) {
    let m = LoadedModel::open(path).unwrap();
    (m.model, Arc::unwrap_or_clone(m.tok), m.file)
}

#[test]
fn exported_tensors_match_the_hf_layout_probe() {
    let dir = exported("F32");
    let ck = SafetensorsCheckpoint::open(&dir).unwrap();
    let g = golden("hf_layout_probe.json");
    let probes = g["probes"].as_array().unwrap();
    assert!(!probes.is_empty());
    let (mut points, mut rows) = (0, 0);
    for p in probes {
        let name = p["tensor"].as_str().unwrap();
        let t = ck
            .tensor(name)
            .unwrap_or_else(|| panic!("{name} not exported"));
        let shape: Vec<u64> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(t.shape, &shape[..], "{name}: shape");
        let cols = shape.last().copied().unwrap_or(1) as usize;
        let at =
            |i: usize| f32::from_le_bytes(t.data[4 * i..4 * i + 4].try_into().unwrap()).to_bits();
        for pt in p["points"].as_array().unwrap() {
            let idx = pt["index"].as_array().unwrap();
            let r = idx[0].as_u64().unwrap() as usize;
            if idx.len() == 2 && idx[1].as_str() == Some("all") {
                let want: Vec<u32> = pt["f32_bits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                let got: Vec<u32> = (0..cols).map(|c| at(r * cols + c)).collect();
                assert_eq!(got, want, "{name}: row {r}");
                rows += 1;
            } else {
                let flat = if idx.len() == 2 {
                    r * cols + idx[1].as_u64().unwrap() as usize
                } else {
                    r
                };
                let want = pt["f32_bits"].as_u64().unwrap() as u32;
                assert_eq!(at(flat), want, "{name}: {idx:?}");
                points += 1;
            }
        }
    }
    eprintln!(
        "{} tensors: {points} points and {rows} whole rows bit-exact",
        probes.len()
    );
    assert!(points > 0 && rows > 0);
}

#[test]
fn tokenizer_json_gives_llama_cpps_ids() {
    let (_, tok, _) = load(&exported("F32"));
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
        assert_eq!(tok.encode(text, false, true), want, "{text:?}");
    }
}

#[test]
fn chat_template_comes_from_tokenizer_config() {
    let (_, tok_hf, f_hf) = load(&exported("F32"));
    let (_, tok_gguf, f_gguf) = load(&q4_1_path());
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi there"),
    ];
    let render = |f: &GgufFile, tok: &Tokenizer| {
        let t =
            ChatTemplate::for_model(f.metadata().get_str("tokenizer.chat_template"), tok).unwrap();
        t.render(&msgs, true).unwrap()
    };
    let hf = render(&f_hf, &tok_hf);
    assert_eq!(hf, render(&f_gguf, &tok_gguf));
    assert!(hf.contains("<|im_start|>user\nHi there<|im_end|>"), "{hf}");
}

/// Greedy ids and the logits at the last prompt position.
fn greedy(m: &dyn Model, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let pool = ThreadPool::new(2);
    let simd = Simd::detect();
    let mut cache = m.new_cache_typed(prompt.len() + n + 1, KvType::F32);
    let mut ws = Workspace::default();
    m.forward(&pool, simd, prompt, &mut cache, &mut ws, Logits::Last);
    let first = ws.logits.clone();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = realizar_node::sampling::argmax(&ws.logits);
        out.push(next);
        m.forward(&pool, simd, &[next], &mut cache, &mut ws, Logits::Last);
    }
    (out, first)
}

#[test]
fn safetensors_directories_generate_what_the_gguf_does() {
    let (gguf, _, _) = load(&derived(GgmlType::F32));
    let (f32_dir, _, _) = load(&exported("F32"));
    let (bf16_dir, _, _) = load(&exported("BF16"));
    let g = golden("generation_smollm2.json");
    let prompts = g["models"]["F32"]["prompts"].as_object().unwrap();
    assert_eq!(prompts.len(), 5);
    for (key, p) in prompts {
        let ids: Vec<u32> = p["prompt_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let (want, want_logits) = greedy(gguf.as_ref(), &ids, 16);
        // F32 safetensors: the same weights in the same order after the q/k
        // permutation is undone, so the very same logits.
        let (got, logits) = greedy(f32_dir.as_ref(), &ids, 16);
        assert_eq!(got, want, "{key}: F32 directory");
        assert_eq!(logits, want_logits, "{key}: F32 directory logits");
        // BF16: rounded weights, the same greedy tokens up to a near-tie
        // (a step where llama.cpp's F32 top two were within 0.01, the
        // goldens' rule), where a divergence is allowed and reported.
        let (got, logits) = greedy(bf16_dir.as_ref(), &ids, 16);
        let diff = logits
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{key}: BF16 directory max |Δ logit| at the last prompt position {diff:.4}");
        let steps = p["steps"].as_array().unwrap();
        for i in 0..16 {
            if got[i] != want[i] {
                let margin = steps[i]["margin"].as_f64().unwrap();
                assert!(
                    margin < 0.01,
                    "{key}: BF16 directory token {i}: {} vs {} (margin {margin})\n got {got:?}\nwant {want:?}",
                    got[i],
                    want[i]
                );
                eprintln!(
                    "{key}: BF16 directory diverges at step {i}, a near-tie (margin {margin:.4})"
                );
                break;
            }
        }
    }
}

#[test]
fn unsupported_directories_are_named_errors() {
    let dir = std::env::temp_dir().join(format!("realizar-hf-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = exported("F32");
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "gpt_neox", "hidden_size": 8}"#,
    )
    .unwrap();
    let e = open_model_file(&dir).unwrap_err().to_string();
    assert!(
        e.contains("gpt_neox") && e.contains("llama") && e.contains("qwen2"),
        "{e}"
    );
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "llama", "num_attention_heads": 9}"#,
    )
    .unwrap();
    let e = open_model_file(&dir).unwrap_err().to_string();
    assert!(e.contains("hidden_size"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The exported tokenizer.json is a real one: Hugging Face `tokenizers`
/// loads it and gives llama.cpp's ids for every golden string.
#[test]
fn hf_tokenizers_reads_the_exported_tokenizer_json() {
    let py = python();
    let probe = Command::new(&py).args(["-c", "import tokenizers"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "{py} cannot import tokenizers: run scripts/test.sh (it makes target/pyenv) or set REALIZAR_TEST_PYTHON"
    );
    let tj = exported("F32").join("tokenizer.json");
    let script = r#"
import json, sys, tokenizers
t = tokenizers.Tokenizer.from_file(sys.argv[1])
cases = json.load(open(sys.argv[2]))["cases"]
print(json.dumps([t.encode(c["text"], add_special_tokens=False).ids for c in cases]))
"#;
    let out = Command::new(&py)
        .args(["-c", script])
        .arg(&tj)
        .arg(root().join("tests/golden/tokenizer_smollm2.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let g = golden("tokenizer_smollm2.json");
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(got.len(), cases.len());
    for (c, ids) in cases.iter().zip(&got) {
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, &want, "{}", c["text"]);
    }
}
