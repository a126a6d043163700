//! Causal grouped-query attention over the paged KV pool (f32 or f16) for a
//! batch of sequences, optionally limited to a sliding window; pool tasks
//! per (tile of tokens, KV head), per (token, query head), or per chunk of
//! a span at decode (see [`attention`]). Key dots use the matmul kernels of
//! the cache's element type, so f16 keys are converted in registers (F16C)
//! rather than copied.
//!
//! Every path cuts a row's span at the same absolute positions (multiples
//! of [`BLOCK`]) and merges the blocks' softmax partials in position order
//! with one function ([`fold`]), and the kernels compute a row's partials
//! independently of the other rows of their tile. So a row's bits depend
//! only on its query and its span — not on the batch, the tile, the path or
//! how many tasks its span was split over: a prompt prefilled in one batch,
//! resumed from the prefix cache, decoded beside others or verified as a
//! speculative draft gives what plain decoding gives.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(target_arch = "x86_64")]
use super::attend_avx512::attend_tile_avx512;
use super::ops::{exp_approx, madd};
use super::SeqStep;
use crate::kv::{decode, KvPool, KvType};
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
/// Positions per softmax block: block `b` holds positions `b·BLOCK ..
/// (b + 1)·BLOCK`, whatever the span, tile or task.
pub(super) const BLOCK: usize = 64;
/// Most rows (token × query head) of an AVX-512 attention tile: its lanes.
pub(super) const LANES: usize = 16;
/// Most tokens of one sequence per task when there are many tokens.
const QUERY_TILE: usize = 4;

thread_local! {
    /// Per-thread scores buffer, reused across calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread chunk of 8 positions' keys (`[d][position]`) for the
    /// AVX2 and scalar kernels, reused across calls.
    static KEYS: std::cell::RefCell<Vec<[f32; 8]>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The tile kernel of the detected SIMD level.
#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    /// Rows in the 16 lanes of AVX-512 ([`attend_tile_avx512`]).
    Lanes,
    Avx2,
    Scalar,
}

impl Kernel {
    fn pick(simd: Simd, group: usize) -> Kernel {
        if cfg!(target_arch = "x86_64") && simd.is_avx512() && group <= LANES {
            Kernel::Lanes
        } else if simd.is_avx2() {
            Kernel::Avx2
        } else {
            Kernel::Scalar
        }
    }

    /// Softmax partials of `job`'s rows over the blocks `run` (each
    /// token's span cut to them), merged block by block in position order
    /// with [`merge_weights`]: `Σ e^(s − m)·v` into `acc` (rows of `hd`),
    /// `(m, l)` pairs into `ml`. Every row is written.
    fn run(self, job: &TileJob, run: Range<usize>, acc: &mut [f32], ml: &mut [f32]) {
        SCORES.with(|buf| {
            let mut buf = buf.borrow_mut();
            #[cfg(target_arch = "x86_64")]
            if self == Kernel::Lanes {
                // SAFETY: `Lanes` means detect() saw AVX-512 F (and AVX2, FMA,
                // F16C) and a group of at most LANES heads; callers tile at most
                // LANES rows for it.
                return unsafe { attend_tile_avx512(job, run, &mut buf, acc, ml) };
            }
            let rows = job.toks.len() * job.n_heads;
            acc[..rows * job.hd].fill(0.0);
            for p in ml[..2 * rows].chunks_exact_mut(2) {
                (p[0], p[1]) = (f32::NEG_INFINITY, 0.0);
            }
            each_block(job, run, |b, row0, ab, mlb| {
                #[cfg(target_arch = "x86_64")]
                if self == Kernel::Avx2 {
                    // SAFETY: `Avx2` means detect() saw AVX2, FMA and F16C.
                    unsafe { attend_tile_avx2(b, &mut buf, ab, mlb) };
                } else {
                    attend_tile::<false>(b, &mut buf, ab, mlb);
                }
                #[cfg(not(target_arch = "x86_64"))]
                attend_tile::<false>(b, &mut buf, ab, mlb);
                fold(
                    &mut acc[row0 * job.hd..],
                    &mut ml[2 * row0..],
                    ab,
                    mlb,
                    job.hd,
                );
            });
        })
    }
}

/// `q` holds the queries of every token of the step (`tok_seq[i]` is token
/// i's sequence in `seqs`, `tok_pos[i]` its position); the pool already holds
/// their keys and values. Writes `T × n_head × head_dim` values to `out`.
///
/// One task per (tile of consecutive tokens of a sequence, KV head) when
/// there are enough (token, KV head) pairs: each key and value row is
/// converted to f32 once and used by every query head of the group for
/// every token of the tile. With few pairs (decode) and spans of two blocks
/// or more, each (token, KV head) span is split into runs of blocks, one
/// task per run for the whole group, so both threads have work and each row
/// is still read once per group. Short decode spans take one task per
/// (token, KV head) on the lanes kernel, else per (token, query head).
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
    let blocks = |i: usize| {
        let (first, pos) = span(i);
        first / BLOCK..pos / BLOCK + 1
    };
    let kernel = Kernel::pick(simd, group);
    let base = TileJob {
        kv,
        table: &[],
        layer,
        g: 0,
        toks: &[],
        n_heads: group,
        hd,
        scale: s.scale,
    };
    let o = Out(out.as_mut_ptr());
    let pairs = t * s.n_head_kv;
    let many = pairs >= 4 * threads;
    let most = (0..t).map(|i| blocks(i).len()).max().unwrap_or(0);
    if !many && group > 1 && most >= 2 {
        // Decode: a task per block of each (token, KV head) span, its
        // partials kept apart; the task that finishes a span's last block
        // folds them in position order, as a single task would have.
        let stride = group * (hd + 2);
        let mut partial = vec![0f32; pairs * most * stride];
        let p = Out(partial.as_mut_ptr());
        let mut first_task = Vec::with_capacity(pairs + 1);
        first_task.push(0);
        for pair in 0..pairs {
            first_task.push(first_task[pair] + blocks(pair / s.n_head_kv).len());
        }
        let done: Vec<AtomicUsize> = (0..pairs).map(|_| AtomicUsize::new(0)).collect();
        pool.run(first_task[pairs], &|task| {
            let pair = first_task.partition_point(|&f| f <= task) - 1;
            let (i, g) = (pair / s.n_head_kv, pair % s.n_head_kv);
            let b = blocks(i);
            let blk = b.start + task - first_task[pair];
            let (first, pos) = span(i);
            let toks = [(first, pos, &q[i * q_dim + g * group * hd..][..group * hd])];
            let job = TileJob {
                table: seqs[tok_seq[i] as usize].table,
                g,
                toks: &toks,
                ..base
            };
            {
                // SAFETY: this task alone writes block `blk`'s slot of `pair`.
                let slot = unsafe { p.slice((pair * most + blk - b.start) * stride, stride) };
                let (acc, ml) = slot.split_at_mut(group * hd);
                kernel.run(&job, blk..blk + 1, acc, ml);
            }
            // The last of the span's blocks to finish folds them all: the
            // AcqRel count orders every other block's slot writes before it.
            if done[pair].fetch_add(1, Ordering::AcqRel) + 1 < b.len() {
                return;
            }
            // SAFETY: every block of `pair` is done and no other task reads or
            // writes its slots or its (token, group) slice of `out` now.
            let slots = unsafe { p.slice(pair * most * stride, b.len() * stride) };
            let dst = unsafe { o.slice(i * q_dim + g * group * hd, group * hd) };
            dst.fill(0.0);
            let mut ml = vec![f32::NEG_INFINITY; 2 * group];
            for slot in slots.chunks_exact(stride) {
                fold(dst, &mut ml, &slot[..group * hd], &slot[group * hd..], hd);
            }
            normalise(dst, &ml, hd);
        });
        return;
    }
    // Tiles of consecutive tokens of one sequence: up to QUERY_TILE (or a
    // lanes kernel's worth) when there are many tokens, one each at decode.
    // Each task reads a key or value row once for its tile's rows.
    let per_head = !many && kernel != Kernel::Lanes;
    let tile_tokens = match (many, kernel) {
        (true, Kernel::Lanes) => LANES / group,
        (true, _) => QUERY_TILE,
        (false, _) => 1,
    };
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
    // Per task: a KV head's group of query heads, or (short decode spans
    // off the lanes kernel) one query head, so the threads have work.
    let (units, nh) = if per_head {
        (s.n_head, 1)
    } else {
        (s.n_head_kv, group)
    };
    pool.run(tiles.len() * units, &|task| {
        let ((i0, nt), u) = (tiles[task / units], task % units);
        let h0 = u * nh;
        let mut toks = [(0, 0, &q[..0]); LANES];
        for (ti, tk) in toks.iter_mut().enumerate().take(nt) {
            let (first, pos) = span(i0 + ti);
            *tk = (first, pos, &q[(i0 + ti) * q_dim + h0 * hd..][..nh * hd]);
        }
        let job = TileJob {
            table: seqs[tok_seq[i0] as usize].table,
            g: h0 / group,
            toks: &toks[..nt],
            n_heads: nh,
            ..base
        };
        let rows = nt * nh;
        let mut acc = vec![0f32; rows * hd];
        let mut ml = vec![0f32; 2 * rows];
        let run = toks[0].0 / BLOCK..toks[nt - 1].1 / BLOCK + 1;
        kernel.run(&job, run, &mut acc, &mut ml);
        for ti in 0..nt {
            // SAFETY: task (tile, unit) owns heads h0..h0 + nh of its tokens in `out`.
            let dst = unsafe { o.slice((i0 + ti) * q_dim + h0 * hd, nh * hd) };
            dst.copy_from_slice(&acc[ti * nh * hd..(ti + 1) * nh * hd]);
            normalise(dst, &ml[2 * ti * nh..2 * (ti + 1) * nh], hd);
        }
    });
}

/// `job` cut to each block of `run` in turn (each token's span cut to the
/// block, tokens that miss it left out): `block(cut job, first row, acc,
/// ml)` with buffers sized for the cut job's rows.
fn each_block(
    job: &TileJob,
    run: Range<usize>,
    mut block: impl FnMut(&TileJob, usize, &mut [f32], &mut [f32]),
) {
    let (hd, nh) = (job.hd, job.n_heads);
    let nt = job.toks.len();
    let mut acc = vec![0f32; nt * nh * hd];
    let mut ml = vec![0f32; 2 * nt * nh];
    for b in run {
        let (lo, hi) = (b * BLOCK, b * BLOCK + BLOCK - 1);
        // The tokens of a tile have rising spans: those that meet the block
        // are consecutive.
        let Some(a) = job.toks.iter().position(|t| t.0 <= hi && t.1 >= lo) else {
            continue;
        };
        let mut cut = [(0, 0, &[][..]); QUERY_TILE];
        let mut n = 0;
        for &(first, pos, q) in job.toks[a..].iter().take_while(|t| t.0 <= hi && t.1 >= lo) {
            cut[n] = (first.max(lo), pos.min(hi), q);
            n += 1;
        }
        let rows = n * nh;
        let job = TileJob {
            toks: &cut[..n],
            ..*job
        };
        block(&job, a * nh, &mut acc[..rows * hd], &mut ml[..2 * rows]);
    }
}

/// How a block's softmax partials `(mb, lb)` of a row merge into its
/// running `(m, l)` (`m` = −∞ before the first): the merged `(m, l)` and the
/// weights of the running and the block's value sums, each sum becoming
/// `a·wa + x·wb` (a product each, then a sum: no fused step). None where the
/// block holds no position of the row. Every path merges with this, in
/// position order: its rounding is part of a row's result.
#[inline(always)]
pub(super) fn merge_weights(m: f32, l: f32, mb: f32, lb: f32) -> Option<[f32; 4]> {
    if mb == f32::NEG_INFINITY {
        return None;
    }
    if m == f32::NEG_INFINITY {
        return Some([mb, lb, 0.0, 1.0]);
    }
    let mx = m.max(mb);
    let (wa, wb) = ((m - mx).exp(), (mb - mx).exp());
    Some([mx, l * wa + lb * wb, wa, wb])
}

/// Merges a block's partials (`ab`: rows of `hd`; `mlb`: `(m, l)` pairs)
/// into the running ones of the same rows.
fn fold(acc: &mut [f32], ml: &mut [f32], ab: &[f32], mlb: &[f32], hd: usize) {
    for (r, p) in mlb.chunks_exact(2).enumerate() {
        let Some([m, l, wa, wb]) = merge_weights(ml[2 * r], ml[2 * r + 1], p[0], p[1]) else {
            continue;
        };
        (ml[2 * r], ml[2 * r + 1]) = (m, l);
        for (a, &x) in acc[r * hd..(r + 1) * hd].iter_mut().zip(&ab[r * hd..]) {
            *a = *a * wa + x * wb;
        }
    }
}

/// Rows of unnormalised value sums divided by their `l`.
fn normalise(rows: &mut [f32], ml: &[f32], hd: usize) {
    for (row, p) in rows.chunks_exact_mut(hd).zip(ml.chunks_exact(2)) {
        let inv = 1.0 / p[1];
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Consecutive tokens of one sequence (`toks`: first and last position
/// attended, and the group's queries) against KV head `g`.
#[derive(Clone, Copy)]
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

/// Row `j` of a tile's values (`data`), as f32.
#[inline(always)]
fn load_row_into(job: &TileJob, data: &[u8], j: usize, row: &mut [f32]) {
    kv_row(job.kv, job.table, job.layer, job.g, data, j, row)
}

/// [`load_row_into`] for the SIMD kernels: an f32 row copied, an f16 row
/// converted in place, 8 elements an instruction. Through the general
/// `dequantize` (its checks and a call per row of 64) a node's decode step
/// spent ~10% of its time converting rows (perf, SmolLM2, positions ≤ ~150).
///
/// # Safety
/// The caller runs with AVX and F16C (both SIMD kernels enable them).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn load_row_simd(job: &TileJob, data: &[u8], j: usize, row: &mut [f32]) {
    let n = row.len();
    let at = job.kv.value_at(job.table, job.layer, j, job.g * n);
    match job.kv.ty {
        KvType::F32 => {
            let src = &data[at..at + 4 * n];
            // SAFETY: `src` holds `4 n` bytes, `row` `n` f32s, byte for byte
            // (little-endian f32s); they do not overlap.
            std::ptr::copy_nonoverlapping(src.as_ptr(), row.as_mut_ptr() as *mut u8, 4 * n);
        }
        // SAFETY: the caller has AVX and F16C; `data[at..]` holds the row's
        // `2 n` bytes.
        KvType::F16 => crate::tensor::dequant::f16_to_f32_f16c(&data[at..at + 2 * n], row),
    }
}

/// The row loader of a tile kernel: `F` is the AVX2 kernel's.
#[inline(always)]
fn load_row<const F: bool>(job: &TileJob, data: &[u8], j: usize, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if F {
        // SAFETY: `F` is true only inside `attend_tile_avx2`, which enables
        // AVX2, FMA and F16C.
        return unsafe { load_row_simd(job, data, j, row) };
    }
    load_row_into(job, data, j, row)
}

/// Row `j` of KV head `g`'s values (`data`) in `layer`, as f32.
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
    let at = kv.value_at(table, layer, j, g * row.len());
    let n = row.len() * kv.ty.bytes();
    dequantize(kv.ty.ggml(), &data[at..at + n], row).expect("whole rows");
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_tile_avx2(job: &TileJob, scores: &mut Vec<f32>, acc: &mut [f32], ml: &mut [f32]) {
    attend_tile::<true>(job, scores, acc, ml)
}

/// Softmax partials of a tile of tokens: every key and value row of the tiles'
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
    let mut row = [0f32; MAX_HEAD_DIM];
    let row = &mut row[..hd];
    if hd.is_multiple_of(8) {
        // Keys lie transposed: eight positions at a time, each score
        // [`dot8`]'s sums in its order, with the positions in the lanes.
        KEYS.with(|kt| {
            let mut kt = kt.borrow_mut();
            // Every row is written by key_chunk before it is read.
            kt.resize(hd, [0.0; 8]);
            let kt = &mut kt[..hd];
            for c in (lo & !7..=hi).step_by(8) {
                key_chunk::<F>(job, c, lo, hi, kt);
                for (ti, &(first, pos, q)) in job.toks.iter().enumerate() {
                    if c + 7 < first || c > pos {
                        continue;
                    }
                    for h in 0..nh {
                        let s = dot8_lanes(&q[h * hd..(h + 1) * hd], kt);
                        for (i, &s) in s.iter().enumerate() {
                            if (first..=pos).contains(&(c + i)) {
                                scores[(ti * nh + h) * n + c + i - lo] = s * job.scale;
                            }
                        }
                    }
                }
            }
        });
    } else {
        for j in lo..=hi {
            job.kv.key_row(job.table, job.layer, j, job.g, row);
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
        load_row::<F>(job, &job.kv.v, j, row);
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

/// The keys of positions `c .. c + 8` (`c` a multiple of 8) for `job`'s KV
/// head as f32, `kt[d]` holding dimension `d`: loaded a dimension at a time
/// when a KV block holds whole chunks, else those of positions `lo ..= hi`
/// one by one (0 beside them).
#[inline(always)]
fn key_chunk<const F: bool>(job: &TileJob, c: usize, lo: usize, hi: usize, kt: &mut [[f32; 8]]) {
    let kv = job.kv;
    let elem = job.g * kt.len();
    if !kv.block_size().is_multiple_of(8) {
        for (d, row) in kt.iter_mut().enumerate() {
            *row = [0.0; 8];
            for j in lo.max(c)..=hi.min(c + 7) {
                row[j - c] = decode(kv.ty, &kv.k[kv.key_at(job.table, job.layer, j, elem + d)..]);
            }
        }
        return;
    }
    let (at, stride) = (kv.key_at(job.table, job.layer, c, elem), kv.key_stride());
    let bytes = kv.ty.bytes();
    let src = &kv.k[at..at + (kt.len() - 1) * stride + 8 * bytes];
    #[cfg(target_arch = "x86_64")]
    if F && kv.ty == KvType::F16 {
        // SAFETY: `F` is true only inside `attend_tile_avx2`, which enables
        // AVX2 and F16C; `src` holds 8 f16 values at each `d · stride`.
        return unsafe { f16_chunk(src, stride, kt) };
    }
    for (d, row) in kt.iter_mut().enumerate() {
        for (i, o) in row.iter_mut().enumerate() {
            *o = decode(kv.ty, &src[d * stride + i * bytes..]);
        }
    }
}

/// Eight f16 values at each `d · stride` of `src` into `kt[d]`.
///
/// # Safety
/// AVX and F16C; `src` holds `(kt.len() − 1) · stride + 16` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_chunk(src: &[u8], stride: usize, kt: &mut [[f32; 8]]) {
    use std::arch::x86_64::*;
    for (d, row) in kt.iter_mut().enumerate() {
        let h = _mm_loadu_si128(src.as_ptr().add(d * stride) as *const __m128i);
        _mm256_storeu_ps(row.as_mut_ptr(), _mm256_cvtph_ps(h));
    }
}

/// [`dot8`] of `q` with each of eight positions' keys (`kt[d][i]`: position
/// `i`, dimension `d`; `q.len()` a multiple of 8), the same operations in
/// the same order per position, eight positions an instruction.
#[inline(always)]
fn dot8_lanes(q: &[f32], kt: &[[f32; 8]]) -> [f32; 8] {
    let mut acc = [[0f32; 8]; 8];
    for (qc, kc) in q.chunks_exact(8).zip(kt.chunks_exact(8)) {
        for k in 0..8 {
            for i in 0..8 {
                acc[k][i] += qc[k] * kc[k][i];
            }
        }
    }
    // `Iterator::sum`'s fold from its neutral element, and dot8's empty
    // tail added.
    let zero: f32 = [0f32; 0].iter().sum();
    let mut s = [zero; 8];
    for a in &acc {
        for i in 0..8 {
            s[i] += a[i];
        }
    }
    s.map(|x| x + zero)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvType, Logits};

    /// One sequence of `tokens` over the block table `table`.
    fn one_seq<'a>(tokens: &'a [u32], table: &'a [u32]) -> [SeqStep<'a>; 1] {
        [SeqStep {
            tokens,
            pos0: 0,
            table,
            logits: Logits::None,
        }]
    }

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
    /// both equal an f64 softmax over what the cache holds.
    #[test]
    fn split_and_whole_spans_equal_a_plain_softmax() {
        // SmolLM2's shape (groups of 3 heads of 64) and Gemma 3 270M's (one
        // group of 4 heads of 256), over an f32 and an f16 cache (the
        // reference reads what the f16 cache holds).
        let shapes = [(9usize, 3usize, 64usize), (4, 1, 256)];
        let cases = [KvType::F32, KvType::F16]
            .into_iter()
            .flat_map(|ty| shapes.map(|s| (ty, s)));
        for (ty, (n_head, n_head_kv, hd)) in cases {
            let held = |x: f32| match ty {
                KvType::F16 => half::f16::from_f32(x).to_f32(),
                KvType::F32 => x,
            };
            let n_pos = 700usize;
            let kv_dim = n_head_kv * hd;
            let mut pool = KvPool::new(1, kv_dim, 16, n_pos.div_ceil(16), ty);
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
                    keys[g].push(k[g * hd..(g + 1) * hd].iter().map(|&x| held(x)).collect());
                    vals[g].push(v[g * hd..(g + 1) * hd].iter().map(|&x| held(x)).collect());
                }
            }
            let threads = ThreadPool::new(2);
            for window in [None, Some(300)] {
                let shape = AttentionShape {
                    n_head,
                    n_head_kv,
                    head_dim: hd,
                    scale: 0.125,
                    window,
                };
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
                    let seqs = one_seq(&tokens, &table);
                    let tok_seq = vec![0u32; t];
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
                // A row's bits do not depend on its batch: each token of a
                // 20-token step (tiles) against itself alone (a decode step,
                // split across tasks) and in a pair (short tiles).
                let positions: Vec<u32> = (640..660).collect();
                let t = positions.len();
                let q: Vec<f32> = (0..t * n_head * hd).map(|_| rnd()).collect();
                let tokens = vec![0u32; t];
                let seqs = one_seq(&tokens, &table);
                let row = n_head * hd;
                for simd in [Simd::detect(), Simd::SCALAR] {
                    let run = |first: usize, n: usize| {
                        let mut out = vec![0f32; n * row];
                        attention(
                            &threads,
                            simd,
                            &pool,
                            0,
                            &seqs,
                            &vec![0u32; n],
                            &positions[first..first + n],
                            &q[first * row..(first + n) * row],
                            &shape,
                            &mut out,
                        );
                        out
                    };
                    let all = run(0, t);
                    for i in 0..t {
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        let want = bits(&all[i * row..(i + 1) * row]);
                        assert_eq!(bits(&run(i, 1)), want, "{window:?} token {i} alone");
                        let pair = run(i.min(t - 2), 2);
                        let k = i - i.min(t - 2);
                        assert_eq!(
                            bits(&pair[k * row..(k + 1) * row]),
                            want,
                            "{window:?} token {i} in a pair"
                        );
                    }
                }
            }
        }
    }
}
