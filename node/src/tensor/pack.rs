//! Weights repacked at load for a matrix product over many activation
//! columns at once (a GEMM: prefill, batched decode) instead of one weight
//! row against a few columns.
//!
//! At load, every 32-element block of a weight row becomes unsigned bytes
//! `u` with a row-block scale `dw` (and, for formats with a minimum, an
//! offset `mw`) such that `w = dw · u + mw`, or `w = dw · (u − z)` for the
//! symmetric formats. Sixteen rows form a *panel*: for each block the panel
//! holds its 16 × 32 bytes as eight 64-byte vectors, vector `d` holding
//! elements `4d … 4d + 3` of each row in row order; formats of 4- and 5-bit
//! values keep their weights two to a byte, in four vectors, the 5-bit ones
//! with a plane of fifth bits ([`PackForm`]). After every block's weights
//! the panel holds every block's 16 scales (and 16 offsets) as the file
//! has them: f16, or 8-bit sub-scales with an f16 factor per super-block
//! ([`PackForm::sub`]). One `vpdpbusd` of such a vector against the four
//! activation bytes `4d … 4d + 3` of one column broadcast to every lane
//! adds those four products into each of the 16 rows' sums: the weights are
//! loaded once per block for all the columns of a tile, the activations
//! once per block for all 16 (or 32) rows, and the float work is a few
//! operations per 16 rows × column × block. The integer parts are exact
//! and the activations are quantized as the row kernels quantize them
//! (Q8_0's rule with ggml's f16-rounded Q8_1 sums for the 32-element
//! formats, Q8_K for the K-quants), so the two paths differ only in the
//! order of float additions (the last bits, as a batch's columns and a
//! single column's already did): a prompt prefilled in one batch and the
//! same prompt resumed from the prefix cache agree but for exact near-ties.
//!
//! Once packed, a matrix runs only this way on such CPUs, decode included:
//! the row kernels lose to it even for one column on the models measured,
//! though for some formats it reads more bytes a weight than the file:
//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 take the file's bytes (0.5625–1.0625),
//! Q4_K and Q5_K 0.016 more (a sub-scale a byte, not 6 bits), Q6_K, IQ4_NL
//! and IQ4_XS 0.25–0.5 more (bytes, not 6 or 4 bits).

// Block formats are index arithmetic; explicit index loops read closest to the layouts.
#![allow(clippy::needless_range_loop)]

use super::act::{quantize_q8, quantize_q8k, Q8Block, Q8KBlock};
use super::dequant::{QK, QK_K};
use super::matmul::{Matrix, OutPtr, Scratch, Simd, MAX_MANY};
use super::pack_rows::{int_row, sub_scales};
use super::pool::ThreadPool;
use super::GgmlType;
use std::ops::Range;
use std::sync::Arc;

/// Rows in a panel (one 512-bit vector of i32 sums).
pub const PANEL: usize = 16;

/// Columns of one kernel call (per panel pair); a tile is 2 panels × 6 columns.
pub const TILE_COLS: usize = 6;

/// Most tasks of one packed product.
const MAX_TASKS: usize = 128;

/// How a format's bytes relate to its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackKind {
    /// `w = dw · (u − z)`.
    Sym(i32),
    /// `w = dw · u + mw`.
    Asym,
    /// `w = dw_h · (u − z)` with a scale per 16-element half block (Q6_K).
    Half(i32),
}

impl PackKind {
    pub fn of(dtype: GgmlType) -> Option<PackKind> {
        use GgmlType::*;
        Some(match dtype {
            Q4_0 => PackKind::Sym(8),
            Q5_0 => PackKind::Sym(16),
            Q8_0 | IQ4_NL | IQ4_XS => PackKind::Sym(128),
            Q4_1 | Q5_1 | Q4_K | Q5_K => PackKind::Asym,
            Q6_K => PackKind::Half(32),
            _ => return None,
        })
    }

    /// The `z` of the symmetric kinds (0 for [`PackKind::Asym`]).
    pub fn zero_point(self) -> i32 {
        match self {
            PackKind::Sym(z) | PackKind::Half(z) => z,
            PackKind::Asym => 0,
        }
    }
}

/// Where a 5-bit block's fifth-bit masks start: after its nibbles.
pub const FIFTH_BITS: usize = QK * PANEL / 2;

/// Bytes of a panel block's weights at `bits` a weight (4, 5 or 8), a
/// multiple of 64: every block's weights start on a vector.
pub const fn weight_bytes(bits: u8) -> usize {
    match bits {
        4 => FIFTH_BITS,
        5 => FIFTH_BITS + QK * PANEL / 8,
        _ => QK * PANEL,
    }
}

/// Bytes of one value per row of a panel (a scale or offset vector):
/// 8-bit sub-scales or f16.
pub const fn scale_vec(sub: bool) -> usize {
    if sub {
        PANEL
    } else {
        2 * PANEL
    }
}

/// Blocks of a super-block: the sub-scale forms keep one factor vector per
/// scale vector for eight blocks.
pub const SUPER: usize = 8;

/// Bytes of one factor vector (f16 per row).
pub const FACTOR_VEC: usize = 2 * PANEL;

/// How a packed matrix stores a block: its arithmetic, and how many bits a
/// weight takes. Formats of 4- and 5-bit values keep them as nibbles: a
/// panel block's 512 weights in four vectors, vector `k` holding vector
/// `k`'s weights of the byte form in its low nibbles and vector `k + 4`'s
/// in its high ones; the 5-bit formats (Q5_0, Q5_1, Q5_K) follow them with
/// the fifth bits, one 64-bit mask per byte-form vector (bit `4r + j` for
/// element `4d + j` of row `r`). Decode reads each weight once per token,
/// and on the machines measured its speed follows the bytes it reads
/// (BENCHMARKS.md): 0.5–0.625 bytes a weight of values (4 and 5 bits)
/// against 1 as bytes, plus the scales. A kernel pays two ANDs and a shift
/// per vector for the nibbles, a mask load and a masked add for a fifth bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackForm {
    pub kind: PackKind,
    /// 4, 5 or 8.
    pub bits: u8,
    /// Scales (and offsets) as the file has them. False: f16, the formats
    /// whose file stores one per block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// IQ4_NL). True: an 8-bit sub-scale per block and an f16 factor per
    /// super-block of 256 (the K-quants' `d·sc` and `−dmin·m`, IQ4_XS's
    /// `d·ls`), which no f16 holds exactly. Both widen to the f32 the
    /// kernels multiply by exactly. Decode reads every weight once a token
    /// and its speed follows the bytes it reads: f32 per block was 0.0625
    /// (0.125 with offsets or halves) bytes a weight more.
    pub sub: bool,
}

impl PackForm {
    pub fn of(dtype: GgmlType) -> Option<PackForm> {
        use GgmlType::*;
        Some(PackForm {
            kind: PackKind::of(dtype)?,
            bits: match dtype {
                Q4_0 | Q4_1 | Q4_K => 4,
                Q5_0 | Q5_1 | Q5_K => 5,
                _ => 8,
            },
            sub: matches!(dtype, Q4_K | Q5_K | Q6_K | IQ4_XS),
        })
    }

    /// Bytes of one panel block's weights.
    pub fn weight_bytes(self) -> usize {
        weight_bytes(self.bits)
    }

    /// Bytes of one scale or offset vector.
    pub fn scale_vec(self) -> usize {
        scale_vec(self.sub)
    }

    /// Scale vectors a block has: the scales, then the offsets or the
    /// second half's scales.
    pub fn scale_vecs(self) -> usize {
        match self.kind {
            PackKind::Sym(_) => 1,
            PackKind::Asym | PackKind::Half(_) => 2,
        }
    }

    /// Bytes of one panel block's scales.
    pub fn scale_bytes(self) -> usize {
        self.scale_vec() * self.scale_vecs()
    }

    /// Bytes of a panel of `nb` blocks: the weights, the scales, the
    /// factors of the sub-scale forms, and padding to a multiple of 64 so
    /// that the next panel starts on a vector.
    pub fn panel_bytes(self, nb: usize) -> usize {
        (self.factors_at(nb, nb.next_multiple_of(SUPER))).next_multiple_of(64)
    }

    /// Where block `b`'s scales start in a panel of `nb` blocks.
    pub fn scales_at(self, nb: usize, b: usize) -> usize {
        nb * self.weight_bytes() + b * self.scale_bytes()
    }

    /// Where the factors of block `b`'s super-block start (the sub-scale
    /// forms), after every block's scales.
    pub fn factors_at(self, nb: usize, b: usize) -> usize {
        let per_super = if self.sub {
            FACTOR_VEC * self.scale_vecs()
        } else {
            0
        };
        self.scales_at(nb, nb) + b / SUPER * per_super
    }

    /// Row `r`'s value of scale vector `v` of block `b`, in a `panel` of `nb` blocks.
    pub fn scale(self, panel: &[u8], nb: usize, b: usize, v: usize, r: usize) -> f32 {
        let f16 = |at: usize| half::f16::from_le_bytes([panel[at], panel[at + 1]]).to_f32();
        let at = self.scales_at(nb, b) + v * self.scale_vec();
        if self.sub {
            let factor = f16(self.factors_at(nb, b) + v * FACTOR_VEC + 2 * r);
            panel[at + r] as i8 as f32 * factor
        } else {
            f16(at + 2 * r)
        }
    }

    /// Weight `k` (0..32) of row `r` of a panel block, as the kernels read it.
    pub fn weight(self, blk: &[u8], r: usize, k: usize) -> u8 {
        let (d, j) = (k / 4, k % 4);
        if self.bits == 8 {
            return blk[d * 64 + r * 4 + j];
        }
        let byte = blk[(d % 4) * 64 + r * 4 + j];
        let nibble = if d < 4 { byte & 0x0f } else { byte >> 4 };
        if self.bits == 4 {
            return nibble;
        }
        let bit = (blk[FIFTH_BITS + 8 * d + r / 2] >> (4 * (r % 2) + j)) & 1;
        nibble | bit << 4
    }
}

/// A matrix in the panel layout (see the module's note).
pub struct Packed {
    pub form: PackForm,
    pub rows: usize,
    pub cols: usize,
    /// Anonymous memory: page-aligned, so every vector is 64-byte aligned,
    /// and zero until written, so packing writes each byte once (a zeroed
    /// vector would write it twice: Gemma 3's start −40 ms). A model's
    /// matrices share one mapping ([`super::pack_all`]); `at` is this one's
    /// part.
    buf: Arc<memmap2::MmapMut>,
    at: Range<usize>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("form", &self.form)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl Packed {
    /// Blocks per row.
    pub fn nb(&self) -> usize {
        self.cols / QK
    }

    pub fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// Bytes of one panel (all its blocks).
    pub fn panel_bytes(&self) -> usize {
        self.form.panel_bytes(self.nb())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.at.clone()]
    }

    /// Heap bytes the packed copy takes.
    pub fn size(&self) -> usize {
        self.at.len()
    }

    /// The mapping this copy is part of.
    pub(super) fn mapping(&self) -> &memmap2::MmapMut {
        &self.buf
    }

    /// `at` of the shared mapping `buf`, which holds `w` packed there.
    pub(super) fn part_of(
        w: &Matrix,
        buf: Arc<memmap2::MmapMut>,
        at: Range<usize>,
    ) -> Option<Packed> {
        Some(Packed {
            form: PackForm::of(w.dtype)?,
            rows: w.rows,
            cols: w.cols,
            buf,
            at,
        })
    }
}

/// Bytes `w`'s packed copy takes, if its format has a packed form.
pub(super) fn packed_size(w: &Matrix) -> Option<usize> {
    let form = PackForm::of(w.dtype)?;
    if !w.cols.is_multiple_of(QK) || w.cols == 0 {
        return None;
    }
    Some(w.rows.div_ceil(PANEL) * form.panel_bytes(w.cols / QK))
}

/// Repack `w` into panels, if its format has a packed form.
pub fn pack(w: &Matrix) -> Option<Packed> {
    let size = packed_size(w)?;
    // Zero pages, mapped as they are first written below.
    let mut buf = memmap2::MmapMut::map_anon(size).ok()?;
    pack_into(w, &mut buf[..]);
    Packed::part_of(w, Arc::new(buf), 0..size)
}

/// Repack `w` into `bytes` (zero, [`packed_size`] long; `w`'s format has
/// a packed form).
pub(super) fn pack_into(w: &Matrix, bytes: &mut [u8]) {
    let form = PackForm::of(w.dtype).expect("a format with a packed form");
    let nb = w.cols / QK;
    let panel_bytes = form.panel_bytes(nb);
    let (wb, sv) = (form.weight_bytes(), form.scale_vec());
    let mut u = vec![0u8; w.cols];
    let mut dw = vec![0f32; 2 * nb];
    let mut mw = vec![0f32; nb];
    let mut sub = vec![[0i8; 2]; nb];
    let mut factor = vec![[0f32; 2]; nb.div_ceil(SUPER)];
    for r in 0..w.rows {
        int_row(w.dtype, w.row(r), &mut u, &mut dw, &mut mw);
        if form.sub {
            sub_scales(w.dtype, w.row(r), &mut sub, &mut factor);
        }
        let (pi, lane) = (r / PANEL, r % PANEL);
        let panel = &mut bytes[pi * panel_bytes..(pi + 1) * panel_bytes];
        for b in 0..nb {
            let blk = &mut panel[b * wb..(b + 1) * wb];
            let ub = &u[b * QK..(b + 1) * QK];
            if form.bits == 8 {
                for d in 0..QK / 4 {
                    let at = d * 64 + lane * 4;
                    blk[at..at + 4].copy_from_slice(&ub[4 * d..4 * d + 4]);
                }
            } else {
                let word = |d: usize| u32::from_le_bytes(ub[4 * d..4 * d + 4].try_into().unwrap());
                for k in 0..QK / 8 {
                    let (lo, hi) = (word(k), word(k + 4));
                    let nibbles = (lo & 0x0f0f_0f0f) | (hi & 0x0f0f_0f0f) << 4;
                    blk[k * 64 + lane * 4..k * 64 + lane * 4 + 4]
                        .copy_from_slice(&nibbles.to_le_bytes());
                    if form.bits == 5 {
                        // Each byte's fifth bit to bit j of a nibble (the
                        // multiplier's shifts land them on bits 24..28 apart).
                        for (d, w) in [(k, lo), (k + 4, hi)] {
                            let fifth =
                                (((w >> 4) & 0x0101_0101).wrapping_mul(0x0102_0408) >> 24) as u8;
                            blk[FIFTH_BITS + 8 * d + lane / 2] |= fifth << (4 * (lane % 2));
                        }
                    }
                }
            }
            let (sc, fa) = (form.scales_at(nb, b), form.factors_at(nb, b));
            for v in 0..form.scale_vecs() {
                let x = match (v, form.kind) {
                    (0, _) => dw[2 * b],
                    (_, PackKind::Half(_)) => dw[2 * b + 1],
                    _ => mw[b],
                };
                let f16 = |x: f32| {
                    let h = half::f16::from_f32(x);
                    debug_assert_eq!(h.to_f32(), x, "stored as an f16 exactly");
                    h.to_le_bytes()
                };
                if form.sub {
                    let (s, f) = (sub[b][v], factor[b / SUPER][v]);
                    debug_assert_eq!(s as f32 * f, x, "sub-scale × factor is the scale");
                    panel[sc + v * sv + lane] = s as u8;
                    let at = fa + v * FACTOR_VEC + 2 * lane;
                    panel[at..at + 2].copy_from_slice(&f16(f));
                } else {
                    let at = sc + v * sv + 2 * lane;
                    panel[at..at + 2].copy_from_slice(&f16(x));
                }
            }
        }
    }
    debug_assert!(form.bits == 8 || u.iter().all(|&v| v < 1 << form.bits));
}

/// One 32-element block of one activation column, as the packed kernels
/// read it.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmAct {
    pub qs: [i8; QK],
    /// The block's scale.
    pub d: f32,
    /// `Σ qs`: a symmetric format's block starts at `−z · Σ qs`.
    pub isum: i32,
    /// `d · Σ qs` (what an asymmetric format's offsets multiply).
    pub sx: f32,
    /// `Σ qs[..16]`: the first half's (Q6_K, [`PackKind::Half`]).
    pub ihalf: i32,
}

/// A packed kernel: `P` panels (consecutive in `w`, `panel_bytes` apart) ×
/// `N` columns over all `nb` blocks, `z` the format's zero point;
/// `out[p * N + c]` receives panel `p`'s 16 sums for column `c`;
/// `prefetch`: ask ahead for the weights (the first of a tile's column
/// groups, which reads them from memory; the others find them in cache).
pub type GemmFn = unsafe fn(
    w: &[u8],
    panel_bytes: usize,
    nb: usize,
    z: i32,
    a: &[&[GemmAct]],
    out: &mut [[f32; PANEL]],
    prefetch: bool,
);

/// The scalar twin of the AVX-512 kernels: the reference they are tested
/// against (models pack only where those kernels run; `matmul_packed`
/// takes this one on other CPUs, for tests).
pub fn gemm_scalar(
    form: PackForm,
    w: &[u8],
    panel_bytes: usize,
    nb: usize,
    a: &[&[GemmAct]],
    out: &mut [[f32; PANEL]],
) {
    let (wb, kind) = (form.weight_bytes(), form.kind);
    let z = kind.zero_point();
    let n = a.len();
    let np = out.len() / n.max(1);
    for p in 0..np {
        for c in 0..n {
            let mut acc = [0f32; PANEL];
            for b in 0..nb {
                let panel = &w[p * panel_bytes..(p + 1) * panel_bytes];
                let blk = &panel[b * wb..(b + 1) * wb];
                let x = &a[c][b];
                let dot = |r: usize, ks: std::ops::Range<usize>| -> i32 {
                    ks.map(|k| form.weight(blk, r, k) as i32 * x.qs[k] as i32)
                        .sum()
                };
                for r in 0..PANEL {
                    // The vector after the scales: offsets or second-half scales.
                    let scale = |v| form.scale(panel, nb, b, v, r);
                    let (dw, second) = (scale(0), || scale(1));
                    match kind {
                        PackKind::Sym(_) => {
                            acc[r] += ((-z * x.isum + dot(r, 0..QK)) as f32 * x.d) * dw
                        }
                        PackKind::Asym => {
                            acc[r] += (dot(r, 0..QK) as f32 * x.d) * dw;
                            acc[r] += second() * x.sx;
                        }
                        PackKind::Half(_) => {
                            let lo = -z * x.ihalf + dot(r, 0..QK / 2);
                            let hi = -z * (x.isum - x.ihalf) + dot(r, QK / 2..QK);
                            acc[r] += (lo as f32 * x.d) * dw;
                            acc[r] += (hi as f32 * x.d) * second();
                        }
                    }
                }
            }
            out[p * n + c] = acc;
        }
    }
}

/// Whether [`gemm_many`] should take a product of `n_vecs` columns: every
/// product of packed weights on AVX-512 VNNI, a single decode column too.
/// Measured against the row and group kernels over the mmap'd bytes
/// (BENCHMARKS.md): faster at every batch on this project's models (single
/// stream SmolLM2 Q8_0 87 → 158 tokens/s, Q4_1 level, concurrency 8 +15–35%),
/// and one path for every batch means a column's result does not depend on
/// the batch it ran in — prefix-cache hits, chunked prefill and speculative
/// verification give the bits a plain one-sequence run gives.
pub fn use_packed(simd: Simd, ws: &[&Matrix], n_vecs: usize) -> bool {
    n_vecs >= 1
        && simd.is_avx512()
        && ws.iter().all(|w| w.packed.is_some())
        && ws.iter().all(|w| k_quant(w) == k_quant(ws[0]))
}

/// K-quants take Q8_K activations (256-element blocks), the others Q8_0's:
/// matrices of one kind or the other share one set.
fn k_quant(w: &Matrix) -> bool {
    w.dtype.layout().is_some_and(|l| l.block_elems == QK_K)
}

/// `ys[m] = ws[m] · X` over the packed weights (every `ws[m].packed` is
/// set, all of one width and all K-quants or none: [`use_packed`];
/// shapes are checked by the caller).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_many(
    pool: &ThreadPool,
    simd: Simd,
    ws: &[&Matrix],
    x: &[f32],
    n_vecs: usize,
    ys: &mut [&mut [f32]],
    scratch: &mut Scratch,
    gated: Option<Gated>,
) {
    let cols = ws[0].cols;
    let nb = cols / QK;
    let kq = k_quant(ws[0]);
    scratch.gemm.resize(n_vecs * nb, GemmAct::default());
    if n_vecs >= ACT_TASK_COLS * pool.n_threads() {
        // A prompt's columns are quantized across the threads (on one, the
        // other waited at the product's barrier for this serial part).
        let out = ActPtr(scratch.gemm.as_mut_ptr());
        let tasks = n_vecs.div_ceil(ACT_TASK_COLS);
        pool.run(tasks, &|t| {
            let v0 = t * ACT_TASK_COLS;
            let v1 = (v0 + ACT_TASK_COLS).min(n_vecs);
            // SAFETY: task t alone writes columns v0..v1 of the buffer,
            // sized for n_vecs columns of nb blocks above.
            let av = unsafe { out.columns(v0 * nb, (v1 - v0) * nb) };
            let (mut q8, mut q8k) = (Vec::new(), Vec::new());
            for (xv, av) in x[v0 * cols..v1 * cols]
                .chunks_exact(cols)
                .zip(av.chunks_exact_mut(nb))
            {
                quantize_column(kq, xv, av, &mut q8, &mut q8k);
            }
        });
    } else {
        let (gemm, q8, q8k) = (&mut scratch.gemm, &mut scratch.q8, &mut scratch.q8k);
        for (xv, av) in x.chunks_exact(cols).zip(gemm.chunks_exact_mut(nb)) {
            quantize_column(kq, xv, av, q8, q8k);
        }
    }
    let acts = &scratch.gemm[..n_vecs * nb];
    // Tasks are runs of panel pairs of one matrix, claimed in order, long
    // ones first and shorter towards the end (guided self-scheduling: each
    // a quarter of what is left per thread), so the threads reach the
    // barrier close together. Fixed arrays, not vectors: this runs for every
    // product of a decode step.
    let mut pairs = [0usize; MAX_MANY];
    let mut outs = [OutPtr(std::ptr::null_mut()); MAX_MANY];
    for (m, (w, y)) in ws.iter().zip(ys.iter_mut()).enumerate() {
        pairs[m] = w.rows.div_ceil(2 * PANEL);
        outs[m] = OutPtr(y.as_mut_ptr());
    }
    // Gated (a gate and an up projection of the same rows): a task takes
    // the same rows of both and applies the activation to them.
    let scheduled = if gated.is_some() { 1 } else { ws.len() };
    let mut left: usize = pairs[..scheduled].iter().sum();
    let mut tasks = [(0u32, 0u32, 0u32); MAX_TASKS];
    let mut n_tasks = 0;
    for m in 0..scheduled {
        let mut p0 = 0;
        while p0 < pairs[m] {
            let guided = left.div_ceil(4 * pool.n_threads());
            let n = if n_tasks + 1 + (scheduled - m) >= MAX_TASKS {
                pairs[m] - p0
            } else {
                guided.clamp(1, pairs[m] - p0)
            };
            tasks[n_tasks] = (m as u32, p0 as u32, (p0 + n) as u32);
            n_tasks += 1;
            p0 += n;
            left -= n;
        }
    }
    // Panel pairs `pair0..pair1` of matrix `m` against every column.
    let run_pairs = |m: usize, pair0: usize, pair1: usize| {
        let w = ws[m];
        let pk = w.packed.expect("checked by use_packed");
        let form = pk.form;
        let panel_bytes = pk.panel_bytes();
        let mut res = [[0f32; PANEL]; 2 * TILE_COLS];
        let mut pair = pair0;
        while pair < pair1 {
            let p0 = 2 * pair;
            // One column (decode): two pairs a tile where the task has
            // them, four streams of weights in flight rather than two.
            let quad = n_vecs == 1 && pair + 1 < pair1 && pk.panels() - p0 >= 4;
            let np = (pk.panels() - p0).min(if quad { 4 } else { 2 });
            pair += if quad { 2 } else { 1 };
            let wb = &pk.bytes()[p0 * panel_bytes..(p0 + np) * panel_bytes];
            for v0 in (0..n_vecs).step_by(TILE_COLS) {
                let nv = (n_vecs - v0).min(TILE_COLS);
                let a: [&[GemmAct]; TILE_COLS] = std::array::from_fn(|i| {
                    if i < nv {
                        &acts[(v0 + i) * nb..(v0 + i + 1) * nb]
                    } else {
                        &[]
                    }
                });
                let out = &mut res[..np * nv];
                run_tile(simd, form, wb, panel_bytes, nb, &a[..nv], out, v0 == 0);
                for p in 0..np {
                    let r0 = (p0 + p) * PANEL;
                    let valid = (w.rows - r0).min(PANEL);
                    for c in 0..nv {
                        // SAFETY: rows r0 .. r0 + valid belong to this task's
                        // panels of matrix m and v0 + c < n_vecs: inside ys[m],
                        // written by no other task.
                        unsafe {
                            let at = (v0 + c) * w.rows + r0;
                            if valid == PANEL {
                                // A whole panel: one store, not a copy call.
                                outs[m].write_panel(at, &out[p * nv + c])
                            } else {
                                outs[m].write_all(at, &out[p * nv + c][..valid])
                            }
                        };
                    }
                }
            }
        }
    };
    pool.run(n_tasks, &|t| {
        let (m, pair0, pair1) = tasks[t];
        let (m, pair0, pair1) = (m as usize, pair0 as usize, pair1 as usize);
        run_pairs(m, pair0, pair1);
        let Some(act) = gated else {
            return;
        };
        run_pairs(1, pair0, pair1);
        let rows = ws[0].rows;
        let (r0, r1) = (pair0 * 2 * PANEL, (pair1 * 2 * PANEL).min(rows));
        for v in 0..n_vecs {
            // SAFETY: this task wrote rows r0..r1 of both outputs for every
            // column just now, and no other task touches them.
            let (g, u) = unsafe {
                (
                    outs[0].slice_mut(v * rows + r0, r1 - r0),
                    outs[1].slice_mut(v * rows + r0, r1 - r0),
                )
            };
            act(g, u);
        }
    });
}

/// Columns per task when a product's activations are quantized across the
/// threads (and the fewest per thread before they are).
const ACT_TASK_COLS: usize = 8;

/// The activation buffer shared by the tasks quantizing disjoint columns.
#[derive(Clone, Copy)]
struct ActPtr(*mut GemmAct);
// SAFETY: each task writes only its own columns (see `gemm_many`).
unsafe impl Send for ActPtr {}
unsafe impl Sync for ActPtr {}

impl ActPtr {
    /// # Safety
    /// `i..i + n` inside the buffer and written by no other task.
    unsafe fn columns<'a>(self, i: usize, n: usize) -> &'a mut [GemmAct] {
        std::slice::from_raw_parts_mut(self.0.add(i), n)
    }
}

/// One column `xv` quantized as the packed kernels take it into `av`
/// (`xv.len() / QK` blocks): K-quants' Q8_K (256-element blocks, as their
/// row kernels take them), the others Q8_0's rule with ggml's Q8_1 sum
/// (rounded to f16) for the offsets; `q8` and `q8k` are scratch.
fn quantize_column(
    kq: bool,
    xv: &[f32],
    av: &mut [GemmAct],
    q8: &mut Vec<Q8Block>,
    q8k: &mut Vec<Q8KBlock>,
) {
    let nb = av.len();
    let act = |qs: &[i8], d: f32, s: f32| {
        let isum: i32 = qs.iter().map(|&v| v as i32).sum();
        GemmAct {
            qs: qs.try_into().expect("a 32-element block"),
            d,
            isum,
            sx: s,
            ihalf: qs[..QK / 2].iter().map(|&v| v as i32).sum::<i32>(),
        }
    };
    if kq {
        q8k.resize(nb / 8, Q8KBlock::default());
        quantize_q8k(xv, &mut q8k[..nb / 8]);
        for (sb, g8) in q8k[..nb / 8].iter().zip(av.chunks_exact_mut(8)) {
            for (j, g) in g8.iter_mut().enumerate() {
                let qs = &sb.qs[j * QK..(j + 1) * QK];
                let isum: i32 = qs.iter().map(|&v| v as i32).sum();
                *g = act(qs, sb.d, sb.d * isum as f32);
            }
        }
    } else {
        q8.resize(nb, Q8Block::default());
        quantize_q8(xv, &mut q8[..nb]);
        for (q, g) in q8[..nb].iter().zip(av.iter_mut()) {
            *g = act(&q.qs, q.d, q.s);
        }
    }
}

/// An activation of the gate by the up projection, in place:
/// `gate ← f(gate) · up` (SwiGLU, GeGLU).
pub type Gated<'a> = &'a (dyn Fn(&mut [f32], &[f32]) + Sync);

#[allow(clippy::too_many_arguments)]
fn run_tile(
    simd: Simd,
    form: PackForm,
    w: &[u8],
    panel_bytes: usize,
    nb: usize,
    a: &[&[GemmAct]],
    out: &mut [[f32; PANEL]],
    prefetch: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if simd.is_avx512() {
        let f = super::gemm_avx512::kernel(form, out.len() / a.len(), a.len());
        // SAFETY: `is_avx512` is only set after checking the CPU for
        // AVX-512 F/BW/VL/VNNI; `w` holds `out.len() / a.len()` panels of
        // `nb` blocks and every column has `nb` blocks (built by `gemm_many`).
        return unsafe { f(w, panel_bytes, nb, form.kind.zero_point(), a, out, prefetch) };
    }
    let _ = (simd, prefetch);
    gemm_scalar(form, w, panel_bytes, nb, a, out)
}

/// `y = W · X` over `w`'s packed copy whatever the batch (the scalar twin
/// where `simd` has no AVX-512 VNNI): for tests and benchmarks.
pub fn matmul_packed(
    pool: &ThreadPool,
    simd: Simd,
    w: &Matrix,
    x: &[f32],
    n_vecs: usize,
    y: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), super::KernelError> {
    let Some(p) = w.packed else {
        return Err(super::KernelError::Unsupported(w.dtype));
    };
    if x.len() != n_vecs * p.cols || y.len() != n_vecs * p.rows {
        return Err(super::KernelError::Length {
            what: "input and output elements (n_vecs × cols, n_vecs × rows)",
            expected: n_vecs * p.cols,
            got: x.len(),
        });
    }
    gemm_many(pool, simd, &[w], x, n_vecs, &mut [y], scratch, None);
    Ok(())
}
