//! Kernel throughput: y = W·X for every weight format, on the shapes of the
//! real models plus one 8192×8192 matrix (larger than the L3), 1 and 2
//! threads, B = 1, 8, 32 activation columns. Criterion reports GB/s of
//! weight bytes (Throughput::Bytes); the same run measures plain memory read
//! bandwidth (`membw/*`) so scripts/bench-table.py can express every figure
//! as a fraction of it.
//!
//!   cargo bench --bench kernels                       # everything
//!   cargo bench --bench kernels -- 'membw|8192x8192'  # a subset (regex)
//!   cargo bench --bench kernels -- 'membw|packed/'    # decode over packed weights

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use realizar_node::tensor::{matmul, GgmlType, Matrix, Scratch, Simd, ThreadPool};

const TYPES: [GgmlType; 16] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ4_XS,
];

/// The L3 of the machine the figures are for (AMD EPYC Zen 3, 32 MiB).
const L3_BYTES: usize = 32 << 20;

/// (cols, rows): 576×1536 means 576 inputs, 1536 outputs.
const SHAPES: [(usize, usize); 6] = [
    (576, 1536),
    (1536, 576),
    (576, 49152),
    (640, 2048),
    (2048, 640),
    (8192, 8192),
];

/// Random block bytes with small positive f16 scales wherever the format
/// keeps one (kernel speed does not depend on the values).
fn random_weights(t: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let l = t.layout().unwrap();
    let n = rows * cols / l.block_elems * l.block_bytes;
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut b: Vec<u8> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let f16_offsets: &[usize] = match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL | GgmlType::IQ4_XS => {
            &[0]
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    if l.block_elems > 1 {
        for blk in b.chunks_exact_mut(l.block_bytes) {
            for &o in f16_offsets {
                blk[o..o + 2].copy_from_slice(&scale);
            }
            if t == GgmlType::Q8_K {
                blk[0..4].copy_from_slice(&0.01f32.to_le_bytes());
            }
        }
    } else if t == GgmlType::F32 {
        for c in b.chunks_exact_mut(4) {
            c.copy_from_slice(&0.01f32.to_le_bytes());
        }
    } else {
        for c in b.chunks_exact_mut(2) {
            c.copy_from_slice(&scale);
        }
    }
    b
}

/// Sum a buffer far larger than the L3 on `pool`: the machine's read bandwidth.
fn membw(c: &mut Criterion) {
    let bytes = 512usize << 20;
    let buf: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let mut g = c.benchmark_group("membw");
    g.throughput(Throughput::Bytes(bytes as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for threads in [1usize, 2] {
        let pool = ThreadPool::new(threads);
        let chunk = buf.len() / 64;
        g.bench_function(BenchmarkId::new("read", format!("{threads}t")), |b| {
            b.iter(|| {
                let total = std::sync::atomic::AtomicU64::new(0);
                pool.run(64, &|t| {
                    let s = &buf[t * chunk..(t + 1) * chunk];
                    // Four independent lanes so the adds keep up with memory.
                    let mut acc = [0u64; 4];
                    for q in s.chunks_exact(4) {
                        for k in 0..4 {
                            acc[k] = acc[k].wrapping_add(q[k]);
                        }
                    }
                    total.fetch_add(
                        acc.iter().fold(0, |a, &v| a.wrapping_add(v)),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                });
                black_box(total.into_inner())
            })
        });
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let simd = Simd::detect();
    let pools = [(1usize, ThreadPool::new(1)), (2, ThreadPool::new(2))];
    for t in TYPES {
        let mut g = c.benchmark_group(format!("matmul/{}", t.name()));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(150))
            .measurement_time(Duration::from_millis(500));
        for (cols, rows) in SHAPES {
            if cols % t.layout().unwrap().block_elems != 0 {
                continue; // e.g. 576 columns are not whole 256-element K-quant blocks
            }
            let w = random_weights(t, rows, cols);
            // Matrices near the L3 size would be partly served from cache on
            // repeated iterations: rotate through copies totalling ≥ 96 MiB so
            // each iteration streams its weights from DRAM.
            let copies = if w.len() > L3_BYTES / 2 {
                (3 * L3_BYTES).div_ceil(w.len()).max(1)
            } else {
                1
            };
            let ws: Vec<Vec<u8>> = (0..copies).map(|_| w.clone()).collect();
            let ms: Vec<Matrix> = ws
                .iter()
                .map(|w| Matrix::new(t, rows, cols, w).unwrap())
                .collect();
            g.throughput(Throughput::Bytes(w.len() as u64));
            for (threads, pool) in &pools {
                for n in [1usize, 8, 32] {
                    let id = BenchmarkId::new(format!("{cols}x{rows}"), format!("{threads}t/B{n}"));
                    rotating(&mut g, id, pool, simd, &ms, n);
                }
            }
        }
        g.finish();
    }
}

/// Decode's products over the packed weights the models run on AVX-512 VNNI
/// (one column; SmolLM2's shapes and a larger one), each iteration a copy
/// not read since ≥ 3 L3s of others: weights streamed from DRAM as a decode
/// step streams them, one matrix at a time, from one mapping on huge pages
/// as a node holds them. GB/s of packed bytes.
fn packed(c: &mut Criterion) {
    let simd = Simd::detect();
    if !simd.is_avx512() {
        return;
    }
    let pools = [(1usize, ThreadPool::new(1)), (2, ThreadPool::new(2))];
    for t in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let mut g = c.benchmark_group(format!("packed/{}", t.name()));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(1500));
        for (cols, rows) in [(576usize, 1536usize), (1536, 576), (576, 576), (2048, 8192)] {
            if cols % t.layout().unwrap().block_elems != 0 {
                continue;
            }
            let w = random_weights(t, rows, cols);
            let m = Matrix::new(t, rows, cols, &w).unwrap();
            let size = realizar_node::tensor::pack(&m).unwrap().size();
            let copies = (3 * L3_BYTES).div_ceil(size).max(2);
            // As a node holds them: side by side in one mapping, on huge
            // pages where the kernel gives them.
            let ps: Vec<_> = realizar_node::tensor::pack_all(&vec![m; copies], 2)
                .into_iter()
                .map(|p| p.unwrap())
                .collect();
            if let Err(e) = realizar_node::tensor::collapse_now(&ps[0]) {
                eprintln!("packed copies on 4 KiB pages: {e}");
            }
            let ms: Vec<Matrix> = ps.iter().map(|p| m.with_packed(Some(p))).collect();
            g.throughput(Throughput::Bytes(size as u64));
            for (threads, pool) in &pools {
                let id = BenchmarkId::new(format!("{cols}x{rows}"), format!("{threads}t/B1"));
                rotating(&mut g, id, pool, simd, &ms, 1);
            }
        }
        g.finish();
    }
}

/// `y = W·X` over `n` columns, each iteration the next of `ms` (copies of
/// one matrix, so each is read from wherever the rotation left it).
fn rotating(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    id: BenchmarkId,
    pool: &ThreadPool,
    simd: Simd,
    ms: &[Matrix],
    n: usize,
) {
    let (rows, cols) = (ms[0].rows, ms[0].cols);
    let x: Vec<f32> = (0..cols * n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let mut y = vec![0f32; rows * n];
    let mut scratch = Scratch::default();
    let mut next = 0;
    g.bench_function(id, |b| {
        b.iter(|| {
            next = (next + 1) % ms.len();
            matmul(
                pool,
                simd,
                &ms[next],
                black_box(&x),
                n,
                &mut y,
                &mut scratch,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, membw, kernels, packed);
criterion_main!(benches);
