//! Causal grouped-query attention over the paged KV pool (f32 or f16) for a
//! batch of sequences, optionally limited to a sliding window; one pool task
//! per (token, head). Key dots
//! use the matmul kernels of the cache's element type, so f16 keys are
//! converted in registers (F16C) rather than copied.

use super::kv::KvPool;
use super::ops::softmax;
use super::SeqStep;
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
const MAX_HEAD_DIM: usize = 512;

thread_local! {
    /// Per-thread scores buffer, reused across calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `q` holds the queries of every token of the step (`tok_seq[i]` is token
/// i's sequence in `seqs`, `tok_pos[i]` its position); the pool already holds
/// their keys and values. Writes `T × n_head × head_dim` values to `out`.
///
/// One task per (token, KV head) when there are enough of them: each key and
/// value row is converted to f32 once and used by every query head of its
/// group. With few tokens (decode), one task per (token, query head) instead,
/// so both threads have work.
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
    // Heads per task: the whole group, or one head when tasks would be few.
    let per_task = if t * s.n_head_kv >= 4 * pool.n_threads() {
        group
    } else {
        1
    };
    let tasks_per_token = s.n_head / per_task;
    let o = Out(out.as_mut_ptr());
    let avx2 = simd.is_avx2();
    pool.run(t * tasks_per_token, &|task| {
        let (i, k) = (task / tasks_per_token, task % tasks_per_token);
        let h0 = k * per_task;
        let pos = tok_pos[i] as usize;
        let job = HeadJob {
            kv,
            table: seqs[tok_seq[i] as usize].table,
            layer,
            g: h0 / group,
            first: s.window.map_or(0, |w| (pos + 1).saturating_sub(w)),
            pos,
            q: &q[i * q_dim + h0 * hd..i * q_dim + (h0 + per_task) * hd],
            n_heads: per_task,
            hd,
            scale: s.scale,
        };
        // SAFETY: task (i, k) owns heads h0..h0 + per_task of token i in `out`.
        let dst = unsafe { o.slice(i * q_dim + h0 * hd, per_task * hd) };
        SCORES.with(|buf| {
            let mut buf = buf.borrow_mut();
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: `simd.is_avx2()` means detect() saw AVX2, FMA and F16C.
                unsafe { attend_avx2(&job, &mut buf, dst) };
                return;
            }
            let _ = avx2;
            attend(&job, &mut buf, dst);
        });
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
unsafe fn attend_avx2(job: &HeadJob, scores: &mut Vec<f32>, dst: &mut [f32]) {
    attend(job, scores, dst)
}

/// Row `j` of the keys or values of `job`, as f32.
#[inline(always)]
fn load_row(job: &HeadJob, data: &[u8], j: usize, row: &mut [f32]) {
    let kv = job.kv;
    let at = kv.at(job.table, job.layer, j, job.g * job.hd);
    let n = job.hd * kv.ty.bytes();
    dequantize(kv.ty.ggml(), &data[at..at + n], row).expect("whole rows");
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

#[inline(always)]
fn attend(job: &HeadJob, scores: &mut Vec<f32>, dst: &mut [f32]) {
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
        softmax(&mut scores[h * n..(h + 1) * n]);
    }
    dst.iter_mut().for_each(|v| *v = 0.0);
    for (jj, j) in (job.first..=job.pos).enumerate() {
        load_row(job, &job.kv.v, j, row);
        for h in 0..nh {
            let p = scores[h * n + jj];
            for (d, &v) in dst[h * hd..(h + 1) * hd].iter_mut().zip(row.iter()) {
                *d += p * v;
            }
        }
    }
}
