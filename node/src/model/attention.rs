//! Causal grouped-query attention over the paged KV pool (f32 or f16) for a
//! batch of sequences, optionally limited to a sliding window; one pool task
//! per (token, head). Key dots
//! use the matmul kernels of the cache's element type, so f16 keys are
//! converted in registers (F16C) rather than copied.

use super::kv::KvPool;
use super::SeqStep;
use super::ops::softmax;
use crate::tensor::{dequantize, kernel, Kernel, Simd, ThreadPool};

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

/// Largest head the value accumulation's stack buffer takes.
const MAX_HEAD_DIM: usize = 512;

/// `q` holds the queries of every token of the step (`tok_seq[i]` is token
/// i's sequence in `seqs`, `tok_pos[i]` its position); the pool already holds
/// their keys and values. Writes `T × n_head × head_dim` values to `out`.
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
    let Some(Kernel::F32(dot)) = kernel(kv.ty.ggml(), simd) else {
        unreachable!("F32 and F16 always have float kernels")
    };
    let group = s.n_head / s.n_head_kv;
    let row_bytes = hd * kv.ty.bytes();
    let o = Out(out.as_mut_ptr());
    pool.run(t * s.n_head, &|task| {
        let (i, h) = (task / s.n_head, task % s.n_head);
        let g = h / group;
        let table = seqs[tok_seq[i] as usize].table;
        let pos = tok_pos[i] as usize;
        let first = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qh = &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
        let mut scores: Vec<f32> = (first..=pos)
            .map(|j| {
                let at = kv.at(table, layer, j, g * hd);
                let mut r = [0f32];
                dot(&kv.k[at..at + row_bytes], &[qh], &mut r);
                r[0] * s.scale
            })
            .collect();
        softmax(&mut scores);
        // SAFETY: task (i, h) owns this slice of `out`.
        let dst = unsafe { o.slice(i * q_dim + h * hd, hd) };
        dst.iter_mut().for_each(|v| *v = 0.0);
        let mut row = [0f32; MAX_HEAD_DIM];
        for (j, &p) in (first..=pos).zip(&scores) {
            let at = kv.at(table, layer, j, g * hd);
            dequantize(kv.ty.ggml(), &kv.v[at..at + row_bytes], &mut row[..hd])
                .expect("whole rows");
            for (d, &v) in dst.iter_mut().zip(&row[..hd]) {
                *d += p * v;
            }
        }
    });
}
