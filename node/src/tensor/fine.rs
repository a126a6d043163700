//! Products whose activations are carried to ~15 bits in two 8-bit terms.
//!
//! Every integer kernel multiplies weights by activations rounded to 8 bits
//! a block (Q8_0's rule, or Q8_K's). For 8-bit weights that rounding is as
//! large as the weights' own, and most of what a quantized model loses: a
//! Q8_0 SmolLM2 whose products took f32 activations instead was measured at a
//! third of the KL divergence from its F32 base (docs/architecture.md,
//! "Activations in two terms"). Here each column `x` goes in as two columns of
//! one product: its 8-bit quantization `q`, and the rest `x − q` (what the
//! kernels will see of `q`: its f16-rounded scale times its integers),
//! scaled by 2^7 so that its own scale stays a normal f16, quantized the same
//! way. The product is linear, so `W·x ≈ W·q + 2^-7 · W·(2^7 (x − q))` with
//! the rest's rounding 2^-8 of the first term's. The weights are read once
//! for both terms (they are columns of one call), and each column's result
//! depends only on that column, so a batch and a single column agree as the
//! plain product's do.

use super::act::{quantize_q8, Q8Block};
use super::dequant::{KernelError, QK};
use super::matmul::{matmul, Matrix, Scratch, Simd};
use super::pool::ThreadPool;
use super::GgmlType;

/// The rest's scale: a power of two, so scaling it is exact. The rest of a
/// block is at most half its step, 1/254 of its largest magnitude; 2^7 brings
/// it back to about half the block's range.
const REST_SCALE: f32 = 128.0;

/// Columns per product: the terms of 16 columns are 32, several whole tiles
/// of the packed kernels, and the doubled buffers stay small when a prompt
/// asks for every position's logits (perplexity: 2 × 16 × 49k floats rather
/// than 2 × 512 × 49k).
const FINE_CHUNK: usize = 16;

/// Whether a model's output projection should take this path: its weights
/// are Q8_0 and no block's matrix is coarser than 8 bits. There the
/// activations' rounding is the error's largest part; in a model of 4- to
/// 6-bit blocks (a Q4_K_M keeps its head at Q8_0) the blocks' rounding is
/// 8 to 32 times coarser and two terms were measured to take 1% off its KL
/// divergence, not worth a second product over the head.
pub fn fine_head(head: GgmlType, blocks: impl IntoIterator<Item = GgmlType>) -> bool {
    use GgmlType::*;
    head == Q8_0
        && blocks
            .into_iter()
            .all(|t| matches!(t, Q8_0 | F16 | BF16 | F32))
}

/// Formats whose kernels take Q8_0-rule activations (the 32-element
/// integer formats): the ones a rest quantized by that rule completes.
fn takes_q8_blocks(dtype: GgmlType) -> bool {
    dtype.layout().is_some_and(|l| l.block_elems == QK)
}

/// Buffers of [`matmul_fine`], reused across calls.
#[derive(Debug, Default)]
pub struct FineScratch {
    x: Vec<f32>,
    y: Vec<f32>,
    q8: Vec<Q8Block>,
}

/// `y = W·x` for `n_vecs` columns (as [`matmul`]), each column carried in
/// two 8-bit terms when `w` is of a 32-element integer format; for other
/// formats (K-quants, floats) exactly [`matmul`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_fine(
    pool: &ThreadPool,
    simd: Simd,
    w: &Matrix,
    x: &[f32],
    n_vecs: usize,
    y: &mut [f32],
    scratch: &mut Scratch,
    fine: &mut FineScratch,
) -> Result<(), KernelError> {
    if !takes_q8_blocks(w.dtype) || n_vecs == 0 || w.rows == 0 || w.cols == 0 {
        return matmul(pool, simd, w, x, n_vecs, y, scratch);
    }
    let (cols, rows) = (w.cols, w.rows);
    if x.len() != n_vecs * cols {
        return Err(KernelError::Length {
            what: "input elements (n_vecs × cols)",
            expected: n_vecs * cols,
            got: x.len(),
        });
    }
    if y.len() != n_vecs * rows {
        return Err(KernelError::Length {
            what: "output elements (n_vecs × rows)",
            expected: n_vecs * rows,
            got: y.len(),
        });
    }
    // A chunk's columns 0..n are its inputs, n..2n their rests; chunks
    // bound the doubled buffers when every position wants logits.
    for (xs, ys) in x
        .chunks(FINE_CHUNK * cols)
        .zip(y.chunks_mut(FINE_CHUNK * rows))
    {
        let n = xs.len() / cols;
        fine.x.resize(2 * n * cols, 0.0);
        let (head, rest) = fine.x.split_at_mut(n * cols);
        head.copy_from_slice(xs);
        fine.q8.resize(cols / QK, Q8Block::default());
        for (xv, rv) in xs.chunks_exact(cols).zip(rest.chunks_exact_mut(cols)) {
            quantize_q8(xv, &mut fine.q8);
            for ((xb, rb), b) in xv
                .chunks_exact(QK)
                .zip(rv.chunks_exact_mut(QK))
                .zip(&fine.q8)
            {
                for ((&v, r), &q) in xb.iter().zip(rb.iter_mut()).zip(&b.qs) {
                    *r = (v - b.d * q as f32) * REST_SCALE;
                }
            }
        }
        fine.y.resize(2 * n * rows, 0.0);
        matmul(pool, simd, w, &fine.x, 2 * n, &mut fine.y, scratch)?;
        let (first, second) = fine.y.split_at(n * rows);
        for ((o, &a), &b) in ys.iter_mut().zip(first).zip(second) {
            *o = a + b * (1.0 / REST_SCALE);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quantize::quantize_to_vec;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The two-term product is much closer to the product over the
    /// dequantized weights in f64 than the plain one, on every SIMD level.
    #[test]
    fn two_terms_take_the_activations_rounding_out() {
        let (rows, cols, n) = (40, 256, FINE_CHUNK + 3);
        let mut seed = 7;
        let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        // Activations with a few large values, as a hidden state has.
        let x: Vec<f32> = (0..n * cols)
            .map(|i| lcg(&mut seed) * if i % 37 == 0 { 20.0 } else { 1.0 })
            .collect();
        let bytes = quantize_to_vec(GgmlType::Q8_0, &wf).unwrap();
        let mut wq = vec![0.0; rows * cols];
        crate::tensor::dequantize(GgmlType::Q8_0, &bytes, &mut wq).unwrap();
        let exact: Vec<f64> = (0..n)
            .flat_map(|v| {
                let (x, wq) = (&x, &wq);
                (0..rows).map(move |r| {
                    (0..cols)
                        .map(|c| wq[r * cols + c] as f64 * x[v * cols + c] as f64)
                        .sum::<f64>()
                })
            })
            .collect();
        let m = Matrix::new(GgmlType::Q8_0, rows, cols, &bytes).unwrap();
        let packed = crate::tensor::pack(&m);
        let pool = ThreadPool::new(2);
        let err = |y: &[f32]| {
            let sq: f64 = y
                .iter()
                .zip(&exact)
                .map(|(&a, &b)| (a as f64 - b).powi(2))
                .sum();
            (sq / y.len() as f64).sqrt()
        };
        let cases = [
            (Simd::detect(), m.with_packed(packed.as_ref())),
            (Simd::detect(), m),
            (Simd::detect().without_avx512(), m),
            (Simd::SCALAR, m),
        ];
        for (simd, m) in cases {
            let (mut plain, mut two) = (vec![0.0; n * rows], vec![0.0; n * rows]);
            let mut s = Scratch::default();
            matmul(&pool, simd, &m, &x, n, &mut plain, &mut s).unwrap();
            let mut f = FineScratch::default();
            matmul_fine(&pool, simd, &m, &x, n, &mut two, &mut s, &mut f).unwrap();
            let (e_plain, e_two) = (err(&plain), err(&two));
            assert!(e_plain > 0.0, "{}: the plain product rounds", simd.name());
            assert!(
                e_two * 50.0 < e_plain,
                "{}: two terms {e_two} against plain {e_plain}",
                simd.name()
            );
            // One column alone gives the same bits as inside the batch, in
            // its first chunk and in the next.
            for v in [1, FINE_CHUNK + 1] {
                let mut one = vec![0.0; rows];
                let xv = &x[v * cols..(v + 1) * cols];
                matmul_fine(&pool, simd, &m, xv, 1, &mut one, &mut s, &mut f).unwrap();
                assert_eq!(one, two[v * rows..(v + 1) * rows], "{}", simd.name());
            }
        }
    }

    #[test]
    fn an_empty_matrix_gives_an_empty_product() {
        let pool = ThreadPool::new(1);
        let (mut s, mut f) = (Scratch::default(), FineScratch::default());
        let m = Matrix::new(GgmlType::Q8_0, 0, 64, &[]).unwrap();
        let mut y: Vec<f32> = Vec::new();
        matmul_fine(
            &pool,
            Simd::detect(),
            &m,
            &[1.0; 64],
            1,
            &mut y,
            &mut s,
            &mut f,
        )
        .unwrap();
        let m = Matrix::new(GgmlType::Q8_0, 3, 64, &[0; 3 * 68]).unwrap();
        let e = matmul_fine(
            &pool,
            Simd::detect(),
            &m,
            &[1.0; 32],
            1,
            &mut [0.0; 3],
            &mut s,
            &mut f,
        );
        assert!(matches!(e, Err(KernelError::Length { .. })), "{e:?}");
    }

    #[test]
    fn only_an_8_bit_model_takes_two_terms_at_its_head() {
        use GgmlType::*;
        assert!(fine_head(Q8_0, [Q8_0; 7]));
        assert!(fine_head(Q8_0, [Q8_0, F16, BF16, F32]));
        // A Q4_K_M (its head Q8_0 or Q6_K), a Q4_1, and float heads.
        assert!(!fine_head(Q8_0, [Q4_K, Q6_K, Q5_0]));
        assert!(!fine_head(Q8_0, [Q8_0, Q4_K]));
        assert!(!fine_head(Q6_K, [Q8_0; 7]));
        assert!(!fine_head(Q4_1, [Q4_1; 7]));
        assert!(!fine_head(F32, [F32; 7]));
        assert!(!fine_head(F16, [Q8_0; 7]));
    }
}
