//! Bounded, deterministic mutation fuzzing of both parsers (runs in CI):
//! valid images are mutated (bit flips, byte overwrites with boundary
//! values, truncations, insertions) and every result must be either a typed
//! error or a file whose tensor views lie inside the image. Also replays the
//! cargo-fuzz corpora kept in fuzz/corpus/.

use std::collections::BTreeMap;
use std::path::Path;

use realizar_node::format::safetensors::write_safetensors;
use realizar_node::format::{
    GgufFile, GgufWriter, MetaArray, MetaValue, SafetensorsFile, StDtype, TensorToWrite,
};
use realizar_node::tensor::GgmlType;

/// xorshift64*: fixed-seed so every run checks the same inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            2 if v.len() >= 8 => {
                // Overwrite a little-endian u64 with a boundary value.
                let i = rng.below(v.len() - 7);
                let val: u64 =
                    [0, 1, u64::MAX, 1 << 31, 1 << 32, 1 << 62, i64::MAX as u64][rng.below(7)];
                v[i..i + 8].copy_from_slice(&val.to_le_bytes());
            }
            3 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            4 => {
                let i = rng.below(v.len() + 1);
                let b = rng.next() as u8;
                v.insert(i, b);
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {}
        }
    }
    v
}

fn sample_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()));
    w.meta("llama.block_count", MetaValue::U32(2));
    w.meta(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(vec![
            "<s>".into(),
            "a".into(),
            "▁b".into(),
        ])),
    );
    w.meta(
        "tokenizer.ggml.scores",
        MetaValue::Array(MetaArray::F32(vec![0.0, -1.0, -2.0])),
    );
    w.meta(
        "nested",
        MetaValue::Array(MetaArray::Array(vec![MetaArray::Bool(vec![true])])),
    );
    w.tensor(TensorToWrite {
        name: "q".into(),
        dims: vec![32, 2],
        dtype: GgmlType::Q8_0,
        data: vec![3; 68],
    });
    w.tensor(TensorToWrite {
        name: "n".into(),
        dims: vec![4],
        dtype: GgmlType::F32,
        data: vec![0; 16],
    });
    w.to_bytes()
}

fn sample_safetensors() -> Vec<u8> {
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "pt".to_string());
    write_safetensors(
        &[
            ("a".into(), StDtype::F32, vec![2, 2], vec![1; 16]),
            ("b".into(), StDtype::BF16, vec![3], vec![2; 6]),
        ],
        &md,
    )
}

fn check_gguf(bytes: Vec<u8>) {
    let len = bytes.len();
    if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", bytes) {
        for t in f.tensors() {
            assert!(t.data.len() <= len);
            assert_eq!(Some(t.data.len() as u64), t.dtype.bytes_for(t.n_elements()));
        }
    }
}

fn check_safetensors(bytes: Vec<u8>) {
    let len = bytes.len();
    if let Ok(f) = SafetensorsFile::from_bytes("fuzz.safetensors", bytes) {
        for t in f.tensors() {
            assert!(t.data.len() <= len);
            assert_eq!(
                t.data.len() as u64,
                t.shape.iter().product::<u64>() * t.dtype.size()
            );
        }
    }
}

#[test]
fn gguf_parser_survives_20k_mutations() {
    let base = sample_gguf();
    assert!(GgufFile::from_bytes("base", base.clone()).is_ok());
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..20_000 {
        check_gguf(mutate(&mut rng, &base));
    }
}

#[test]
fn safetensors_parser_survives_20k_mutations() {
    let base = sample_safetensors();
    assert!(SafetensorsFile::from_bytes("base", base.clone()).is_ok());
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..20_000 {
        check_safetensors(mutate(&mut rng, &base));
    }
}

fn replay(dir: &str, check: fn(Vec<u8>)) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(dir);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        check(std::fs::read(&path).unwrap());
        n += 1;
    }
    n
}

#[test]
fn gguf_fuzz_corpus_replays() {
    assert!(replay("gguf", check_gguf) > 0, "empty corpus");
}

#[test]
fn safetensors_fuzz_corpus_replays() {
    assert!(replay("safetensors", check_safetensors) > 0, "empty corpus");
}
