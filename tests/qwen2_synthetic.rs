//! qwen2 on a small synthetic model (random weights, non-zero Q/K/V biases,
//! grouped-query attention), written as a Hugging Face directory: the
//! forward pass read through the HF import, and the same model saved as a
//! GGUF file, against an independent numpy (float64) implementation of
//! transformers' Qwen2 forward (rotate-half RoPE, biases, SwiGLU, tied
//! output). No Qwen2 weights can be fetched here; this checks the
//! architecture, not a checkpoint.

mod common;

use common::python;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use realizar_node::format::hf_convert::{export_hf, import_hf};
use realizar_node::format::safetensors::write_safetensors;
use realizar_node::format::{GgufFile, SafetensorsCheckpoint, StDtype};
use realizar_node::model::{self, KvType, Logits, Model, Workspace};
use realizar_node::tensor::{Simd, ThreadPool};
use realizar_node::tokenizer::Tokenizer;

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FF: usize = 96;
const LAYERS: usize = 2;
const VOCAB: usize = 96;

struct Rng(u64);
impl Rng {
    fn normal(&mut self, scale: f32) -> f32 {
        // Sum of uniforms: close enough to normal for weights.
        let mut s = 0f32;
        for _ in 0..4 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            s += (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        s * scale
    }
}

/// A Qwen2 HF directory with random weights under `dir`.
fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(0x5eed);
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<u64>, scale: f32, offset: f32| {
        let n: u64 = shape.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|_| (offset + rng.normal(scale)).to_le_bytes())
            .collect();
        tensors.push((name, StDtype::F32, shape, data));
    };
    let (h, kv, ff) = (HIDDEN as u64, (KV_HEADS * HEAD_DIM) as u64, FF as u64);
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB as u64, h],
        1.0,
        0.0,
    );
    add("model.norm.weight".into(), vec![h], 0.2, 1.0);
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        add(p("input_layernorm.weight"), vec![h], 0.2, 1.0);
        add(p("post_attention_layernorm.weight"), vec![h], 0.2, 1.0);
        add(p("self_attn.q_proj.weight"), vec![h, h], 0.3, 0.0);
        add(p("self_attn.q_proj.bias"), vec![h], 0.5, 0.0);
        add(p("self_attn.k_proj.weight"), vec![kv, h], 0.3, 0.0);
        add(p("self_attn.k_proj.bias"), vec![kv], 0.5, 0.0);
        add(p("self_attn.v_proj.weight"), vec![kv, h], 0.3, 0.0);
        add(p("self_attn.v_proj.bias"), vec![kv], 0.5, 0.0);
        add(p("self_attn.o_proj.weight"), vec![h, h], 0.3, 0.0);
        add(p("mlp.gate_proj.weight"), vec![ff, h], 0.3, 0.0);
        add(p("mlp.up_proj.weight"), vec![ff, h], 0.3, 0.0);
        add(p("mlp.down_proj.weight"), vec![h, ff], 0.3, 0.0);
    }
    std::fs::write(
        dir.join("model.safetensors"),
        write_safetensors(&tensors, &BTreeMap::new()),
    )
    .unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": HIDDEN, "intermediate_size": FF, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu",
        "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 1, "content": "t1", "special": true}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

const NUMPY_QWEN2: &str = r#"
import json, struct, sys
import numpy as np
d, ids = sys.argv[1], json.loads(sys.argv[2])
raw = open(d + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
W = {}
for k, v in hdr.items():
    if k == "__metadata__":
        continue
    a, b = v["data_offsets"]
    W[k] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(v["shape"]).astype(np.float64)
cfg = json.load(open(d + "/config.json"))
H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
hd = cfg["hidden_size"] // H
eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
def rot(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)
T = len(ids)
x = W["model.embed_tokens.weight"][ids]
inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
fr = np.arange(T)[:, None] * inv[None, :]
emb = np.concatenate([fr, fr], -1)
cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
for l in range(cfg["num_hidden_layers"]):
    p = "model.layers.%d." % l
    h = rms(x, W[p + "input_layernorm.weight"])
    q = (h @ W[p + "self_attn.q_proj.weight"].T + W[p + "self_attn.q_proj.bias"]).reshape(T, H, hd)
    k = (h @ W[p + "self_attn.k_proj.weight"].T + W[p + "self_attn.k_proj.bias"]).reshape(T, KV, hd)
    v = (h @ W[p + "self_attn.v_proj.weight"].T + W[p + "self_attn.v_proj.bias"]).reshape(T, KV, hd)
    q = q * cos + rot(q) * sin
    k = k * cos + rot(k) * sin
    out = np.zeros((T, H, hd))
    for hh in range(H):
        kk, vv = k[:, hh // (H // KV)], v[:, hh // (H // KV)]
        s = q[:, hh] @ kk.T / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        s = np.exp(s - s.max(-1, keepdims=True))
        out[:, hh] = (s / s.sum(-1, keepdims=True)) @ vv
    x = x + out.reshape(T, H * hd) @ W[p + "self_attn.o_proj.weight"].T
    h = rms(x, W[p + "post_attention_layernorm.weight"])
    g, u = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
    x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "mlp.down_proj.weight"].T
x = rms(x, W["model.norm.weight"])
print(json.dumps((x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T).tolist()))
"#;

fn all_logits(m: &dyn Model, ids: &[u32]) -> Vec<f32> {
    let pool = ThreadPool::new(2);
    let mut cache = m.new_cache_typed(ids.len() + 1, KvType::F32);
    let mut ws = Workspace::default();
    m.forward(&pool, Simd::detect(), ids, &mut cache, &mut ws, Logits::All);
    ws.logits.clone()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("realizar-qwen2-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn qwen2_matches_a_numpy_forward_from_hf_and_from_gguf() {
    let dir = temp_dir("hf");
    write_model(&dir);
    let ids: Vec<u32> = vec![3, 17, 42, 5, 88, 1, 64, 9, 30];

    let py = python();
    let out = Command::new(&py)
        .args(["-c", NUMPY_QWEN2])
        .arg(&dir)
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{py} (needs numpy; scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Vec<f64>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reference.len(), ids.len());

    // Through the HF import.
    let f = Arc::new(import_hf(&dir).unwrap());
    assert_eq!(f.metadata().architecture(), Some("qwen2"));
    Tokenizer::from_gguf(f.metadata()).unwrap();
    let m = model::load(f.clone()).unwrap();
    assert_eq!(m.architecture(), "qwen2");
    let got = all_logits(m.as_ref(), &ids);
    assert_eq!(got.len(), ids.len() * VOCAB);
    let mut worst = 0f64;
    for (t, row) in reference.iter().enumerate() {
        for (v, &want) in row.iter().enumerate() {
            let err = (got[t * VOCAB + v] as f64 - want).abs();
            worst = worst.max(err);
            assert!(
                err < 1e-3 * (1.0 + want.abs()),
                "position {t}, token {v}: {} vs {want}",
                got[t * VOCAB + v]
            );
        }
    }
    eprintln!("qwen2: max |Δ logit| against numpy {worst:.2e}");

    // The same model as a GGUF file on disk: the same logits, bit for bit.
    let gguf = dir.with_extension("gguf");
    std::fs::write(&gguf, f.bytes()).unwrap();
    let m2 = model::load(Arc::new(GgufFile::open(&gguf).unwrap())).unwrap();
    assert_eq!(all_logits(m2.as_ref(), &ids), got);

    // Export back to HF: the tensors come back unchanged (qwen2 keeps HF q/k order).
    let back = temp_dir("back");
    export_hf(&f, &back, StDtype::F32).unwrap();
    let a = SafetensorsCheckpoint::open(&dir).unwrap();
    let b = SafetensorsCheckpoint::open(&back).unwrap();
    assert_eq!(a.len(), b.len());
    for t in a.tensors() {
        let u = b
            .tensor(t.name)
            .unwrap_or_else(|| panic!("{} not exported", t.name));
        assert_eq!((t.shape, t.data), (u.shape, u.data), "{}", t.name);
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(back.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "qwen2");
    for d in [&dir, &back] {
        std::fs::remove_dir_all(d).unwrap();
    }
    std::fs::remove_file(&gguf).unwrap();
}

#[test]
fn a_qwen2_file_without_biases_is_a_named_error() {
    let dir = temp_dir("nobias");
    write_model(&dir);
    // Drop the biases from the safetensors file.
    let ck = SafetensorsCheckpoint::open(&dir).unwrap();
    let kept: Vec<_> = ck
        .tensors()
        .filter(|t| !t.name.ends_with(".bias"))
        .map(|t| {
            (
                t.name.to_owned(),
                t.dtype,
                t.shape.to_vec(),
                t.data.to_vec(),
            )
        })
        .collect();
    drop(ck);
    std::fs::write(
        dir.join("model.safetensors"),
        write_safetensors(&kept, &BTreeMap::new()),
    )
    .unwrap();
    let f = Arc::new(import_hf(&dir).unwrap());
    let e = model::load(f).err().expect("load must fail").to_string();
    assert!(e.contains("blk.0.attn_q.bias"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
