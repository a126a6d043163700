//! Causal grouped-query attention over the paged KV pool (f32 or f16) for a
//! batch of sequences, optionally limited to a sliding window; pool tasks
//! per (tile of tokens, KV head), per (token, query head), or per chunk of
//! positions at decode (see [`attention`]). Key dots
//! use the matmul kernels of the cache's element type, so f16 keys are
//! converted in registers (F16C) rather than copied.

#[cfg(target_arch = "x86_64")]
use super::attend_avx512::attend_tile_avx512;
use super::ops::{exp_approx, madd};
use super::SeqStep;
use crate::kv::KvPool;
use crate::tensor::{dequantize, Simd, ThreadPool};

/// Output pointer for tasks writing disjoint (token, head) slices.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task writes only its own (token, head) slice of the buffer.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// The range must lie inside the buffer and belong to the calling task only.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Attend to at most this many most recent positions (None: all).
    pub window: Option<usize>,
}

/// Largest head the row buffers take.
pub(super) const MAX_HEAD_DIM: usize = 512;
/// Fewest positions per chunk when a span is split across tasks.
const MIN_CHUNK: usize = 64;
/// Most rows (token × query head) of an AVX-512 attention tile: its lanes.
pub(super) const LANES: usize = 16;
/// Most tokens of one sequence per task when there are many tokens.
const QUERY_TILE: usize = 4;

thread_local! {
    /// Per-thread scores buffer, reused across calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `q` holds the queries of every token of the step (`tok_seq[i]` is token
/// i's sequence in `seqs`, `tok_pos[i]` its position); the pool already holds
/// their keys and values. Writes `T × n_head × head_dim` values to `out`.
///
/// One task per (tile of up to four consecutive tokens of a sequence, KV
/// head) when there are enough (token, KV head) pairs: each key and value
/// row is converted to f32 once and used by every query head of the group
/// for every token of the tile. With few tokens (decode) and spans of 128 positions or more, each
/// (token, KV head) span is split into chunks of at least 64 positions, one
/// task per chunk for the whole group, and the chunks' softmax partials
/// (max, sum, unnormalised value sum) are merged afterwards, so both threads
/// have work and each row is still read once per group. Short decode spans
/// take one task per (token, query head).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    simd: Simd,
    kv: &KvPool,
    layer: usize,
    seqs: &[SeqStep],
    tok_seq: &[u32],
    tok_pos: &[u32],
    q: &[f32],
    s: &AttentionShape,
    out: &mut [f32],
) {
    let t = tok_seq.len();
    let q_dim = s.n_head * s.head_dim;
    let hd = s.head_dim;
    assert!(q.len() >= t * q_dim && out.len() >= t * q_dim && hd <= MAX_HEAD_DIM);
    let group = s.n_head / s.n_head_kv;
    let threads = pool.n_threads();
    let span = |i: usize| {
        let pos = tok_pos[i] as usize;
        let first = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        (first, pos)
    };
    let avx2 = simd.is_avx2();
    // The row-parallel AVX-512 kernel serves every path when it can, so a
    // row's result does not depend on which path or tile it ran in (its
    // lanes are independent and positions outside a row's span add exact
    // zeros): a prompt prefilled in one batch, resumed from the prefix
    // cache or decoded beside others gives the same bits.
    #[cfg(target_arch = "x86_64")]
    let lanes = simd.is_avx512() && group <= LANES;
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = false;
    // Token i's queries of KV head g's group against positions
    // `first..=last` into (`acc`, `ml`), on the detected path.
    let attend_group =
        |i: usize, g: usize, first: usize, last: usize, acc: &mut [f32], ml: &mut [f32]| {
            let h0 = g * group;
            let qg = &q[i * q_dim + h0 * hd..i * q_dim + (h0 + group) * hd];
            #[cfg(target_arch = "x86_64")]
            if lanes {
                let toks = [(first, last, qg)];
                let job = TileJob {
                    kv,
                    table: seqs[tok_seq[i] as usize].table,
                    layer,
                    g,
                    toks: &toks,
                    n_heads: group,
                    hd,
                    scale: s.scale,
                };
                // SAFETY: `lanes` means detect() saw AVX-512 F (and AVX2, FMA,
                // F16C); one token's group is at most LANES rows.
                SCORES.with(|buf| unsafe {
                    attend_tile_avx512(&job, &mut buf.borrow_mut(), acc, ml)
                });
                return;
            }
            let job = HeadJob {
                kv,
                table: seqs[tok_seq[i] as usize].table,
                layer,
                g,
                first,
                pos: last,
                q: qg,
                n_heads: group,
                hd,
                scale: s.scale,
            };
            run_attend(&job, avx2, acc, ml);
        };
    let o = Out(out.as_mut_ptr());
    // Few (token, KV head) pairs — decode — and long enough spans: split
    // each span into chunks, every task one chunk for the whole group, so a
    // key or value row is read once per group instead of once per query
    // head; the chunks' softmax partials are merged afterwards.
    let pairs = t * s.n_head_kv;
    let longest = (0..t).map(|i| span(i).1 + 1 - span(i).0).max().unwrap_or(0);
    let chunks = if pairs >= 4 * threads || group == 1 {
        1
    } else {
        (4 * threads).div_ceil(pairs).min(longest / MIN_CHUNK)
    };
    if chunks >= 2 {
        let stride = group * (hd + 2);
        let mut partial = vec![0f32; pairs * chunks * stride];
        let p = Out(partial.as_mut_ptr());
        pool.run(pairs * chunks, &|task| {
            let (pair, c) = (task / chunks, task % chunks);
            let (i, g) = (pair / s.n_head_kv, pair % s.n_head_kv);
            let (first, pos) = span(i);
            let n = pos + 1 - first;
            let (c0, c1) = (first + n * c / chunks, first + n * (c + 1) / chunks);
            // SAFETY: task (pair, c) owns its stride of `partial`.
            let part = unsafe { p.slice(task * stride, stride) };
            if c0 == c1 {
                part.iter_mut().for_each(|v| *v = 0.0);
                part[group * hd..]
                    .iter_mut()
                    .step_by(2)
                    .for_each(|m| *m = f32::NEG_INFINITY);
                return;
            }
            let (acc, ml) = part.split_at_mut(group * hd);
            attend_group(i, g, c0, c1 - 1, acc, ml);
        });
        // Merge: out = Σ_c e^(m_c − M) acc_c / Σ_c e^(m_c − M) l_c.
        for pair in 0..pairs {
            let (i, g) = (pair / s.n_head_kv, pair % s.n_head_kv);
            for hh in 0..group {
                let h = g * group + hh;
                let part = |c: usize| &partial[(pair * chunks + c) * stride..][..stride];
                let m = (0..chunks)
                    .map(|c| part(c)[group * hd + 2 * hh])
                    .fold(f32::NEG_INFINITY, f32::max);
                // SAFETY: the tasks are done; each (token, head) slice is written once here.
                let dst = unsafe { o.slice(i * q_dim + h * hd, hd) };
                dst.iter_mut().for_each(|v| *v = 0.0);
                let mut l = 0f32;
                for c in 0..chunks {
                    let pc = part(c);
                    let w = (pc[group * hd + 2 * hh] - m).exp();
                    l += w * pc[group * hd + 2 * hh + 1];
                    for (d, &a) in dst.iter_mut().zip(&pc[hh * hd..(hh + 1) * hd]) {
                        *d += w * a;
                    }
                }
                let inv = 1.0 / l;
                dst.iter_mut().for_each(|v| *v *= inv);
            }
        }
        return;
    }
    if pairs >= 4 * threads {
        // Tiles of up to QUERY_TILE consecutive tokens of one sequence: each
        // task reads a key or value row once for the tile's tokens and the
        // group's heads. With AVX-512 a tile fills the 16 lanes of the
        // row-parallel kernel instead.
        let tile_tokens = if lanes { LANES / group } else { QUERY_TILE };
        let mut tiles: Vec<(usize, usize)> = Vec::new();
        for i in 0..t {
            match tiles.last_mut() {
                Some((i0, n))
                    if *n < tile_tokens
                        && tok_seq[*i0] == tok_seq[i]
                        && tok_pos[*i0 + *n - 1] + 1 == tok_pos[i] =>
                {
                    *n += 1
                }
                _ => tiles.push((i, 1)),
            }
        }
        pool.run(tiles.len() * s.n_head_kv, &|task| {
            let ((i0, nt), g) = (tiles[task / s.n_head_kv], task % s.n_head_kv);
            let h0 = g * group;
            let mut toks = [(0, 0, &q[..0]); LANES];
            for (ti, tk) in toks.iter_mut().enumerate().take(nt) {
                let i = i0 + ti;
                let (first, pos) = span(i);
                *tk = (
                    first,
                    pos,
                    &q[i * q_dim + h0 * hd..i * q_dim + (h0 + group) * hd],
                );
            }
            let job = TileJob {
                kv,
                table: seqs[tok_seq[i0] as usize].table,
                layer,
                g,
                toks: &toks[..nt],
                n_heads: group,
                hd,
                scale: s.scale,
            };
            let mut acc = vec![0f32; nt * group * hd];
            let mut ml = vec![0f32; 2 * nt * group];
            SCORES.with(|buf| {
                let mut buf = buf.borrow_mut();
                #[cfg(target_arch = "x86_64")]
                if lanes {
                    // SAFETY: `simd.is_avx512()` means detect() saw AVX-512 F
                    // (and AVX2, FMA, F16C); the tile has at most LANES rows.
                    unsafe { attend_tile_avx512(&job, &mut buf, &mut acc, &mut ml) };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: `simd.is_avx2()` means detect() saw AVX2, FMA and F16C.
                    unsafe { attend_tile_avx2(&job, &mut buf, &mut acc, &mut ml) };
                    return;
                }
                attend_tile::<false>(&job, &mut buf, &mut acc, &mut ml);
            });
            for ti in 0..nt {
                // SAFETY: task (tile, g) owns heads h0..h0 + group of its tokens in `out`.
                let dst = unsafe { o.slice((i0 + ti) * q_dim + h0 * hd, group * hd) };
                for (h, d) in dst.chunks_exact_mut(hd).enumerate() {
                    let k = ti * group + h;
                    let inv = 1.0 / ml[2 * k + 1];
                    for (o, &a) in d.iter_mut().zip(&acc[k * hd..(k + 1) * hd]) {
                        *o = a * inv;
                    }
                }
            }
        });
        return;
    }
    // Short decode spans: one task per (token, KV head) on the lanes,
    // else per (token, query head).
    if lanes {
        pool.run(t * s.n_head_kv, &|task| {
            let (i, g) = (task / s.n_head_kv, task % s.n_head_kv);
            let (first, pos) = span(i);
            let mut acc = vec![0f32; group * hd];
            let mut ml = [0f32; 2 * LANES];
            attend_group(i, g, first, pos, &mut acc, &mut ml[..2 * group]);
            // SAFETY: task (i, g) owns heads g·group .. (g + 1)·group of token i.
            let dst = unsafe { o.slice(i * q_dim + g * group * hd, group * hd) };
            for (h, d) in dst.chunks_exact_mut(hd).enumerate() {
                let inv = 1.0 / ml[2 * h + 1];
                for (o, &a) in d.iter_mut().zip(&acc[h * hd..(h + 1) * hd]) {
                    *o = a * inv;
                }
            }
        });
        return;
    }
    pool.run(t * s.n_head, &|task| {
        let (i, h0) = (task / s.n_head, task % s.n_head);
        let (first, pos) = span(i);
        let job = HeadJob {
            kv,
            table: seqs[tok_seq[i] as usize].table,
            layer,
            g: h0 / group,
            first,
            pos,
            q: &q[i * q_dim + h0 * hd..i * q_dim + (h0 + 1) * hd],
            n_heads: 1,
            hd,
            scale: s.scale,
        };
        // SAFETY: task (i, h0) owns head h0 of token i in `out`.
        let dst = unsafe { o.slice(i * q_dim + h0 * hd, hd) };
        let mut ml = [0f32; 2];
        run_attend(&job, avx2, dst, &mut ml);
        let inv = 1.0 / ml[1];
        dst.iter_mut().for_each(|v| *v *= inv);
    });
}

/// Consecutive tokens of one sequence (`toks`: first and last position
/// attended, and the group's queries) against KV head `g`.
pub(super) struct TileJob<'a> {
    pub kv: &'a KvPool,
    pub table: &'a [u32],
    pub layer: usize,
    pub g: usize,
    pub toks: &'a [(usize, usize, &'a [f32])],
    pub n_heads: usize,
    pub hd: usize,
    pub scale: f32,
}

/// Row `j` of a tile's keys or values (`data`), as f32.
#[inline(always)]
pub(super) fn load_row_into(job: &TileJob, data: &[u8], j: usize, row: &mut [f32]) {
    kv_row(job.kv, job.table, job.layer, job.g, data, j, row)
}

/// Row `j` of KV head `g`'s keys or values (`data`) in `layer`, as f32.
#[inline(always)]
fn kv_row(
    kv: &KvPool,
    table: &[u32],
    layer: usize,
    g: usize,
    data: &[u8],
    j: usize,
    row: &mut [f32],
) {
    let at = kv.at(table, layer, j, g * row.len());
    let n = row.len() * kv.ty.bytes();
    dequantize(kv.ty.ggml(), &data[at..at + n], row).expect("whole rows");
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_tile_avx2(job: &TileJob, scores: &mut Vec<f32>, acc: &mut [f32], ml: &mut [f32]) {
    attend_tile::<true>(job, scores, acc, ml)
}

/// [`attend`] for a tile of tokens: every key and value row of the tiles'
/// spans is loaded once; (token `ti`, head `h`) is entry `ti · n_heads + h`
/// of `acc` (rows of `hd`) and of `ml` (pairs).
#[inline(always)]
fn attend_tile<const F: bool>(
    job: &TileJob,
    scores: &mut Vec<f32>,
    acc: &mut [f32],
    ml: &mut [f32],
) {
    let (hd, nh) = (job.hd, job.n_heads);
    let lo = job.toks.iter().map(|t| t.0).min().unwrap_or(0);
    let hi = job.toks.iter().map(|t| t.1).max().unwrap_or(0);
    let n = hi + 1 - lo;
    let rows = job.toks.len() * nh;
    scores.clear();
    scores.resize(rows * n, 0.0);
    let head = HeadJob {
        kv: job.kv,
        table: job.table,
        layer: job.layer,
        g: job.g,
        first: lo,
        pos: hi,
        q: &[],
        n_heads: nh,
        hd,
        scale: job.scale,
    };
    let mut row = [0f32; MAX_HEAD_DIM];
    let row = &mut row[..hd];
    for j in lo..=hi {
        load_row(&head, &job.kv.k, j, row);
        for (ti, &(first, pos, q)) in job.toks.iter().enumerate() {
            if j < first || j > pos {
                continue;
            }
            for h in 0..nh {
                scores[(ti * nh + h) * n + j - lo] =
                    dot8(&q[h * hd..(h + 1) * hd], row) * job.scale;
            }
        }
    }
    for (ti, &(first, pos, _)) in job.toks.iter().enumerate() {
        for h in 0..nh {
            let k = ti * nh + h;
            let sc = &mut scores[k * n + first - lo..k * n + pos + 1 - lo];
            (ml[2 * k], ml[2 * k + 1]) = softmax_partial::<F>(sc);
        }
    }
    acc[..rows * hd].iter_mut().for_each(|v| *v = 0.0);
    for j in lo..=hi {
        load_row(&head, &job.kv.v, j, row);
        for (ti, &(first, pos, _)) in job.toks.iter().enumerate() {
            if j < first || j > pos {
                continue;
            }
            for h in 0..nh {
                let k = ti * nh + h;
                let p = scores[k * n + j - lo];
                for (d, &v) in acc[k * hd..(k + 1) * hd].iter_mut().zip(row.iter()) {
                    *d = madd::<F>(p, v, *d);
                }
            }
        }
    }
}

/// [`attend`] on the detected SIMD level with this thread's scores buffer.
fn run_attend(job: &HeadJob, avx2: bool, acc: &mut [f32], ml: &mut [f32]) {
    SCORES.with(|buf| {
        let mut buf = buf.borrow_mut();
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `simd.is_avx2()` means detect() saw AVX2, FMA and F16C.
            unsafe { attend_avx2(job, &mut buf, acc, ml) };
            return;
        }
        let _ = avx2;
        attend::<false>(job, &mut buf, acc, ml);
    });
}

/// Consecutive query heads of one token that share KV head `g`.
struct HeadJob<'a> {
    kv: &'a KvPool,
    table: &'a [u32],
    layer: usize,
    g: usize,
    first: usize,
    pos: usize,
    q: &'a [f32],
    n_heads: usize,
    hd: usize,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(job: &HeadJob, scores: &mut Vec<f32>, acc: &mut [f32], ml: &mut [f32]) {
    attend::<true>(job, scores, acc, ml)
}

/// Row `j` of the keys or values of `job`, as f32.
#[inline(always)]
fn load_row(job: &HeadJob, data: &[u8], j: usize, row: &mut [f32]) {
    kv_row(job.kv, job.table, job.layer, job.g, data, j, row)
}

#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Scores to `e^(s − m)` in place; returns `m` (the largest score) and the
/// sum of the exponentials (eight partial sums, so the loop vectorises).
#[inline(always)]
fn softmax_partial<const F: bool>(sc: &mut [f32]) -> (f32, f32) {
    let m = sc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut l8 = [0f32; 8];
    for chunk in sc.chunks_mut(8) {
        for (v, l) in chunk.iter_mut().zip(l8.iter_mut()) {
            *v = exp_approx::<F>(*v - m);
            *l += *v;
        }
    }
    (m, l8.iter().sum())
}

/// Softmax partials of `job`'s heads over positions `first..=pos`: per head
/// the largest score `m` and `l = Σ e^(s − m)` in `ml` (pairs), and
/// `Σ e^(s − m) · v` in `acc` (unnormalised).
#[inline(always)]
fn attend<const F: bool>(job: &HeadJob, scores: &mut Vec<f32>, acc: &mut [f32], ml: &mut [f32]) {
    let (hd, nh) = (job.hd, job.n_heads);
    let n = job.pos + 1 - job.first;
    scores.clear();
    scores.resize(nh * n, 0.0);
    let mut row = [0f32; MAX_HEAD_DIM];
    let row = &mut row[..hd];
    for (jj, j) in (job.first..=job.pos).enumerate() {
        load_row(job, &job.kv.k, j, row);
        for h in 0..nh {
            scores[h * n + jj] = dot8(&job.q[h * hd..(h + 1) * hd], row) * job.scale;
        }
    }
    for h in 0..nh {
        (ml[2 * h], ml[2 * h + 1]) = softmax_partial::<F>(&mut scores[h * n..(h + 1) * n]);
    }
    acc[..nh * hd].iter_mut().for_each(|v| *v = 0.0);
    for (jj, j) in (job.first..=job.pos).enumerate() {
        load_row(job, &job.kv.v, j, row);
        for h in 0..nh {
            let p = scores[h * n + jj];
            for (d, &v) in acc[h * hd..(h + 1) * hd].iter_mut().zip(row.iter()) {
                *d = madd::<F>(p, v, *d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvType, Logits};

    /// Plain f64 softmax attention for one query head over positions first..=pos.
    fn reference(
        q: &[f32],
        keys: &[Vec<f32>],
        vals: &[Vec<f32>],
        first: usize,
        pos: usize,
        scale: f32,
    ) -> Vec<f64> {
        let s: Vec<f64> = (first..=pos)
            .map(|j| {
                q.iter()
                    .zip(&keys[j])
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let l: f64 = w.iter().sum();
        let mut out = vec![0f64; q.len()];
        for (jj, j) in (first..=pos).enumerate() {
            for (o, v) in out.iter_mut().zip(&vals[j]) {
                *o += w[jj] / l * *v as f64;
            }
        }
        out
    }

    /// Decode-shaped steps (one or two tokens, long spans) take the split
    /// path, prompt-shaped ones the tile path (rows in lanes with AVX-512); with and without a window,
    /// both equal an f64 softmax over the same f32 cache.
    #[test]
    fn split_and_whole_spans_equal_a_plain_softmax() {
        // SmolLM2's shape (groups of 3 heads of 64) and Gemma 3 270M's (one
        // group of 4 heads of 256).
        for (n_head, n_head_kv, hd) in [(9usize, 3usize, 64usize), (4, 1, 256)] {
            let n_pos = 700usize;
            let kv_dim = n_head_kv * hd;
            let mut pool = KvPool::new(1, kv_dim, 16, n_pos.div_ceil(16), KvType::F32);
            let table: Vec<u32> = (0..n_pos.div_ceil(16) as u32).collect();
            let mut seed = 7u64;
            let mut rnd = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            };
            let (mut keys, mut vals) = (vec![vec![]; n_head_kv], vec![vec![]; n_head_kv]);
            for p in 0..n_pos {
                let k: Vec<f32> = (0..kv_dim).map(|_| rnd() * 3.0).collect();
                let v: Vec<f32> = (0..kv_dim).map(|_| rnd()).collect();
                pool.store(&table, 0, p, &k, &v);
                for g in 0..n_head_kv {
                    keys[g].push(k[g * hd..(g + 1) * hd].to_vec());
                    vals[g].push(v[g * hd..(g + 1) * hd].to_vec());
                }
            }
            let threads = ThreadPool::new(2);
            for window in [None, Some(300)] {
                for positions in [
                    vec![699u32],
                    vec![150, 699],
                    (600..620).collect::<Vec<u32>>(),
                    // Scattered positions: tiles of one token each.
                    vec![699, 300, 40, 650],
                    vec![5],
                ] {
                    let t = positions.len();
                    let q: Vec<f32> = (0..t * n_head * hd).map(|_| rnd()).collect();
                    let tokens = vec![0u32; t];
                    let seqs = [SeqStep {
                        tokens: &tokens,
                        pos0: 0,
                        table: &table,
                        logits: Logits::None,
                    }];
                    let tok_seq = vec![0u32; t];
                    let shape = AttentionShape {
                        n_head,
                        n_head_kv,
                        head_dim: hd,
                        scale: 0.125,
                        window,
                    };
                    let mut out = vec![0f32; t * n_head * hd];
                    for simd in [Simd::detect(), Simd::SCALAR] {
                        attention(
                            &threads, simd, &pool, 0, &seqs, &tok_seq, &positions, &q, &shape,
                            &mut out,
                        );
                        for (i, &pos) in positions.iter().enumerate() {
                            let pos = pos as usize;
                            let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                            for h in 0..n_head {
                                let g = h / (n_head / n_head_kv);
                                let qh = &q[(i * n_head + h) * hd..][..hd];
                                let want = reference(qh, &keys[g], &vals[g], first, pos, 0.125);
                                let got = &out[(i * n_head + h) * hd..][..hd];
                                for (a, b) in got.iter().zip(&want) {
                                    assert!(
                                        (*a as f64 - b).abs() < 2e-5,
                                        "{window:?} {positions:?} token {i} head {h}: {a} vs {b}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
