//! Prefill attention with the query rows in vector lanes (AVX-512): a tile
//! of up to 16 (token, query head) rows that share a KV head is held
//! transposed, one 16-lane vector per head dimension, so a score step is
//! one multiply-add of that vector by a key element broadcast from memory —
//! no horizontal sums — and the softmax and the value sums run 16 rows per
//! instruction. Scores are kept position-major (`scores[j]` holds the 16
//! rows' scores of position `j`); positions outside a row's span (causal
//! mask, sliding window) are −∞ and then exactly 0.
//!
//! Keys are stored transposed within a KV block (see [`crate::kv::KvPool`]):
//! a head dimension of 16 consecutive positions is one load. A prompt tile
//! converts such a chunk to f32 once and broadcasts from it; a tile of a
//! few rows (a decode step: one token, its KV head's group of query heads)
//! would use only those lanes of each instruction, so it turns the other
//! way: 16 positions in the lanes of one multiply-add per row and head
//! dimension, its exponentials likewise, and its value sums row-major, 16
//! dimensions per instruction, read straight from the pool. Each score and
//! each value element still sees the same multiply-adds in the same order
//! (a score summed over the head dimensions in order, a sum over positions
//! in order), so the bits do not depend on the layout.

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use std::ops::Range;

use super::attention::{
    load_row_simd as load_row, merge_weights, TileJob, BLOCK, LANES, MAX_HEAD_DIM,
};
use crate::kv::{decode, KvType};

/// Value rows converted to f32 per step.
const STEP: usize = 8;
/// Most rows whose value sums are kept row-major rather than in lanes.
const ROW_MAJOR_ROWS: usize = 4;

/// Softmax partials of a tile's rows (row `l` = token `l / n_heads`, head
/// `l % n_heads`) over the blocks `run`, merged block by block as
/// [`merge_weights`] says: `Σ e^(s − m) · v` in `acc` (rows of `hd`),
/// `(m, l)` in `ml` — what [`super::attention`]'s other kernels leave.
///
/// # Safety
/// AVX-512 F, BW and VL (and AVX2, FMA, F16C);
/// `job.toks.len() * job.n_heads <= LANES`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
/// the transposed value sums (the block's and the merged ones), the
/// converted value rows, a chunk of keys as f32 (`kt[d]`: 16 positions)
/// and a few rows' scores over a block, sized for the largest head once
/// rather than set to zero on every call (a decode step calls it per layer
/// and KV head).
struct Tile {
    qt: Vec<[f32; LANES]>,
    blk: Vec<[f32; LANES]>,
    out: Vec<[f32; LANES]>,
    buf: Vec<[f32; MAX_HEAD_DIM]>,
    kt: Vec<[f32; LANES]>,
    rs: [[f32; BLOCK]; ROW_MAJOR_ROWS],
}

thread_local! {
    static TILE: std::cell::RefCell<Tile> = std::cell::RefCell::new(Tile {
        qt: vec![[0.0; LANES]; MAX_HEAD_DIM],
        blk: vec![[0.0; LANES]; MAX_HEAD_DIM],
        out: vec![[0.0; LANES]; MAX_HEAD_DIM],
        buf: vec![[0.0; MAX_HEAD_DIM]; STEP],
        kt: vec![[0.0; LANES]; MAX_HEAD_DIM],
        rs: [[0.0; BLOCK]; ROW_MAJOR_ROWS],
    });
}

/// Where a chunk of 16 positions' keys of a tile's KV head lie: dimension
/// `d`'s 16 values at `ptr + d · stride`, f16 or f32.
#[derive(Clone, Copy)]
struct Keys {
    ptr: *const u8,
    stride: usize,
    f16: bool,
}

impl Keys {
    /// Dimension `d` of the chunk's 16 positions.
    ///
    /// # Safety
    /// AVX-512 F and F16C; `d` below the head dimension.
    #[inline(always)]
    unsafe fn get(self, d: usize) -> __m512 {
        let p = self.ptr.add(d * self.stride);
        if self.f16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }
}

/// The keys of positions `c .. c + 16` (`c` a multiple of 16) for `job`'s
/// KV head: in place when a KV block holds whole chunks (the node's blocks
/// of 16), else those of positions `lo ..= hi` copied into `kt` (0 beside
/// them).
///
/// # Safety
/// `kt` holds `job.hd` rows; positions `lo ..= hi` of the chunk are in the
/// sequence's block table.
#[inline(always)]
unsafe fn keys(job: &TileJob, c: usize, lo: usize, hi: usize, kt: &mut [[f32; LANES]]) -> Keys {
    let kv = job.kv;
    let elem = job.g * job.hd;
    if kv.block_size().is_multiple_of(LANES) {
        return Keys {
            ptr: kv.k.as_ptr().add(kv.key_at(job.table, job.layer, c, elem)),
            stride: kv.key_stride(),
            f16: kv.ty == KvType::F16,
        };
    }
    let bytes = kv.ty.bytes();
    for (d, row) in kt[..job.hd].iter_mut().enumerate() {
        *row = [0.0; LANES];
        for j in lo.max(c)..=hi.min(c + LANES - 1) {
            let at = kv.key_at(job.table, job.layer, j, elem + d);
            row[j - c] = decode(kv.ty, &kv.k[at..at + bytes]);
        }
    }
    Keys {
        ptr: kt.as_ptr() as *const u8,
        stride: 4 * LANES,
        f16: false,
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
    let Tile {
        qt,
        blk,
        out,
        buf,
        kt,
        rs,
    } = t;
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
        // Chunks of 16 positions from a multiple of 16 (inside the block):
        // those before j0 or after j1 are in no row's span.
        let c0 = j0 & !(LANES - 1);
        if row_major {
            // The row count fixed at compile time keeps each row's
            // accumulators in registers.
            let b = blk.as_flattened_mut();
            let (mx, sum) = match rows {
                1 => rows_block::<1>(job, j0, j1, c0, qt, rs, kt, &first, &last, b),
                2 => rows_block::<2>(job, j0, j1, c0, qt, rs, kt, &first, &last, b),
                3 => rows_block::<3>(job, j0, j1, c0, qt, rs, kt, &first, &last, b),
                _ => rows_block::<4>(job, j0, j1, c0, qt, rs, kt, &first, &last, b),
            };
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
        // Every score is written before it is read: grow, never clear.
        if scores.len() < n * LANES {
            scores.resize(n * LANES, 0.0);
        }
        let sp = scores.as_mut_ptr();
        let mut mx = neg_inf;
        for c in (c0..=j1).step_by(LANES) {
            let k = keys(job, c, j0, j1, kt);
            if k.ptr != kt.as_ptr() as *const u8 {
                for d in 0..hd {
                    _mm512_storeu_ps(kt[d].as_mut_ptr(), k.get(d));
                }
            }
            let mut s = [_mm512_setzero_ps(); LANES];
            for d in 0..hd {
                let q = _mm512_loadu_ps(qt[d].as_ptr());
                for i in 0..LANES {
                    s[i] = _mm512_fmadd_ps(q, _mm512_set1_ps(kt[d][i]), s[i]);
                }
            }
            for i in 0..LANES {
                let j = c + i;
                if j < j0 || j > j1 {
                    continue;
                }
                let v = _mm512_mask_mov_ps(neg_inf, in_span(j), s[i]);
                mx = _mm512_max_ps(mx, v);
                _mm512_storeu_ps(sp.add((j - j0) * LANES), v);
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
                if m == STEP && dn == 16 {
                    // Fixed trip counts keep the 16 sums in registers.
                    value_tile(&p, buf, d0, blk);
                    continue;
                }
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

/// 16 dimensions `d0 ..` of the lanes layout's value sums (`blk[d][l]`)
/// advanced by `STEP` positions: probabilities `p[jj]` (16 rows), values
/// `buf[jj]`, each sum's multiply-adds in position order.
///
/// # Safety
/// AVX-512 F; `d0 + 16 ≤` the rows of `blk` and of each `buf` row.
#[inline(always)]
unsafe fn value_tile(
    p: &[__m512; STEP],
    buf: &[[f32; MAX_HEAD_DIM]],
    d0: usize,
    blk: &mut [[f32; LANES]],
) {
    let blk = &mut blk[d0..d0 + 16];
    let mut a: [__m512; 16] = std::array::from_fn(|dd| _mm512_loadu_ps(blk[dd].as_ptr()));
    for jj in 0..STEP {
        let v = &buf[jj][d0..d0 + 16];
        for dd in 0..16 {
            a[dd] = _mm512_fmadd_ps(p[jj], _mm512_set1_ps(v[dd]), a[dd]);
        }
    }
    for dd in 0..16 {
        _mm512_storeu_ps(blk[dd].as_mut_ptr(), a[dd]);
    }
}

/// A few rows' softmax over the block's positions `j0 ..= j1`, positions
/// in lanes: per row, each chunk's 16 scores summed over the head's
/// dimensions in order (one multiply-add per dimension, as the lanes
/// layout makes each row's), −∞ outside the row's span; then
/// `e^(s − m)` (0 outside the span) in `rs[r][j − c0]`, and from them the
/// value sums row-major in `blk` ([`value_sums_rows`]). Returns the rows'
/// maxima and sums (the sum over positions in order) as lanes `0..R`.
///
/// # Safety
/// As [`tile`]; `R ≤ ROW_MAJOR_ROWS`, `c0` the multiple of 16 at or
/// below `j0`, in the same block as `j1`; `blk` holds at least `R · hd`
/// values.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn rows_block<const R: usize>(
    job: &TileJob,
    j0: usize,
    j1: usize,
    c0: usize,
    qt: &[[f32; LANES]],
    rs: &mut [[f32; BLOCK]; ROW_MAJOR_ROWS],
    kt: &mut [[f32; LANES]],
    first: &[i32; LANES],
    last: &[i32; LANES],
    blk: &mut [f32],
) -> (__m512, __m512) {
    let hd = job.hd;
    let iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    // Lanes of chunk `c` inside row `r`'s span.
    let span = |r: usize, c: usize| {
        let jv = _mm512_add_epi32(_mm512_set1_epi32(c as i32), iota);
        _mm512_cmple_epi32_mask(_mm512_set1_epi32(first[r]), jv)
            & _mm512_cmpge_epi32_mask(_mm512_set1_epi32(last[r]), jv)
    };
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut mxv = [neg_inf; R];
    for c in (c0..=j1).step_by(LANES) {
        let k = keys(job, c, j0, j1, kt);
        let mut s = [_mm512_setzero_ps(); R];
        for d in 0..hd {
            let kd = k.get(d);
            for r in 0..R {
                s[r] = _mm512_fmadd_ps(_mm512_set1_ps(qt[d][r]), kd, s[r]);
            }
        }
        for r in 0..R {
            let v = _mm512_mask_mov_ps(neg_inf, span(r, c), s[r]);
            mxv[r] = _mm512_max_ps(mxv[r], v);
            _mm512_storeu_ps(rs[r].as_mut_ptr().add(c - c0), v);
        }
    }
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut sum = [0f32; LANES];
    for r in 0..R {
        mx[r] = _mm512_reduce_max_ps(mxv[r]);
        let m = _mm512_set1_ps(mx[r]);
        for c in (c0..=j1).step_by(LANES) {
            let p = rs[r].as_mut_ptr().add(c - c0);
            let e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(p), m));
            _mm512_storeu_ps(p, _mm512_maskz_mov_ps(span(r, c), e));
        }
    }
    // Summed in position order, as the lanes layout sums each row.
    for j in j0..=j1 {
        for r in 0..R {
            sum[r] += rs[r][j - c0];
        }
    }
    value_sums_rows::<R>(job, j0, j1, c0, rs, blk);
    (_mm512_loadu_ps(mx.as_ptr()), _mm512_loadu_ps(sum.as_ptr()))
}

/// Lanes `0..n` of a mask (all 16 from n = 16 on).
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// The block's value sums row-major: `blk[l·hd + d] = Σ_j p_l(j) · v_j[d]`
/// over positions `j0 ..= j1`, `p_l(j)` in `rs[l][j − c0]`; per element the
/// multiply-adds of the lanes layout, in its order. Value rows are read
/// from the pool as they lie (f16 converted in registers), 64 dimensions
/// of every row at a time.
///
/// # Safety
/// As [`tile`]; `blk` holds at least `R · hd` values, `R ≤ ROW_MAJOR_ROWS`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn value_sums_rows<const R: usize>(
    job: &TileJob,
    j0: usize,
    j1: usize,
    c0: usize,
    rs: &[[f32; BLOCK]; ROW_MAJOR_ROWS],
    blk: &mut [f32],
) {
    let (kv, hd) = (job.kv, job.hd);
    let f16 = kv.ty == KvType::F16;
    for d0 in (0..hd).step_by(64) {
        let mut a = [[_mm512_setzero_ps(); 4]; R];
        // Past the head's end a lane loads 0 and is not stored.
        let k: [__mmask16; 4] = std::array::from_fn(|c| lanes((hd - d0).saturating_sub(16 * c)));
        for j in j0..=j1 {
            let at = kv.value_at(job.table, job.layer, j, job.g * hd + d0);
            let v = kv.v.as_ptr().add(at);
            let x: [__m512; 4] = std::array::from_fn(|c| {
                if f16 {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k[c], v.add(32 * c) as *const _))
                } else {
                    _mm512_maskz_loadu_ps(k[c], v.add(64 * c) as *const f32)
                }
            });
            for r in 0..R {
                let p = _mm512_set1_ps(rs[r][j - c0]);
                for c in 0..4 {
                    a[r][c] = _mm512_fmadd_ps(p, x[c], a[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..4 {
                _mm512_mask_storeu_ps(blk.as_mut_ptr().add(r * hd + d0 + 16 * c), k[c], a[r][c]);
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
