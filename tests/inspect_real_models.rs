//! `realizar inspect --json` on the two real models (fetched by
//! scripts/fetch-models.sh, which the README's test command runs first).

use std::path::PathBuf;
mod common;

fn model(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh (the README's test command does)",
        p.display()
    );
    p
}

fn inspect_json(path: &PathBuf) -> serde_json::Value {
    let out = common::realizar()
        .args(["inspect", "--json"])
        .arg(path)
        .output()
        .expect("run realizar");
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints one JSON object")
}

#[test]
fn smollm2_q4_1() {
    let v = inspect_json(&model("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["block_count"], 30);
    assert_eq!(v["embedding_length"], 576);
    assert_eq!(v["head_count"], 9);
    assert_eq!(v["head_count_kv"], 3);
    assert_eq!(v["vocab_size"], 49152);
    assert_eq!(
        v["tensor_types"],
        serde_json::json!({"Q4_1": 210, "Q8_0": 1, "F32": 61})
    );
    assert_eq!(v["parameter_count"], 134_515_008u64);
    assert_eq!(v["tokenizer_kind"], "gpt2");
    assert_eq!(v["tokenizer_pre"], "smollm");
    assert_eq!(v["chat_template"], true);
    assert_eq!(v["special_tokens"]["bos"], 1);
    assert_eq!(v["special_tokens"]["eos"], 2);
    assert_eq!(v["file_size"], 98_362_432u64);
}

#[test]
fn gemma3_q4_k_m() {
    let v = inspect_json(&model("gemma-3-270m-q4_k_m.gguf"));
    assert_eq!(v["architecture"], "gemma3");
    assert_eq!(v["block_count"], 18);
    assert_eq!(v["embedding_length"], 640);
    assert_eq!(v["head_count"], 4);
    assert_eq!(v["head_count_kv"], 1);
    assert_eq!(v["vocab_size"], 262_144);
    assert_eq!(
        v["tensor_types"],
        serde_json::json!({"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9})
    );
    assert_eq!(v["tokenizer_kind"], "llama");
    assert_eq!(v["chat_template"], false);
}

#[test]
fn tensors_flag_lists_every_tensor_inside_the_file() {
    let path = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = common::realizar()
        .args(["inspect", "--json", "--tensors"])
        .arg(&path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 272);
    let size = v["file_size"].as_u64().unwrap();
    for t in tensors {
        assert!(t["offset"].as_u64().unwrap() + t["bytes"].as_u64().unwrap() <= size);
    }
    let emb = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(emb["type"], "Q8_0");
    assert_eq!(emb["shape"], serde_json::json!([576, 49152]));
}

#[test]
fn text_report_and_bad_input() {
    let out = common::realizar()
        .arg("inspect")
        .arg(model("gemma-3-270m-q4_k_m.gguf"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("architecture:      gemma3"), "{text}");
    assert!(text.contains("Q6_K"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(
        &bad,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    let out = common::realizar()
        .arg("inspect")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.gguf") && err.contains("tensor_count"),
        "{err}"
    );
}

#[test]
fn inspect_a_sharded_safetensors_directory() {
    use realizar_node::format::safetensors::write_safetensors;
    use realizar_node::format::StDtype;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shard = |tensors: &[(&str, StDtype, Vec<u64>)]| {
        let ts: Vec<_> = tensors
            .iter()
            .map(|(n, t, s)| {
                (
                    n.to_string(),
                    *t,
                    s.clone(),
                    vec![0u8; (s.iter().product::<u64>() * t.size()) as usize],
                )
            })
            .collect();
        write_safetensors(&ts, &Default::default())
    };
    std::fs::write(
        d.join("model-00001-of-00002.safetensors"),
        shard(&[
            ("model.embed_tokens.weight", StDtype::BF16, vec![64, 16]),
            ("model.norm.weight", StDtype::F32, vec![16]),
        ]),
    )
    .unwrap();
    std::fs::write(
        d.join("model-00002-of-00002.safetensors"),
        shard(&[("lm_head.weight", StDtype::F16, vec![64, 16])]),
    )
    .unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"model.embed_tokens.weight":"model-00001-of-00002.safetensors",
            "model.norm.weight":"model-00001-of-00002.safetensors","lm_head.weight":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type":"llama","hidden_size":16,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"vocab_size":64,"max_position_embeddings":128,"bos_token_id":1,"eos_token_id":2}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("tokenizer.json"),
        r#"{"model":{"type":"BPE","vocab":{"a":0}}}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"chat_template":"{{ messages }}"}"#,
    )
    .unwrap();
    let out = common::realizar()
        .args(["inspect", "--json"])
        .arg(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["block_count"], 2);
    assert_eq!(v["embedding_length"], 16);
    assert_eq!(v["head_count"], 4);
    assert_eq!(v["head_count_kv"], 2);
    assert_eq!(v["vocab_size"], 64);
    assert_eq!(v["parameter_count"], 64 * 16 * 2 + 16);
    assert_eq!(
        v["tensor_types"],
        serde_json::json!({"BF16": 1, "F16": 1, "F32": 1})
    );
    assert_eq!(v["tokenizer_kind"], "BPE");
    assert_eq!(v["chat_template"], true);
    assert_eq!(v["special_tokens"]["eos"], 2);
}
