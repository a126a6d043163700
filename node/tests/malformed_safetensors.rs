//! Malformed safetensors files, shard indexes and HF side files: each
//! rejected with the expected typed error, never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use realizar_node::format::safetensors::{parse_header, write_safetensors};
use realizar_node::format::{
    ErrorKind, FormatError, HfConfig, HfModelDir, SafetensorsCheckpoint, SafetensorsFile, StDtype,
};

/// An image from a raw JSON header and a data section.
fn image(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn parse(bytes: &[u8]) -> Result<(), FormatError> {
    parse_header(Path::new("m.safetensors"), bytes).map(|_| ())
}

#[track_caller]
fn rejects(bytes: &[u8], field_part: &str, want: impl Fn(&ErrorKind) -> bool) -> FormatError {
    let e = parse(bytes).expect_err("malformed file accepted");
    assert!(want(&e.kind), "unexpected error kind: {e}");
    assert!(
        e.field.contains(field_part),
        "field {:?} does not name {field_part:?}: {e}",
        e.field
    );
    assert!(
        e.to_string().contains("m.safetensors"),
        "error does not name the file: {e}"
    );
    e
}

const ONE: &str = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

#[test]
fn valid_file_parses_and_views_are_zero_copy() {
    let bytes = image(ONE, &[0, 0, 128, 63, 0, 0, 0, 64]);
    let f = SafetensorsFile::from_bytes("m.safetensors", bytes).unwrap();
    let w = f.tensor("w").unwrap();
    assert_eq!(w.dtype, StDtype::F32);
    assert_eq!(w.shape, &[2]);
    assert_eq!(w.data, &[0, 0, 128, 63, 0, 0, 0, 64]);
}

#[test]
fn shorter_than_the_length_prefix() {
    rejects(&[1, 2, 3], "header_length", |k| {
        matches!(
            k,
            ErrorKind::Truncated {
                needed: 8,
                available: 3
            }
        )
    });
}

#[test]
fn header_length_beyond_file() {
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    rejects(&b, "header_length", |k| {
        matches!(
            k,
            ErrorKind::LengthBeyondFile {
                length: 1000,
                remaining: 2
            }
        )
    });
}

#[test]
fn header_length_over_limit() {
    let b = (u64::MAX - 3).to_le_bytes().to_vec();
    rejects(&b, "header_length", |k| {
        matches!(k, ErrorKind::HeaderTooLarge { .. })
    });
}

#[test]
fn header_not_json() {
    rejects(&image("{not json", &[]), "header", |k| {
        matches!(k, ErrorKind::InvalidJson(_))
    });
}

#[test]
fn header_is_a_json_array() {
    rejects(&image("[1,2]", &[]), "header", |k| {
        matches!(k, ErrorKind::InvalidJson(_))
    });
}

#[test]
fn header_invalid_utf8() {
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    rejects(&b, "header", |k| matches!(k, ErrorKind::InvalidUtf8));
}

#[test]
fn unknown_dtype() {
    let h = r#"{"w":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}}"#;
    rejects(
        &image(h, &[0; 8]),
        "w.dtype",
        |k| matches!(k, ErrorKind::UnknownDtype(d) if d == "F12"),
    );
}

#[test]
fn missing_shape() {
    let h = r#"{"w":{"dtype":"F32","data_offsets":[0,8]}}"#;
    rejects(&image(h, &[0; 8]), "w.shape", |k| {
        matches!(k, ErrorKind::Missing(_))
    });
}

#[test]
fn negative_dimension() {
    let h = r#"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#;
    rejects(&image(h, &[0; 8]), "w.shape", |k| {
        matches!(k, ErrorKind::Schema(_))
    });
}

#[test]
fn offsets_not_a_pair() {
    let h = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#;
    rejects(&image(h, &[0; 8]), "w.data_offsets", |k| {
        matches!(k, ErrorKind::Missing(_))
    });
}

#[test]
fn offsets_past_the_data() {
    let h = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    rejects(&image(h, &[0; 4]), "w.data_offsets", |k| {
        matches!(
            k,
            ErrorKind::OutOfBounds {
                end: 8,
                limit: 4,
                ..
            }
        )
    });
}

#[test]
fn begin_after_end() {
    let h = r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#;
    rejects(&image(h, &[0; 8]), "w.data_offsets", |k| {
        matches!(k, ErrorKind::OutOfBounds { .. })
    });
}

#[test]
fn offsets_disagree_with_shape() {
    let h = r#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#;
    rejects(&image(h, &[0; 8]), "w.data_offsets", |k| {
        matches!(
            k,
            ErrorKind::SizeMismatch {
                expected: 4,
                found: 8
            }
        )
    });
}

#[test]
fn shape_product_overflows() {
    let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    rejects(&image(h, &[0; 8]), "w.shape", |k| {
        matches!(k, ErrorKind::ShapeOverflow { .. })
    });
}

#[test]
fn overlapping_tensors() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    rejects(
        &image(h, &[0; 12]),
        "b.data_offsets",
        |k| matches!(k, ErrorKind::Overlap { other } if other == "a"),
    );
}

#[test]
fn gap_between_tensors() {
    let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    rejects(&image(h, &[0; 12]), "b.data_offsets", |k| {
        matches!(
            k,
            ErrorKind::IncompleteBuffer {
                covered: 4,
                data_len: 12
            }
        )
    });
}

#[test]
fn trailing_bytes_after_data() {
    rejects(&image(ONE, &[0; 9]), "data", |k| {
        matches!(
            k,
            ErrorKind::IncompleteBuffer {
                covered: 8,
                data_len: 9
            }
        )
    });
}

#[test]
fn metadata_value_not_a_string() {
    let h = r#"{"__metadata__":{"format":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    rejects(&image(h, &[0; 8]), "__metadata__.format", |k| {
        matches!(k, ErrorKind::Schema(_))
    });
}

#[test]
fn tensor_entry_not_an_object() {
    rejects(&image(r#"{"w":[1,2,3]}"#, &[]), "w", |k| {
        matches!(k, ErrorKind::Schema(_))
    });
}

#[test]
fn writer_output_round_trips() {
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "pt".to_string());
    let t = vec![
        ("a".to_string(), StDtype::BF16, vec![2, 3], vec![7u8; 12]),
        ("b".to_string(), StDtype::I64, vec![1], vec![9u8; 8]),
    ];
    let f = SafetensorsFile::from_bytes("rt.safetensors", write_safetensors(&t, &md)).unwrap();
    assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(f.tensor("a").unwrap().data, &[7u8; 12]);
    assert_eq!(f.tensor("b").unwrap().shape, &[1]);
    assert_eq!(f.tensor("b").unwrap().dtype, StDtype::I64);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn shard(name: &str) -> Vec<u8> {
    write_safetensors(
        &[(name.to_string(), StDtype::F32, vec![1], vec![0; 4])],
        &BTreeMap::new(),
    )
}

#[test]
fn sharded_checkpoint_opens_through_its_index() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "model-00001-of-00002.safetensors", &shard("a"));
    write(d.path(), "model-00002-of-00002.safetensors", &shard("b"));
    let idx = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    write(d.path(), "model.safetensors.index.json", idx.as_bytes());
    let c = SafetensorsCheckpoint::open(d.path()).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c.shards().len(), 2);
    assert!(c.tensor("a").is_some() && c.tensor("b").is_some());
}

#[test]
fn index_names_a_missing_shard() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "model.safetensors.index.json",
        br#"{"weight_map":{"a":"gone.safetensors"}}"#,
    );
    let e = SafetensorsCheckpoint::open(d.path()).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Io(_)), "{e}");
    assert!(e.file.ends_with("gone.safetensors"), "{e}");
}

#[test]
fn index_escapes_the_directory() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "model.safetensors.index.json",
        br#"{"weight_map":{"a":"../../etc/passwd"}}"#,
    );
    let e = SafetensorsCheckpoint::open(d.path()).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Schema(_)), "{e}");
    assert_eq!(e.field, "weight_map.a");
}

#[test]
fn index_names_a_tensor_its_shard_lacks() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "s1.safetensors", &shard("a"));
    write(
        d.path(),
        "model.safetensors.index.json",
        br#"{"weight_map":{"a":"s1.safetensors","zz":"s1.safetensors"}}"#,
    );
    let e = SafetensorsCheckpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::Missing(m) if m.contains("zz")),
        "{e}"
    );
}

#[test]
fn same_tensor_in_two_shards() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "s1.safetensors", &shard("a"));
    write(d.path(), "s2.safetensors", &shard("a"));
    write(
        d.path(),
        "model.safetensors.index.json",
        br#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
    );
    let e = SafetensorsCheckpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::DuplicateTensor(n) if n == "a"),
        "{e}"
    );
}

#[test]
fn index_without_weight_map() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "model.safetensors.index.json",
        br#"{"metadata":{}}"#,
    );
    let e = SafetensorsCheckpoint::open(d.path()).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Missing(_)) && e.field == "weight_map",
        "{e}"
    );
}

#[test]
fn directory_without_weights() {
    let d = tempfile::tempdir().unwrap();
    let e = SafetensorsCheckpoint::open(d.path()).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Missing(_)), "{e}");
}

#[test]
fn config_json_invalid() {
    let e = HfConfig::from_json(Path::new("config.json"), "{\"hidden_size\": 5,").unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidJson(_)), "{e}");
    let e = HfConfig::from_json(Path::new("config.json"), r#"{"hidden_size": "big"}"#).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Schema(_)), "{e}");
}

#[test]
fn model_dir_reads_config_tokenizer_and_template() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "model.safetensors",
        &shard("model.embed_tokens.weight"),
    );
    write(
        d.path(),
        "config.json",
        br#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":576,"num_hidden_layers":30,
            "num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,"rms_norm_eps":1e-5,"rope_theta":100000.0,
            "tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":[2,3]}"#,
    );
    write(d.path(), "tokenizer.json", br#"{"model":{"type":"BPE","vocab":{"a":0,"b":1}},"added_tokens":[{"id":5,"content":"<x>"}]}"#);
    write(
        d.path(),
        "tokenizer_config.json",
        br#"{"chat_template":[{"name":"tool_use","template":"T"},{"name":"default","template":"D"}],"bos_token":{"content":"<s>"},"add_bos_token":false}"#,
    );
    let m = HfModelDir::open(d.path()).unwrap();
    assert_eq!(m.config.architecture(), Some("llama"));
    assert_eq!(m.config.num_key_value_heads, Some(3));
    assert_eq!(m.tokenizer_kind(), Some("BPE"));
    assert_eq!(m.tokenizer_vocab_len(), Some(6));
    let tc = m.tokenizer_config.as_ref().unwrap();
    assert_eq!(tc.chat_template.as_deref(), Some("D"));
    assert_eq!(tc.bos_token.as_deref(), Some("<s>"));
    assert_eq!(tc.add_bos_token, Some(false));
}

#[test]
fn model_dir_without_config() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "model.safetensors", &shard("w"));
    let e = HfModelDir::open(d.path()).unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::Missing(m) if m == "config.json"),
        "{e}"
    );
}
