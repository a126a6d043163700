//! Between GGUF and Hugging Face safetensors directories, for the llama and
//! qwen2 families.
//!
//! - [`export_hf`] writes a GGUF model as an HF directory: `model.safetensors`
//!   (F32, F16 or BF16, HF tensor names, q/k rows in HF order), `config.json`,
//!   `tokenizer.json` (byte-level BPE) and `tokenizer_config.json` (chat
//!   template, special tokens).
//! - [`import_hf`] reads such a directory (ours or one from the Hub) into an
//!   in-memory GGUF image, so every model and tokenizer loads through the one
//!   GGUF path. The tensors keep their float type (F32/F16/BF16 kernels run
//!   on them directly); they are copied once, because llama's q/k rows must
//!   be reordered anyway.
//!
//! The q/k difference: llama.cpp's converter interleaves the two halves of
//! each head's rows (HF rotates pairs `(i, i + d/2)`, GGUF pairs
//! `(2i, 2i + 1)`), so HF row `h·d + s·d/2 + i` is GGUF row `h·d + 2i + s`.
//! Qwen2 and Gemma keep HF order (llama.cpp ropes them NEOX-style).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::error::{ErrorKind, FormatError, Result};
use super::gguf::{GgufFile, MetaArray, MetaValue, Metadata};
use super::gguf_write::{GgufWriter, TensorToWrite};
use super::hf::HfModelDir;
use super::safetensors::{write_safetensors, StDtype};
use crate::tensor::{dequantize_to_vec, GgmlType};

/// Architectures the converters handle.
pub const SUPPORTED: &[&str] = &["llama", "qwen2"];

/// Whole-model tensors: (GGUF name, HF name).
const MODEL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors: (GGUF `blk.N.` suffix, HF `model.layers.N.` suffix).
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Map a tensor name from one convention to the other through the tables
/// (`from` picks the side of each pair the name is written in).
fn map_name(name: &str, from: usize, prefixes: [&str; 2]) -> Option<String> {
    let side = |pair: &(&'static str, &'static str)| {
        if from == 0 {
            (pair.0, pair.1)
        } else {
            (pair.1, pair.0)
        }
    };
    if let Some(&pair) = MODEL_NAMES.iter().find(|p| side(p).0 == name) {
        return Some(side(&pair).1.to_owned());
    }
    let rest = name.strip_prefix(prefixes[from])?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, to) = LAYER_NAMES.iter().map(side).find(|(f, _)| *f == part)?;
    Some(format!("{}{layer}.{to}", prefixes[1 - from]))
}

const PREFIXES: [&str; 2] = ["blk.", "model.layers."];

/// HF tensor name for a GGUF one (`None`: not a model tensor we know).
fn hf_name(gguf: &str) -> Option<String> {
    map_name(gguf, 0, PREFIXES)
}

/// GGUF tensor name for an HF one (the inverse of [`hf_name`]).
fn gguf_name(hf: &str) -> Option<String> {
    map_name(hf, 1, PREFIXES)
}

/// Row permutation between HF and GGUF q/k layouts: `gguf_row(r)` is the
/// GGUF row that holds HF row `r` (rows of `n_head` heads of `head_dim`).
fn gguf_row(r: usize, head_dim: usize) -> usize {
    let (h, within) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    let (s, i) = (within / half, within % half);
    h * head_dim + 2 * i + s
}

/// Which heads a llama q/k tensor has (`None`: no permutation).
fn qk_heads(arch: &str, gguf: &str, n_head: usize, n_head_kv: usize) -> Option<usize> {
    if arch != "llama" {
        return None;
    }
    if gguf.ends_with(".attn_q.weight") || gguf.ends_with(".attn_q.bias") {
        Some(n_head)
    } else if gguf.ends_with(".attn_k.weight") || gguf.ends_with(".attn_k.bias") {
        Some(n_head_kv)
    } else {
        None
    }
}

/// Reorder whole rows of `row_bytes` bytes: output row `map(r)` = input row `r`.
fn permute_rows(data: &[u8], row_bytes: usize, map: impl Fn(usize) -> usize) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        let to = map(r);
        out[to * row_bytes..(to + 1) * row_bytes].copy_from_slice(row);
    }
    out
}

fn err(file: &Path, field: &str, kind: ErrorKind) -> FormatError {
    FormatError::new(file, field, 0, kind)
}

fn schema(file: &Path, field: &str, msg: impl Into<String>) -> FormatError {
    err(file, field, ErrorKind::Schema(msg.into()))
}

/// What [`export_hf`] wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub tensors: usize,
    pub bytes: u64,
}

fn meta_u64(md: &Metadata, file: &Path, key: &str) -> Result<u64> {
    md.get_u64(key)
        .ok_or_else(|| err(file, key, ErrorKind::Missing(format!("metadata key {key}"))))
}

/// The pre-tokenizer section of `tokenizer.json` for a GGUF `tokenizer.ggml.pre`.
fn hf_pre_tokenizer(pre: &str) -> Option<Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "gpt2" | "default" => byte_level(true),
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true)
        ]}),
        "llama3" | "llama-bpe" => json!({"type": "Sequence", "pretokenizers": [
            split(LLAMA3_REGEX),
            byte_level(false)
        ]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(QWEN2_REGEX),
            byte_level(false)
        ]}),
        _ => return None,
    })
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The GGUF `tokenizer.ggml.pre` for a `tokenizer.json` pre-tokenizer.
fn gguf_pre(pre: &Value) -> Option<&'static str> {
    let ty = pre.get("type")?.as_str()?;
    match ty {
        "ByteLevel" => pre
            .get("use_regex")
            .and_then(Value::as_bool)
            .unwrap_or(true)
            .then_some("gpt2"),
        "Sequence" => {
            let parts = pre.get("pretokenizers")?.as_array()?;
            let types: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("type").and_then(Value::as_str))
                .collect();
            match types.as_slice() {
                ["Digits", "ByteLevel"] => {
                    let individual = parts[0]
                        .get("individual_digits")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    individual.then_some("smollm")
                }
                ["ByteLevel"] => gguf_pre(&parts[0]),
                ["Split", "ByteLevel"] => {
                    let pattern = parts[0].get("pattern")?.get("Regex")?.as_str()?;
                    if pattern == LLAMA3_REGEX {
                        Some("llama3")
                    } else if pattern == QWEN2_REGEX {
                        Some("qwen2")
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Write `src` (a llama or qwen2 GGUF model with a byte-level BPE tokenizer)
/// as an HF safetensors directory in `out_dir`, tensors as `dtype`
/// (F32, F16 or BF16).
pub fn export_hf(src: &GgufFile, out_dir: &Path, dtype: StDtype) -> Result<ExportSummary> {
    let file = src.path();
    let md = src.metadata();
    let arch = md.architecture().unwrap_or("").to_owned();
    if !SUPPORTED.contains(&arch.as_str()) {
        return Err(schema(
            file,
            "general.architecture",
            format!(
                "export supports {} models, not {arch:?}",
                SUPPORTED.join(", ")
            ),
        ));
    }
    if !matches!(dtype, StDtype::F32 | StDtype::F16 | StDtype::BF16) {
        return Err(schema(
            file,
            "dtype",
            format!("export writes F32, F16 or BF16, not {}", dtype.name()),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let n_embd = meta_u64(md, file, &key("embedding_length"))? as usize;
    let n_head = meta_u64(md, file, &key("attention.head_count"))? as usize;
    let n_head_kv = md
        .get_u64(&key("attention.head_count_kv"))
        .unwrap_or(n_head as u64) as usize;
    if n_head == 0 || n_head_kv == 0 {
        return Err(schema(file, &key("attention.head_count"), "zero heads"));
    }
    let head_dim = md
        .get_u64(&key("attention.key_length"))
        .map_or(n_embd / n_head, |v| v as usize);

    let mut tensors = Vec::new();
    let mut tied = true;
    for t in src.tensors() {
        let name = hf_name(t.name).ok_or_else(|| {
            schema(
                file,
                t.name,
                "a tensor with no Hugging Face name (not a llama/qwen2 tensor)",
            )
        })?;
        if t.name == "output.weight" {
            tied = false;
        }
        let values = dequantize_to_vec(t.dtype, t.data)
            .map_err(|e| schema(file, t.name, format!("cannot dequantize: {e}")))?;
        let cols = t.dims[0] as usize;
        let values = match qk_heads(&arch, t.name, n_head, n_head_kv) {
            Some(heads) => {
                if cols == 0
                    || values.len() / cols.max(1) != heads * head_dim
                    || !head_dim.is_multiple_of(2)
                {
                    return Err(schema(
                        file,
                        t.name,
                        "q/k rows do not match the head counts",
                    ));
                }
                // HF row r = GGUF row gguf_row(r): read GGUF rows in that order.
                let rows = values.len() / cols;
                let mut out = vec![0f32; values.len()];
                for r in 0..rows {
                    let g = gguf_row(r, head_dim);
                    out[r * cols..(r + 1) * cols]
                        .copy_from_slice(&values[g * cols..(g + 1) * cols]);
                }
                out
            }
            None => values,
        };
        let bytes: Vec<u8> = match dtype {
            StDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        let shape: Vec<u64> = t.dims.iter().rev().copied().collect();
        tensors.push((name, dtype, shape, bytes));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(out_dir).map_err(|e| FormatError::io(out_dir, &e))?;
    let mut st_meta = BTreeMap::new();
    st_meta.insert("format".to_owned(), "pt".to_owned());
    let image = write_safetensors(&tensors, &st_meta);
    let bytes = image.len() as u64;
    let st_path = out_dir.join("model.safetensors");
    std::fs::write(&st_path, &image).map_err(|e| FormatError::io(&st_path, &e))?;
    drop(image);

    // config.json
    let n_vocab = md.get_u64(&key("vocab_size")).or(md
        .get_array("tokenizer.ggml.tokens")
        .map(|a| a.len() as u64));
    let (hf_arch, model_type) = match arch.as_str() {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let torch_dtype = match dtype {
        StDtype::F32 => "float32",
        StDtype::F16 => "float16",
        _ => "bfloat16",
    };
    let mut config = json!({
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": n_embd,
        "intermediate_size": md.get_u64(&key("feed_forward_length")),
        "num_hidden_layers": md.get_u64(&key("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "vocab_size": n_vocab,
        "max_position_embeddings": md.get_u64(&key("context_length")),
        "rms_norm_eps": md.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        "rope_theta": md.get_f64(&key("rope.freq_base")).unwrap_or(10000.0),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "torch_dtype": torch_dtype,
        "bos_token_id": md.get_u64("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get_u64("tokenizer.ggml.eos_token_id"),
    });
    if arch == "qwen2" {
        config["attention_bias"] = json!(true);
    }
    write_json(&out_dir.join("config.json"), &config)?;

    // tokenizer.json and tokenizer_config.json
    let (tokenizer, tokenizer_config) = hf_tokenizer(src)?;
    write_json(&out_dir.join("tokenizer.json"), &tokenizer)?;
    write_json(&out_dir.join("tokenizer_config.json"), &tokenizer_config)?;
    Ok(ExportSummary {
        tensors: tensors.len(),
        bytes,
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| schema(path, "json", format!("cannot serialise: {e}")))?;
    std::fs::write(path, text).map_err(|e| FormatError::io(path, &e))
}

fn string_array<'a>(md: &'a Metadata, file: &Path, key: &str) -> Result<&'a [String]> {
    match md.get_array(key) {
        Some(MetaArray::String(v)) => Ok(v),
        Some(_) => Err(err(
            file,
            key,
            ErrorKind::WrongValueType {
                expected: "array of strings",
                found: "another array",
            },
        )),
        None => Err(err(
            file,
            key,
            ErrorKind::Missing(format!("metadata key {key}")),
        )),
    }
}

/// `tokenizer.json` and `tokenizer_config.json` for a byte-level BPE GGUF tokenizer.
fn hf_tokenizer(src: &GgufFile) -> Result<(Value, Value)> {
    let file = src.path();
    let md = src.metadata();
    let model = md.get_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(schema(
            file,
            "tokenizer.ggml.model",
            format!("export writes byte-level BPE tokenizers (gpt2), not {model:?}"),
        ));
    }
    let pre_name = md.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let pre = hf_pre_tokenizer(pre_name).ok_or_else(|| {
        schema(
            file,
            "tokenizer.ggml.pre",
            format!("no tokenizer.json pre-tokenizer for {pre_name:?}"),
        )
    })?;
    let tokens = string_array(md, file, "tokenizer.ggml.tokens")?;
    let merges = string_array(md, file, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match md.get_array("tokenizer.ggml.token_type") {
        Some(MetaArray::I32(v)) => v.iter().map(|&t| t as i64).collect(),
        Some(MetaArray::U32(v)) => v.iter().map(|&t| t as i64).collect(),
        _ => vec![1; tokens.len()],
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": ty == 4, "special": ty == 3,
            }));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    let token_at = |key: &str| {
        md.get_u64(key)
            .and_then(|id| tokens.get(id as usize))
            .cloned()
    };
    let mut config = json!({
        "add_bos_token": md.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
        "add_eos_token": md.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        "bos_token": token_at("tokenizer.ggml.bos_token_id"),
        "eos_token": token_at("tokenizer.ggml.eos_token_id"),
        "unk_token": token_at("tokenizer.ggml.unknown_token_id"),
        "pad_token": token_at("tokenizer.ggml.padding_token_id"),
        "tokenizer_class": "GPT2Tokenizer",
    });
    if let Some(t) = md.get_str("tokenizer.chat_template") {
        config["chat_template"] = json!(t);
    }
    Ok((tokenizer, config))
}

/// Read an HF safetensors directory (llama or qwen2 family, byte-level BPE
/// `tokenizer.json`) into an in-memory GGUF image with llama.cpp's names,
/// q/k layout and tokenizer metadata.
pub fn import_hf(dir: &Path) -> Result<GgufFile> {
    let m = HfModelDir::open(dir)?;
    let cfg_path = dir.join("config.json");
    let c = &m.config;
    let model_type = c.architecture().unwrap_or("").to_owned();
    let arch = match model_type.as_str() {
        "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM" => "llama",
        "qwen2" | "Qwen2ForCausalLM" => "qwen2",
        other => {
            return Err(schema(
                &cfg_path,
                "model_type",
                format!(
                    "unsupported architecture {other:?} (supported: {})",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    };
    let need = |v: Option<u64>, field: &str| {
        v.ok_or_else(|| err(&cfg_path, field, ErrorKind::Missing(field.to_owned())))
    };
    let n_embd = need(c.hidden_size, "hidden_size")?;
    let n_head = need(c.num_attention_heads, "num_attention_heads")?;
    let n_head_kv = c.num_key_value_heads.unwrap_or(n_head);
    if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
        return Err(schema(
            &cfg_path,
            "num_key_value_heads",
            "head counts must be positive and divide each other",
        ));
    }
    let head_dim = c.head_dim.unwrap_or(n_embd / n_head);
    let mut w = GgufWriter::new();
    let k = |s: &str| format!("{arch}.{s}");
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    w.meta("general.architecture", MetaValue::String(arch.into()));
    w.meta("general.name", MetaValue::String(name));
    w.meta(
        k("block_count"),
        MetaValue::U32(need(c.num_hidden_layers, "num_hidden_layers")? as u32),
    );
    w.meta(k("embedding_length"), MetaValue::U32(n_embd as u32));
    w.meta(
        k("feed_forward_length"),
        MetaValue::U32(need(c.intermediate_size, "intermediate_size")? as u32),
    );
    w.meta(k("attention.head_count"), MetaValue::U32(n_head as u32));
    w.meta(
        k("attention.head_count_kv"),
        MetaValue::U32(n_head_kv as u32),
    );
    w.meta(k("attention.key_length"), MetaValue::U32(head_dim as u32));
    w.meta(k("attention.value_length"), MetaValue::U32(head_dim as u32));
    w.meta(k("rope.dimension_count"), MetaValue::U32(head_dim as u32));
    w.meta(
        k("context_length"),
        MetaValue::U32(c.max_position_embeddings.unwrap_or(4096) as u32),
    );
    w.meta(
        k("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(c.rms_norm_eps.unwrap_or(1e-6) as f32),
    );
    w.meta(
        k("rope.freq_base"),
        MetaValue::F32(c.rope_theta.unwrap_or(10000.0) as f32),
    );
    if let Some(v) = c.vocab_size {
        w.meta(k("vocab_size"), MetaValue::U32(v as u32));
    }

    let mut have_output = false;
    for t in m.weights.tensors() {
        let Some(gname) = gguf_name(t.name) else {
            continue; // e.g. rotary_emb.inv_freq buffers
        };
        have_output |= gname == "output.weight";
        let dtype = match t.dtype {
            StDtype::F32 => GgmlType::F32,
            StDtype::F16 => GgmlType::F16,
            StDtype::BF16 => GgmlType::BF16,
            other => {
                return Err(schema(
                    dir,
                    t.name,
                    format!("tensor type {} (F32, F16 or BF16 expected)", other.name()),
                ))
            }
        };
        let dims: Vec<u64> = t.shape.iter().rev().copied().collect();
        let cols = dims.first().copied().unwrap_or(1) as usize;
        let row_bytes = cols * t.dtype.size() as usize;
        let data = match qk_heads(arch, &gname, n_head as usize, n_head_kv as usize) {
            Some(heads) => {
                let rows = t.data.len() / row_bytes.max(1);
                if rows != heads * head_dim as usize || !head_dim.is_multiple_of(2) {
                    return Err(schema(
                        dir,
                        t.name,
                        format!("{rows} rows, expected {heads} heads × {head_dim}"),
                    ));
                }
                permute_rows(t.data, row_bytes, |r| gguf_row(r, head_dim as usize))
            }
            None => t.data.to_vec(),
        };
        w.tensor(TensorToWrite {
            name: gname,
            dims,
            dtype,
            data,
        });
    }
    if !have_output && c.tie_word_embeddings == Some(false) {
        return Err(err(
            dir,
            "lm_head.weight",
            ErrorKind::Missing("lm_head.weight (tie_word_embeddings is false)".into()),
        ));
    }
    tokenizer_meta(&m, &mut w)?;
    GgufFile::from_bytes(dir.to_path_buf(), w.to_bytes())
}

/// Tokenizer metadata (GGUF keys) from `tokenizer.json` / `tokenizer_config.json`.
fn tokenizer_meta(m: &HfModelDir, w: &mut GgufWriter) -> Result<()> {
    let path = m.dir.join("tokenizer.json");
    let t = m.tokenizer.as_ref().ok_or_else(|| {
        err(
            &path,
            "tokenizer.json",
            ErrorKind::Missing("tokenizer.json".into()),
        )
    })?;
    let model = t
        .get("model")
        .ok_or_else(|| err(&path, "model", ErrorKind::Missing("model".into())))?;
    let ty = model.get("type").and_then(Value::as_str).unwrap_or("");
    if ty != "BPE" {
        return Err(schema(
            &path,
            "model.type",
            format!("only byte-level BPE tokenizers are read, not {ty:?}"),
        ));
    }
    let pre = t.get("pre_tokenizer").and_then(gguf_pre).ok_or_else(|| {
        schema(
            &path,
            "pre_tokenizer",
            "not a byte-level pre-tokenizer this engine implements (gpt2, smollm, llama3, qwen2)",
        )
    })?;
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| schema(&path, "model.vocab", "expected an object of token → id"))?;
    let mut by_id: BTreeMap<u64, (String, i32)> = BTreeMap::new();
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            schema(
                &path,
                "model.vocab",
                format!("id of {tok:?} is not a number"),
            )
        })?;
        by_id.insert(id, (tok.clone(), 1));
    }
    if let Some(added) = t.get("added_tokens").and_then(Value::as_array) {
        for a in added {
            let (Some(id), Some(content)) = (
                a.get("id").and_then(Value::as_u64),
                a.get("content").and_then(Value::as_str),
            ) else {
                return Err(schema(&path, "added_tokens", "entries need id and content"));
            };
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            by_id.insert(id, (content.to_owned(), if special { 3 } else { 4 }));
        }
    }
    let n = by_id.keys().next_back().map_or(0, |&k| k + 1);
    let n = n.max(m.config.vocab_size.unwrap_or(0));
    let mut tokens = Vec::with_capacity(n as usize);
    let mut types = Vec::with_capacity(n as usize);
    for id in 0..n {
        match by_id.get(&id) {
            Some((tok, ty)) => {
                tokens.push(tok.clone());
                types.push(*ty);
            }
            None => {
                // Embedding rows past the tokenizer (padding): never produced.
                tokens.push(format!("[PAD{id}]"));
                types.push(5); // unused
            }
        }
    }
    let merges: Vec<String> = match model.get("merges").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .map(|e| match e {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) if pair.len() == 2 => match (&pair[0], &pair[1]) {
                    (Value::String(a), Value::String(b)) => Ok(format!("{a} {b}")),
                    _ => Err(schema(
                        &path,
                        "model.merges",
                        "a merge pair must hold two strings",
                    )),
                },
                _ => Err(schema(
                    &path,
                    "model.merges",
                    "a merge must be a string or a pair",
                )),
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let id_of = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
    let tc = m.tokenizer_config.clone().unwrap_or_default();
    let as_id = |v: &Option<Value>| match v {
        Some(Value::Number(n)) => n.as_u64().map(|v| v as u32),
        Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|v| v as u32),
        _ => None,
    };
    let bos = tc
        .bos_token
        .as_deref()
        .and_then(id_of)
        .or(as_id(&m.config.bos_token_id));
    let eos = tc
        .eos_token
        .as_deref()
        .and_then(id_of)
        .or(as_id(&m.config.eos_token_id));
    w.meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    w.meta("tokenizer.ggml.pre", MetaValue::String(pre.into()));
    w.meta(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(tokens)),
    );
    w.meta(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::I32(types)),
    );
    w.meta(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::String(merges)),
    );
    if let Some(b) = bos {
        w.meta("tokenizer.ggml.bos_token_id", MetaValue::U32(b));
    }
    if let Some(e) = eos {
        w.meta("tokenizer.ggml.eos_token_id", MetaValue::U32(e));
    }
    w.meta(
        "tokenizer.ggml.add_bos_token",
        MetaValue::Bool(tc.add_bos_token.unwrap_or(false)),
    );
    w.meta(
        "tokenizer.ggml.add_eos_token",
        MetaValue::Bool(tc.add_eos_token.unwrap_or(false)),
    );
    if let Some(t) = tc.chat_template {
        w.meta("tokenizer.chat_template", MetaValue::String(t));
    }
    Ok(())
}

/// Open a model for the engine: a GGUF file (mapped), or an HF safetensors
/// directory (converted in memory by [`import_hf`]).
pub fn open_model_file(path: &Path) -> Result<GgufFile> {
    if path.is_dir() {
        import_hf(path)
    } else {
        GgufFile::open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_row_permutation_is_llama_cpps_and_invertible() {
        // llama.cpp: reshape(n_head, 2, d/2, ...).swapaxes(1, 2): GGUF row
        // h·d + 2i + s comes from HF row h·d + s·d/2 + i.
        let d = 8;
        let mut seen = vec![false; 3 * d];
        for h in 0..3 {
            for s in 0..2 {
                for i in 0..d / 2 {
                    let hf = h * d + s * d / 2 + i;
                    let g = gguf_row(hf, d);
                    assert_eq!(g, h * d + 2 * i + s);
                    assert!(!seen[g]);
                    seen[g] = true;
                }
            }
        }
        assert!(seen.iter().all(|&b| b));
    }

    #[test]
    fn names_map_both_ways() {
        for g in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.0.attn_q.weight",
            "blk.29.ffn_down.weight",
            "blk.3.attn_k.bias",
        ] {
            let h = hf_name(g).unwrap();
            assert_eq!(gguf_name(&h).as_deref(), Some(g), "{h}");
        }
        assert_eq!(hf_name("blk.0.attn_q_norm.weight"), None);
    }

    #[test]
    fn pre_tokenizers_round_trip() {
        for p in ["gpt2", "smollm", "llama3", "qwen2"] {
            let v = hf_pre_tokenizer(p).unwrap();
            assert_eq!(gguf_pre(&v), Some(p));
        }
        assert_eq!(gguf_pre(&json!({"type": "Whitespace"})), None);
    }
}
