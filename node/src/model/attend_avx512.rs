//! Prefill attention with the query rows in vector lanes (AVX-512): a tile
//! of up to 16 (token, query head) rows that share a KV head is held
//! transposed, one 16-lane vector per head dimension, so a score step is
//! one multiply-add of that vector by a key element broadcast from memory —
//! no horizontal sums — and the softmax and the value sums run 16 rows per
//! instruction. Scores are kept position-major (`scores[j]` holds the 16
//! rows' scores of position `j`); positions outside a row's span (causal
//! mask, sliding window) are −∞ and then exactly 0.
//!
//! A tile of a few rows (a decode step: one token, its KV head's group of
//! query heads) would use only those lanes of each value-sum instruction;
//! its value sums are kept row-major instead, 16 dimensions per
//! instruction. Each element still sees the same multiply-adds in the same
//! order, so the bits do not depend on the layout.

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use std::ops::Range;

use super::attention::{
    load_row_simd as load_row, merge_weights, TileJob, BLOCK, LANES, MAX_HEAD_DIM,
};

/// Key or value rows converted to f32 per step.
const STEP: usize = 8;
/// Most rows whose value sums are kept row-major rather than in lanes.
const ROW_MAJOR_ROWS: usize = 4;

/// Softmax partials of a tile's rows (row `l` = token `l / n_heads`, head
/// `l % n_heads`) over the blocks `run`, merged block by block as
/// [`merge_weights`] says: `Σ e^(s − m) · v` in `acc` (rows of `hd`),
/// `(m, l)` in `ml` — what [`super::attention`]'s other kernels leave.
///
/// # Safety
/// AVX-512 F (and FMA); `job.toks.len() * job.n_heads <= LANES`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn attend_tile_avx512(
    job: &TileJob,
    run: Range<usize>,
    scores: &mut Vec<f32>,
    acc: &mut [f32],
    ml: &mut [f32],
) {
    debug_assert!(job.toks.len() * job.n_heads <= LANES && job.hd <= MAX_HEAD_DIM);
    TILE.with(|t| {
        let mut t = t.borrow_mut();
        tile(job, run, scores, acc, ml, &mut t)
    })
}

/// Per-thread buffers of [`attend_tile_avx512`]: the transposed queries,
/// the transposed value sums (the block's and the merged ones) and the
/// converted key or value rows, sized for the largest head once rather than
/// set to zero on every call (a decode step calls it per layer and KV head).
struct Tile {
    qt: Vec<[f32; LANES]>,
    blk: Vec<[f32; LANES]>,
    out: Vec<[f32; LANES]>,
    buf: Vec<[f32; MAX_HEAD_DIM]>,
}

thread_local! {
    static TILE: std::cell::RefCell<Tile> = std::cell::RefCell::new(Tile {
        qt: vec![[0.0; LANES]; MAX_HEAD_DIM],
        blk: vec![[0.0; LANES]; MAX_HEAD_DIM],
        out: vec![[0.0; LANES]; MAX_HEAD_DIM],
        buf: vec![[0.0; MAX_HEAD_DIM]; STEP],
    });
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn tile(
    job: &TileJob,
    run: Range<usize>,
    scores: &mut Vec<f32>,
    acc: &mut [f32],
    ml: &mut [f32],
    t: &mut Tile,
) {
    let (hd, nh) = (job.hd, job.n_heads);
    let rows = job.toks.len() * nh;
    let row_major = rows <= ROW_MAJOR_ROWS;
    let Tile { qt, blk, out, buf } = t;
    // Each lane's span; unused lanes get an empty one.
    let mut first = [i32::MAX; LANES];
    let mut last = [i32::MIN; LANES];
    // Queries transposed and scaled: qt[d][l] (unused lanes 0).
    qt[..hd].fill([0.0; LANES]);
    for (ti, &(f, p, q)) in job.toks.iter().enumerate() {
        for h in 0..nh {
            let l = ti * nh + h;
            first[l] = f as i32;
            last[l] = p as i32;
            for d in 0..hd {
                qt[d][l] = q[h * hd + d] * job.scale;
            }
        }
    }
    let lo = job.toks.iter().map(|t| t.0).min().unwrap_or(0);
    let hi = job.toks.iter().map(|t| t.1).max().unwrap_or(0);
    let firstv = _mm512_loadu_si512(first.as_ptr() as *const _);
    let lastv = _mm512_loadu_si512(last.as_ptr() as *const _);
    let in_span = |j: usize| {
        let jv = _mm512_set1_epi32(j as i32);
        _mm512_cmple_epi32_mask(firstv, jv) & _mm512_cmpge_epi32_mask(lastv, jv)
    };
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    // Merged partials: m, l per lane, value sums transposed in `out`.
    let mut m_run = [f32::NEG_INFINITY; LANES];
    let mut l_run = [0f32; LANES];
    out[..hd].fill([0.0; LANES]);
    for b in run {
        let j0 = lo.max(b * BLOCK);
        let j1 = hi.min(b * BLOCK + BLOCK - 1);
        if j0 > j1 {
            continue;
        }
        let n = j1 + 1 - j0;
        // Every score is written before it is read: grow, never clear.
        if scores.len() < n * LANES {
            scores.resize(n * LANES, 0.0);
        }
        let sp = scores.as_mut_ptr();
        let mut mx = neg_inf;
        for s0 in (0..n).step_by(STEP) {
            let m = (n - s0).min(STEP);
            for jj in 0..m {
                load_row(job, &job.kv.k, j0 + s0 + jj, &mut buf[jj][..hd]);
            }
            let mut s = [_mm512_setzero_ps(); STEP];
            for d in 0..hd {
                let q = _mm512_loadu_ps(qt[d].as_ptr());
                for jj in 0..STEP {
                    s[jj] = _mm512_fmadd_ps(q, _mm512_set1_ps(buf[jj][d]), s[jj]);
                }
            }
            for jj in 0..m {
                let v = _mm512_mask_mov_ps(neg_inf, in_span(j0 + s0 + jj), s[jj]);
                mx = _mm512_max_ps(mx, v);
                _mm512_storeu_ps(sp.add((s0 + jj) * LANES), v);
            }
        }
        // e^(s − m), 0 outside the spans; a lane with no positions in the
        // block keeps m = −∞ and is left as it was by the merge.
        let mut sum = _mm512_setzero_ps();
        for j in 0..n {
            let v = _mm512_loadu_ps(sp.add(j * LANES));
            let e = _mm512_maskz_mov_ps(in_span(j0 + j), exp_nonpositive(_mm512_sub_ps(v, mx)));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(sp.add(j * LANES), e);
        }
        if row_major {
            value_sums_rows(job, j0, n, sp, buf, blk.as_flattened_mut(), rows);
            merge_rows(
                &mut m_run,
                &mut l_run,
                mx,
                sum,
                blk.as_flattened(),
                out.as_flattened_mut(),
                rows,
                hd,
            );
            continue;
        }
        // Σ_j p_j · v_j, transposed: blk[d][l].
        blk[..hd].fill([0.0; LANES]);
        for s0 in (0..n).step_by(STEP) {
            let m = (n - s0).min(STEP);
            for jj in 0..m {
                load_row(job, &job.kv.v, j0 + s0 + jj, &mut buf[jj][..hd]);
            }
            let p: [__m512; STEP] = std::array::from_fn(|jj| {
                if jj < m {
                    _mm512_loadu_ps(sp.add((s0 + jj) * LANES))
                } else {
                    _mm512_setzero_ps()
                }
            });
            for d0 in (0..hd).step_by(16) {
                let dn = (hd - d0).min(16);
                let mut a = [_mm512_setzero_ps(); 16];
                for dd in 0..dn {
                    a[dd] = _mm512_loadu_ps(blk[d0 + dd].as_ptr());
                }
                for jj in 0..m {
                    for dd in 0..dn {
                        a[dd] = _mm512_fmadd_ps(p[jj], _mm512_set1_ps(buf[jj][d0 + dd]), a[dd]);
                    }
                }
                for dd in 0..dn {
                    _mm512_storeu_ps(blk[d0 + dd].as_mut_ptr(), a[dd]);
                }
            }
        }
        // Merge into the running partials, lane by lane as fold() does row
        // by row: `a·wa + x·wb`, a lane without positions kept as it was.
        let (wa, wb, keep) = block_weights(&mut m_run, &mut l_run, mx, sum, rows);
        let (wa, wb) = (_mm512_loadu_ps(wa.as_ptr()), _mm512_loadu_ps(wb.as_ptr()));
        for d in 0..hd {
            let a = _mm512_loadu_ps(out[d].as_ptr());
            let x = _mm512_loadu_ps(blk[d].as_ptr());
            let merged = _mm512_add_ps(_mm512_mul_ps(a, wa), _mm512_mul_ps(x, wb));
            _mm512_storeu_ps(out[d].as_mut_ptr(), _mm512_mask_blend_ps(keep, merged, a));
        }
    }
    for l in 0..rows {
        ml[2 * l] = m_run[l];
        ml[2 * l + 1] = l_run[l];
    }
    if row_major {
        acc[..rows * hd].copy_from_slice(&out.as_flattened()[..rows * hd]);
        return;
    }
    for l in 0..rows {
        for d in 0..hd {
            acc[l * hd + d] = out[d][l];
        }
    }
}

/// Lanes `0..n` of a mask (all 16 from n = 16 on).
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// The block's value sums row-major: `blk[l·hd + d] = Σ_j p_j[l] · v_j[d]`
/// over positions `j0 .. j0 + n`, `p` from the position-major scores `sp`;
/// per element the multiply-adds of the lanes layout, in its order.
///
/// # Safety
/// AVX-512 F, AVX2, FMA and F16C; `sp` holds `n · LANES` scores; `blk` at
/// least `rows · hd` values, `rows ≤ LANES`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn value_sums_rows(
    job: &TileJob,
    j0: usize,
    n: usize,
    sp: *const f32,
    buf: &mut [[f32; MAX_HEAD_DIM]],
    blk: &mut [f32],
    rows: usize,
) {
    let hd = job.hd;
    blk[..rows * hd].fill(0.0);
    for s0 in (0..n).step_by(STEP) {
        let m = (n - s0).min(STEP);
        for jj in 0..m {
            load_row(job, &job.kv.v, j0 + s0 + jj, &mut buf[jj][..hd]);
        }
        for l in 0..rows {
            let row = &mut blk[l * hd..(l + 1) * hd];
            // Four vectors of the row at a time: four independent chains.
            for d0 in (0..hd).step_by(64) {
                let nv = (hd - d0).div_ceil(16).min(4);
                let mut a = [_mm512_setzero_ps(); 4];
                let mut k = [0 as __mmask16; 4];
                for c in 0..nv {
                    k[c] = lanes(hd - d0 - 16 * c);
                    a[c] = _mm512_maskz_loadu_ps(k[c], row.as_ptr().add(d0 + 16 * c));
                }
                for jj in 0..m {
                    let p = _mm512_set1_ps(*sp.add((s0 + jj) * LANES + l));
                    let v = buf[jj].as_ptr().add(d0);
                    for c in 0..nv {
                        let x = _mm512_maskz_loadu_ps(k[c], v.add(16 * c));
                        a[c] = _mm512_fmadd_ps(p, x, a[c]);
                    }
                }
                for c in 0..nv {
                    _mm512_mask_storeu_ps(row.as_mut_ptr().add(d0 + 16 * c), k[c], a[c]);
                }
            }
        }
    }
}

/// A block's per-row merge weights ([`merge_weights`]) for rows
/// `0..rows`, the running maxima and sums updated: `(wa, wb, keep)`, where
/// a row in `keep` had no positions in the block and stays as it was
/// (`wa` 1, `wb` 0).
///
/// # Safety
/// AVX-512 F (inlined into the kernels that enable it).
#[inline(always)]
unsafe fn block_weights(
    m_run: &mut [f32; LANES],
    l_run: &mut [f32; LANES],
    mx: __m512,
    sum: __m512,
    rows: usize,
) -> ([f32; LANES], [f32; LANES], __mmask16) {
    let mut mb = [0f32; LANES];
    let mut lb = [0f32; LANES];
    _mm512_storeu_ps(mb.as_mut_ptr(), mx);
    _mm512_storeu_ps(lb.as_mut_ptr(), sum);
    let mut wa = [1f32; LANES];
    let mut wb = [0f32; LANES];
    let mut keep: __mmask16 = 0;
    for l in 0..rows {
        match merge_weights(m_run[l], l_run[l], mb[l], lb[l]) {
            Some([m, s, a, b]) => (m_run[l], l_run[l], wa[l], wb[l]) = (m, s, a, b),
            None => keep |= 1 << l,
        }
    }
    (wa, wb, keep)
}

/// The block's partials (`mx`, `sum` per lane; value sums row-major in
/// `blk`) merged into the running ones (`out`, row-major) as the lanes
/// layout merges them: `a·wa + x·wb`, a row without positions kept.
///
/// # Safety
/// AVX-512 F; `blk` and `out` hold at least `rows · hd` values.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn merge_rows(
    m_run: &mut [f32; LANES],
    l_run: &mut [f32; LANES],
    mx: __m512,
    sum: __m512,
    blk: &[f32],
    out: &mut [f32],
    rows: usize,
    hd: usize,
) {
    let (wa, wb, keep) = block_weights(m_run, l_run, mx, sum, rows);
    for l in (0..rows).filter(|l| keep & (1 << l) == 0) {
        let (wa, wb) = (_mm512_set1_ps(wa[l]), _mm512_set1_ps(wb[l]));
        let (x, o) = (&blk[l * hd..(l + 1) * hd], &mut out[l * hd..(l + 1) * hd]);
        for d0 in (0..hd).step_by(16) {
            let k = lanes(hd - d0);
            let a = _mm512_maskz_loadu_ps(k, o.as_ptr().add(d0));
            let xb = _mm512_maskz_loadu_ps(k, x.as_ptr().add(d0));
            let merged = _mm512_add_ps(_mm512_mul_ps(a, wa), _mm512_mul_ps(xb, wb));
            _mm512_mask_storeu_ps(o.as_mut_ptr().add(d0), k, merged);
        }
    }
}

/// [`super::ops::exp_approx`] on 16 lanes (for x ≤ 0: no upper clamp).
#[inline(always)]
unsafe fn exp_nonpositive(x: __m512) -> __m512 {
    let c = |b: u32| _mm512_set1_ps(f32::from_bits(b));
    let shift = c(0x4b40_0000);
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), shift);
    let n = _mm512_sub_ps(z, shift);
    let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), x));
    let k = _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_slli_epi32::<23>(_mm512_castps_si512(z)),
        _mm512_set1_epi32(1f32.to_bits() as i32),
    ));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm512_mul_ps(c(0x3f7f_fff6), b),
    );
    _mm512_fmadd_ps(j, k, k)
}
