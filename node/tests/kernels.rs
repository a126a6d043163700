//! Kernels: the scalar reference agrees with an f64 product of the
//! dequantized operands; SIMD agrees with scalar (≤ 1e-5 of Σ|wᵢxᵢ|) on
//! random and real weights; batched products equal one-at-a-time products
//! bit for bit; threading changes nothing.

use proptest::prelude::*;
use realizar_node::format::GgufFile;
use realizar_node::tensor::act::{quantize_q8, quantize_q8k, Q8Block, Q8KBlock};
use realizar_node::tensor::{
    dequantize_to_vec, has_simd_kernel, kernel, matmul, quantize_to_vec, GgmlType, Kernel, Matrix,
    Scratch, Simd, ThreadPool,
};

const KERNEL_TYPES: [GgmlType; 16] = [
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

struct Rng(u64);
impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        // Roughly N(0,1): sum of uniforms.
        (0..4)
            .map(|_| (self.u64() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            * 1.7
            - 3.4
    }
}

/// Weights of `t`: quantized from random floats where we have a quantizer,
/// otherwise random bytes with sane f16 scales.
fn weights(t: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let x: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
    if let Ok(q) = quantize_to_vec(t, &x) {
        return q;
    }
    let l = t.layout().unwrap();
    let mut b: Vec<u8> = (0..rows * cols / l.block_elems * l.block_bytes)
        .map(|_| rng.u64() as u8)
        .collect();
    let scale_offsets: &[usize] = match t {
        GgmlType::IQ4_NL => &[0],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::IQ4_XS => &[0],
        _ => &[],
    };
    for blk in b.chunks_exact_mut(l.block_bytes) {
        for &o in scale_offsets {
            let v = half::f16::from_f32(0.001 + (rng.u64() % 1000) as f32 * 1e-5);
            blk[o..o + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    b
}

/// The activation vector as the kernel sees it (after its quantization).
fn effective_acts(k: &Kernel, x: &[f32]) -> Vec<f32> {
    match k {
        Kernel::Q8(_) | Kernel::Q8Pair(_) | Kernel::Q8Quad(_) | Kernel::Q8Group(_) => {
            let mut q = vec![Q8Block::default(); x.len() / 32];
            quantize_q8(x, &mut q);
            q.iter()
                .flat_map(|b| b.qs.iter().map(move |&v| v as f32 * b.d))
                .collect()
        }
        Kernel::Q8K(_) | Kernel::Q8KGroup(_) => {
            let mut q = vec![Q8KBlock::default(); x.len() / 256];
            quantize_q8k(x, &mut q);
            q.iter()
                .flat_map(|b| b.qs.iter().map(move |&v| v as f32 * b.d))
                .collect()
        }
        Kernel::F32(_) => x.to_vec(),
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    simd: Simd,
    pool: &ThreadPool,
    t: GgmlType,
    rows: usize,
    cols: usize,
    w: &[u8],
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let m = Matrix::new(t, rows, cols, w).unwrap();
    let mut y = vec![0f32; rows * n];
    matmul(pool, simd, &m, x, n, &mut y, &mut Scratch::default()).unwrap();
    y
}

/// Compare two outputs element-wise within `tol` × Σ|wᵢxᵢ| of each element.
fn check_close(t: GgmlType, what: &str, a: &[f32], b: &[f32], norms: &[f64], tol: f64) {
    for (i, ((x, y), n)) in a.iter().zip(b).zip(norms).enumerate() {
        let err = (*x as f64 - *y as f64).abs();
        assert!(
            err <= tol * n.max(1e-30),
            "{t} {what}: element {i}: {x} vs {y} (err {err:e}, scale {n:e})"
        );
    }
}

fn norms_and_reference(
    t: GgmlType,
    rows: usize,
    cols: usize,
    w: &[u8],
    x: &[f32],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let k = kernel(t, Simd::SCALAR).unwrap();
    let wf = dequantize_to_vec(t, w).unwrap();
    let mut norms = vec![0f64; rows * n];
    let mut reference = vec![0f64; rows * n];
    for v in 0..n {
        let xa = effective_acts(&k, &x[v * cols..(v + 1) * cols]);
        for r in 0..rows {
            let row = &wf[r * cols..(r + 1) * cols];
            norms[v * rows + r] = row
                .iter()
                .zip(&xa)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            reference[v * rows + r] = row
                .iter()
                .zip(&xa)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
        }
    }
    (norms, reference)
}

#[test]
fn scalar_matches_an_f64_product_of_the_dequantized_operands() {
    let pool = ThreadPool::new(1);
    let mut rng = Rng(11);
    for t in KERNEL_TYPES {
        let (rows, cols, n) = (7, 512, 3);
        let w = weights(t, rows, cols, &mut rng);
        let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
        let y = run(Simd::SCALAR, &pool, t, rows, cols, &w, &x, n);
        let (norms, reference) = norms_and_reference(t, rows, cols, &w, &x, n);
        let refs: Vec<f32> = reference.iter().map(|&v| v as f32).collect();
        // Q4_1/Q5_1 use ggml's Q8_1 block sum rounded to f16: allow for it.
        let tol = if matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1) {
            2e-3
        } else {
            1e-5
        };
        check_close(t, "scalar vs f64", &y, &refs, &norms, tol);
    }
}

#[test]
fn simd_is_available_on_this_machine() {
    // CI and development machines are AVX2 (Zen 3); if this fails the SIMD
    // comparisons below would be comparing scalar with itself.
    assert!(Simd::detect().is_avx2() || std::env::var("REALIZAR_SIMD").is_ok());
}

/// A column's result does not depend on the batch it is computed in (nor on
/// the thread count): batches of 11 on 2 threads equal batches of 2 on one,
/// bit for bit. One column alone equals them bit for bit too, except where a
/// format has a separate single-column kernel (AVX-512 Q8_0 and Q4_K: the
/// group kernels transpose weights, which pays only across columns); there
/// it agrees within the SIMD tolerance. Rows of 2560 are five whole groups,
/// so the group kernels are the ones under test.
#[test]
fn batched_results_do_not_depend_on_the_batch_or_threads() {
    let one = ThreadPool::new(1);
    let two = ThreadPool::new(2);
    let simd = Simd::detect();
    let mut rng = Rng(5);
    for t in KERNEL_TYPES {
        let (rows, cols, n) = (37, 2560, 11);
        let w = weights(t, rows, cols, &mut rng);
        let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
        let batched = run(simd, &two, t, rows, cols, &w, &x, n);
        let (norms, _) = norms_and_reference(t, rows, cols, &w, &x, n);
        let own_single_kernel = simd.is_avx512() && matches!(t, GgmlType::Q8_0 | GgmlType::Q4_K);
        for v in 0..n {
            let u = (v + 1) % n;
            let mut xp = x[v * cols..(v + 1) * cols].to_vec();
            xp.extend_from_slice(&x[u * cols..(u + 1) * cols]);
            let pair = run(simd, &one, t, rows, cols, &w, &xp, 2);
            assert_eq!(
                &batched[v * rows..(v + 1) * rows],
                &pair[..rows],
                "{t} vector {v} in a pair"
            );
            let single = run(
                simd,
                &one,
                t,
                rows,
                cols,
                &w,
                &x[v * cols..(v + 1) * cols],
                1,
            );
            let want = &batched[v * rows..(v + 1) * rows];
            if own_single_kernel {
                let nv = &norms[v * rows..(v + 1) * rows];
                check_close(t, "single column", want, &single, nv, 1e-5);
            } else {
                assert_eq!(want, &single[..], "{t} vector {v} alone");
            }
        }
    }
}

/// Every SIMD level this CPU has: AVX2, and AVX-512 VNNI when present (its
/// kernels cover some formats; the rest fall back to AVX2).
fn simd_levels() -> Vec<Simd> {
    let best = Simd::detect();
    let mut v = Vec::new();
    if best.is_avx2() {
        v.push(best.without_avx512());
    }
    if best.is_avx512() {
        v.push(best);
    }
    v
}

#[test]
fn simd_agrees_with_scalar_for_every_format() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng(2024);
    for simd in simd_levels() {
        let mut with_simd = 0;
        for t in KERNEL_TYPES {
            if !has_simd_kernel(t, simd) {
                continue;
            }
            with_simd += 1;
            // An even and (for 32-element blocks) an odd number of blocks per
            // row, and rows of several whole 512-element groups (the AVX-512
            // group kernels) with and without a partial last group; batches
            // up to 64 columns (eight passes of the 8-column group kernels).
            let widths: &[usize] = if t.layout().unwrap().block_elems == 32 {
                &[768, 800, 1536]
            } else {
                &[768, 1024]
            };
            for &cols in widths {
                for n in [1usize, 3, 4, 5, 9, 64] {
                    let rows = 13;
                    let w = weights(t, rows, cols, &mut rng);
                    let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
                    let a = run(Simd::SCALAR, &pool, t, rows, cols, &w, &x, n);
                    let b = run(simd, &pool, t, rows, cols, &w, &x, n);
                    let (norms, _) = norms_and_reference(t, rows, cols, &w, &x, n);
                    check_close(t, simd.name(), &a, &b, &norms, 1e-5);
                }
            }
        }
        assert_eq!(with_simd, KERNEL_TYPES.len(), "{}", simd.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn simd_agrees_with_scalar_on_random_shapes(
        ti in 0usize..KERNEL_TYPES.len(),
        rows in 1usize..24,
        blocks in 1usize..5,
        n in 1usize..10,
        seed in any::<u64>(),
    ) {
        let t = KERNEL_TYPES[ti];
        let be = t.layout().unwrap().block_elems;
        let cols = blocks * be.max(32) / be * be;
        let mut rng = Rng(seed | 1);
        let w = weights(t, rows, cols, &mut rng);
        let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
        let pool = ThreadPool::new(2);
        let a = run(Simd::SCALAR, &pool, t, rows, cols, &w, &x, n);
        let (norms, _) = norms_and_reference(t, rows, cols, &w, &x, n);
        for simd in simd_levels() {
            let b = run(simd, &pool, t, rows, cols, &w, &x, n);
            check_close(t, simd.name(), &a, &b, &norms, 1e-5);
        }
    }
}

fn model(name: &str) -> GgufFile {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-models.sh",
        p.display()
    );
    GgufFile::open(p).unwrap()
}

#[test]
fn simd_agrees_with_scalar_on_real_weights() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng(99);
    let smol = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let gemma = model("gemma-3-270m-q4_k_m.gguf");
    let picks = [
        (&smol, "blk.0.ffn_down.weight"),
        (&smol, "blk.3.attn_q.weight"),
        (&smol, "token_embd.weight"),
        (&gemma, "blk.0.attn_output.weight"),
        (&gemma, "blk.0.attn_k.weight"),
        (&gemma, "blk.0.ffn_down.weight"),
        (&gemma, "token_embd.weight"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (f, name) in picks {
        let t = f.tensor(name).unwrap();
        seen.insert(t.dtype);
        let cols = t.dims[0] as usize;
        let rows = (t.dims[1] as usize).min(64);
        let row_bytes = t.dtype.bytes_for(cols as u64).unwrap() as usize;
        let w = &t.data[..rows * row_bytes];
        let n = 3;
        let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
        let a = run(Simd::SCALAR, &pool, t.dtype, rows, cols, w, &x, n);
        let (norms, reference) = norms_and_reference(t.dtype, rows, cols, w, &x, n);
        for simd in simd_levels() {
            let b = run(simd, &pool, t.dtype, rows, cols, w, &x, n);
            check_close(
                t.dtype,
                &format!("{name} ({})", simd.name()),
                &a,
                &b,
                &norms,
                1e-5,
            );
        }
        let refs: Vec<f32> = reference.iter().map(|&v| v as f32).collect();
        let tol = if t.dtype == GgmlType::Q4_1 {
            2e-3
        } else {
            1e-5
        };
        check_close(t.dtype, name, &a, &refs, &norms, tol);
    }
    let names: Vec<&str> = seen.iter().map(|t| t.name()).collect();
    assert_eq!(names, ["Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"]);
}

#[test]
fn shape_errors_are_reported() {
    let pool = ThreadPool::new(1);
    let w = vec![0u8; 34 * 2];
    assert!(Matrix::new(GgmlType::Q8_0, 2, 31, &w).is_err());
    assert!(Matrix::new(GgmlType::Q8_0, 3, 32, &w).is_err());
    let m = Matrix::new(GgmlType::Q8_0, 2, 32, &w).unwrap();
    let mut y = vec![0f32; 2];
    assert!(matmul(
        &pool,
        Simd::SCALAR,
        &m,
        &[0.0; 31],
        1,
        &mut y,
        &mut Scratch::default()
    )
    .is_err());
    assert!(matmul(
        &pool,
        Simd::SCALAR,
        &m,
        &[0.0; 32],
        1,
        &mut y[..1],
        &mut Scratch::default()
    )
    .is_err());
    let iq = vec![0u8; 66 * 2];
    let m = Matrix::new(GgmlType::IQ2_XXS, 2, 256, &iq).unwrap();
    assert!(matmul(
        &pool,
        Simd::SCALAR,
        &m,
        &[0.0; 256],
        1,
        &mut y,
        &mut Scratch::default()
    )
    .is_err());
}

/// The packed prefill path (AVX-512 VNNI where the CPU has it, and its
/// scalar twin everywhere) against the scalar row kernels, which quantize
/// the activations the same way (within 1e-5 of Σ|wᵢxᵢ|), on panels cut
/// short and column tiles cut short, and one column over 41 panels (tasks
/// of several panel pairs, which decode takes four panels a tile, and an
/// odd panel at the end).
#[test]
fn packed_weights_agree_with_the_row_kernels() {
    use realizar_node::tensor::pack::{matmul_packed, PackKind};
    let pool = ThreadPool::new(2);
    let mut rng = Rng(77);
    let mut checked = 0;
    for t in KERNEL_TYPES {
        if PackKind::of(t).is_none() {
            continue;
        }
        let cols = if t.layout().unwrap().block_elems == 256 {
            512
        } else {
            96
        };
        for (rows, n) in [(16, 16), (40, 23), (64, 7), (651, 1)] {
            let w = weights(t, rows, cols, &mut rng);
            let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
            let packed = realizar_node::tensor::pack(&Matrix::new(t, rows, cols, &w).unwrap())
                .expect("a packed form");
            // 4- and 5-bit formats keep their weights as nibbles (and a
            // plane of fifth bits): with the scales (and offsets) at most
            // 0.75 and 0.875 bytes a weight, not 1.125–1.25. The formats
            // whose scales are f16 in the file keep them so: no more bytes
            // than the file's, but for the padding that starts each panel
            // on a 64-byte vector; Q4_K and Q5_K keep a 6-bit sub-scale in
            // a byte: 1/64 a weight more.
            let weights = (rows.next_multiple_of(16) * cols) as f64;
            let per_weight = packed.size() as f64 / weights;
            use GgmlType::*;
            let most = match t {
                Q4_0 | Q4_1 | Q4_K => 0.75,
                Q5_0 | Q5_1 | Q5_K => 0.875,
                _ => 1.25,
            };
            assert!(
                per_weight <= most && (most == 1.25) == (per_weight > 0.875),
                "{t:?}: {per_weight} bytes a packed weight"
            );
            let l = t.layout().unwrap();
            let file = match t {
                // Stored as bytes (value + 128), not as the file's nibbles.
                IQ4_NL => 34.0 / 32.0,
                _ => l.block_bytes as f64 / l.block_elems as f64,
            };
            let over = match t {
                Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL => Some(0.0),
                Q4_K | Q5_K => Some(1.0 / 64.0),
                _ => None,
            };
            if let Some(over) = over {
                let pad = 63.0 * rows.div_ceil(16) as f64 / weights;
                assert!(
                    per_weight <= file + over + pad,
                    "{t:?}: {per_weight} bytes a packed weight, the file {file}"
                );
            }
            let m = Matrix::new(t, rows, cols, &w)
                .unwrap()
                .with_packed(Some(&packed));
            let want = run(Simd::SCALAR, &pool, t, rows, cols, &w, &x, n);
            let (norms, _) = norms_and_reference(t, rows, cols, &w, &x, n);
            let mut levels = vec![Simd::SCALAR];
            if Simd::detect().is_avx512() {
                levels.push(Simd::detect());
            }
            for simd in levels {
                let mut y = vec![0f32; rows * n];
                matmul_packed(&pool, simd, &m, &x, n, &mut y, &mut Scratch::default()).unwrap();
                let what = format!("packed {} rows {rows} n {n}", simd.name());
                check_close(t, &what, &want, &y, &norms, 1e-5);
                checked += 1;
            }
        }
    }
    let levels = if Simd::detect().is_avx512() { 2 } else { 1 };
    assert_eq!(
        checked,
        10 * 4 * levels,
        "packed formats × shapes × SIMD levels"
    );
}

/// Packed matrices of different formats whose activations are quantized
/// alike (Q5_0 query beside a Q8_0 value, as in Q4_K_M files whose widths
/// rule out K-quants; Q4_K beside Q6_K) go out in one dispatch, each
/// product bit for bit what it is alone.
#[test]
fn mixed_packed_formats_share_one_dispatch_and_change_no_bit() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng(91);
    let simd = Simd::detect();
    for (types, cols) in [
        (
            vec![
                GgmlType::Q5_0,
                GgmlType::Q8_0,
                GgmlType::Q4_1,
                GgmlType::IQ4_NL,
            ],
            96,
        ),
        (vec![GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_K], 512),
    ] {
        let n = 3;
        let rows = [48, 16, 40, 32];
        let ws: Vec<Vec<u8>> = types
            .iter()
            .zip(rows)
            .map(|(&t, r)| weights(t, r, cols, &mut rng))
            .collect();
        let packed: Vec<_> = types
            .iter()
            .zip(rows)
            .zip(&ws)
            .map(|((&t, r), w)| realizar_node::tensor::pack(&Matrix::new(t, r, cols, w).unwrap()))
            .collect();
        let ms: Vec<Matrix> = types
            .iter()
            .zip(rows)
            .zip(&ws)
            .zip(&packed)
            .map(|(((&t, r), w), p)| Matrix::new(t, r, cols, w).unwrap().with_packed(p.as_ref()))
            .collect();
        let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
        let alone: Vec<Vec<f32>> = ms
            .iter()
            .map(|m| {
                let mut y = vec![0f32; m.rows * n];
                realizar_node::tensor::matmul(
                    &pool,
                    simd,
                    m,
                    &x,
                    n,
                    &mut y,
                    &mut Scratch::default(),
                )
                .unwrap();
                y
            })
            .collect();
        let mut ys: Vec<Vec<f32>> = ms.iter().map(|m| vec![0f32; m.rows * n]).collect();
        let before = pool.stats().dispatches;
        let refs: Vec<&Matrix> = ms.iter().collect();
        let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
        realizar_node::tensor::matmul_many(
            &pool,
            simd,
            &refs,
            &x,
            n,
            &mut outs,
            &mut Scratch::default(),
        )
        .unwrap();
        let dispatches = pool.stats().dispatches - before;
        // Without AVX-512 VNNI nothing is packed: one dispatch per format.
        let want = if simd.is_avx512() {
            1
        } else {
            types.len() as u64
        };
        assert_eq!(dispatches, want, "{types:?}");
        for ((t, y), a) in types.iter().zip(&ys).zip(&alone) {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(y), bits(a), "{t:?} beside {types:?}");
        }
    }
}

/// A model's matrices packed into one shared mapping (`pack_all`, which
/// the models load with) hold, each, the bytes `pack` gives it alone, and
/// a format without a packed form (F32, Q2_K) gets none there either.
#[test]
fn packing_side_by_side_gives_each_matrix_its_own_bytes() {
    let mut rng = Rng(5);
    let shapes = [
        (GgmlType::Q4_1, 40, 96),
        (GgmlType::F32, 16, 96),
        (GgmlType::Q8_0, 651, 64),
        (GgmlType::Q4_K, 48, 512),
        (GgmlType::Q2_K, 16, 256),
        (GgmlType::Q6_K, 17, 256),
        (GgmlType::Q5_0, 1, 32),
    ];
    let ws: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(t, r, c)| weights(t, r, c, &mut rng))
        .collect();
    let ms: Vec<Matrix> = shapes
        .iter()
        .zip(&ws)
        .map(|(&(t, r, c), w)| Matrix::new(t, r, c, w).unwrap())
        .collect();
    for threads in [1, 2, 3, 16] {
        let all = realizar_node::tensor::pack_all(&ms, threads);
        assert_eq!(all.len(), ms.len());
        for (m, p) in ms.iter().zip(&all) {
            let alone = realizar_node::tensor::pack(m);
            assert_eq!(p.is_some(), alone.is_some(), "{:?}", m.dtype);
            if let (Some(p), Some(alone)) = (p, alone) {
                assert_eq!((p.rows, p.cols), (m.rows, m.cols));
                assert_eq!(p.size(), alone.size(), "{:?}", m.dtype);
                assert!(
                    p.bytes() == alone.bytes(),
                    "{:?} with {threads} threads",
                    m.dtype
                );
                assert_eq!(
                    p.bytes().as_ptr() as usize % 4096,
                    0,
                    "each copy page-aligned"
                );
            }
        }
    }
    assert!(realizar_node::tensor::pack_all(&ms[1..2], 2)[0].is_none());
}

/// Moving packed weights onto huge pages changes no byte, and where the
/// kernel collapses a range the mapping reports it as huge pages
/// (`AnonHugePages` in /proc/self/smaps). A kernel without
/// `MADV_COLLAPSE`, or with no huge page free, is reported, not hidden.
#[test]
fn packed_weights_collapsed_onto_huge_pages_keep_their_bytes() {
    let mut rng = Rng(8);
    let (rows, cols) = (4096, 1024); // Q8_0: 4.25 MiB packed, two whole 2 MiB ranges at least
    let w = weights(GgmlType::Q8_0, rows, cols, &mut rng);
    let m = Matrix::new(GgmlType::Q8_0, rows, cols, &w).unwrap();
    let alone = realizar_node::tensor::pack(&m).unwrap();
    let all = realizar_node::tensor::pack_all(std::slice::from_ref(&m), 2);
    let p = all[0].as_ref().unwrap();
    match realizar_node::tensor::collapse_now(p) {
        Ok(n) => {
            assert!(n >= 1, "a 4.25 MiB mapping holds a whole 2 MiB range");
            let huge_kb = anon_huge_kb(p.bytes().as_ptr() as usize).expect("the mapping in smaps");
            assert!(
                huge_kb >= 2048 * n as u64,
                "{n} ranges collapsed, {huge_kb} kB huge"
            );
        }
        Err(e) => eprintln!("no collapse on this kernel or now ({e}): bytes checked only"),
    }
    assert!(
        p.bytes() == alone.bytes(),
        "contents unchanged by the collapse"
    );
}

/// `AnonHugePages` (kB) of the mapping of /proc/self/smaps holding `addr`.
fn anon_huge_kb(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = head.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = (a..b).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
    }
    None
}

/// The KV pool's f32 → f16 store gives `half`'s bytes (round to nearest
/// even) on the F16C path and its scalar tail alike: ties, subnormals,
/// overflow to infinity, signed zeros.
#[test]
fn f16_store_conversion_rounds_as_half_does() {
    let mut rng = Rng(5);
    let mut xs: Vec<f32> = (0..1000).map(|_| rng.f32() * 70000.0).collect();
    xs.extend((0..1000).map(|_| rng.f32() * 1e-5));
    // Exact ties between two f16 values: 1 + 2^-11 (rounds to even, 1.0),
    // 1 + 3·2^-11 (to 1 + 2^-9), and around the largest finite f16.
    xs.extend([
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65504.0,
        65520.0,
        65519.0,
    ]);
    xs.extend([
        0.0,
        -0.0,
        6e-8,
        -6e-8,
        3e-8,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
    ]);
    for n in [xs.len(), 7, 9, 1] {
        let src = &xs[xs.len() - n..];
        let mut got = vec![0u8; 2 * n];
        realizar_node::tensor::f32_to_f16_bytes(src, &mut got);
        let want: Vec<u8> = src
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
            .collect();
        assert_eq!(got, want, "{n} values");
    }
}

/// The gated feed-forward's products with the activation in their tasks
/// (packed weights) give the bits of the products followed by the
/// activation, in one dispatch.
#[test]
fn gated_products_run_the_activation_in_their_tasks_and_change_no_bit() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng(13);
    let simd = Simd::detect();
    // An elementwise activation whose result depends on both inputs.
    let act = |g: &mut [f32], u: &[f32]| {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    };
    for (t, cols, rows, n) in [
        (GgmlType::Q8_0, 96, 200, 1),
        (GgmlType::Q5_0, 96, 64, 7),
        (GgmlType::Q4_K, 512, 72, 13),
    ] {
        let (wg, wu) = (
            weights(t, rows, cols, &mut rng),
            weights(t, rows, cols, &mut rng),
        );
        let pg = realizar_node::tensor::pack(&Matrix::new(t, rows, cols, &wg).unwrap());
        let pu = realizar_node::tensor::pack(&Matrix::new(t, rows, cols, &wu).unwrap());
        let mg = Matrix::new(t, rows, cols, &wg)
            .unwrap()
            .with_packed(pg.as_ref());
        let mu = Matrix::new(t, rows, cols, &wu)
            .unwrap()
            .with_packed(pu.as_ref());
        let x: Vec<f32> = (0..cols * n).map(|_| rng.f32()).collect();
        let (mut g0, mut u0) = (vec![0f32; rows * n], vec![0f32; rows * n]);
        realizar_node::tensor::matmul_many(
            &pool,
            simd,
            &[&mg, &mu],
            &x,
            n,
            &mut [&mut g0, &mut u0],
            &mut Scratch::default(),
        )
        .unwrap();
        act(&mut g0, &u0);
        let (mut g1, mut u1) = (vec![0f32; rows * n], vec![0f32; rows * n]);
        let before = pool.stats().dispatches;
        realizar_node::tensor::matmul_gated(
            &pool,
            simd,
            &mg,
            &mu,
            &x,
            n,
            &mut g1,
            &mut u1,
            &mut Scratch::default(),
            &act,
        )
        .unwrap();
        assert_eq!(pool.stats().dispatches - before, 1, "{t:?}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&g1), bits(&g0), "{t:?} rows {rows} n {n}");
    }
}
