//! Opening a GGUF file: map + index of all tensors and metadata.
//! Uses models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh).

use criterion::{criterion_group, criterion_main, Criterion};
use realizar_node::format::GgufFile;

fn open_smollm2(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        eprintln!(
            "skipping open_gguf: {} missing (run scripts/fetch-models.sh)",
            path.display()
        );
        return;
    }
    c.bench_function("open_gguf/smollm2_q4_1", |b| {
        b.iter(|| {
            let f = GgufFile::open(&path).expect("open");
            assert_eq!(f.tensor_infos().len(), 272);
            f
        })
    });
    let gemma = path.with_file_name("gemma-3-270m-q4_k_m.gguf");
    if gemma.is_file() {
        c.bench_function("open_gguf/gemma3_q4_k_m", |b| {
            b.iter(|| GgufFile::open(&gemma).expect("open"))
        });
    }
}

criterion_group!(benches, open_smollm2);
criterion_main!(benches);
