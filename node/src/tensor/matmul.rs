//! Matrix products over weights in their storage format:
//! `Y = W·X` for a batch of activation vectors, each weight row read from
//! memory once for the whole batch, rows split across a [`ThreadPool`].

use super::act::{
    group_q8, group_q8k, pair_q8, quad_q8, quantize_q8, quantize_q8k, Q8Block, Q8Group, Q8KBlock,
    Q8Pair, Q8Quad,
};
use super::dequant::KernelError;
use super::pack::{gemm_many, use_packed, Gated, GemmAct, Packed};
use super::pool::ThreadPool;
use super::{dot_scalar as sc, GgmlType};

/// A dot-product kernel: one weight row against 1..=4 activation columns
/// (1..=8 for the group kernels).
#[derive(Clone, Copy)]
pub enum Kernel {
    /// 32-element formats, against [`Q8Block`] activations.
    Q8(fn(&[u8], &[&[Q8Block]], &mut [f32])),
    /// Activations as [`Q8Pair`]s (the AVX-512 kernels of 32-element formats).
    Q8Pair(fn(&[u8], &[&[Q8Pair]], &mut [f32])),
    /// Activations as [`Q8Quad`]s (AVX-512 row kernels taking four blocks a step).
    Q8Quad(fn(&[u8], &[&[Q8Quad]], &mut [f32])),
    /// K-quants, against [`Q8KBlock`] activations.
    Q8K(fn(&[u8], &[&[Q8KBlock]], &mut [f32])),
    /// Float formats, against f32 activations.
    F32(fn(&[u8], &[&[f32]], &mut [f32])),
    /// 32-element formats against [`Q8Group`]s made from [`Q8Block`]s
    /// (AVX-512: weights transposed in registers, up to 8 columns per call).
    /// A call covers part of a row (whole groups) and adds into one
    /// 16-lane accumulator per column, summed by [`reduce_lanes`] at the end.
    Q8Group(GroupFn),
    /// K-quants against [`Q8Group`]s made from [`Q8KBlock`]s (the same).
    Q8KGroup(GroupFn),
}

/// A group kernel: the same whole groups of each row of a tile against
/// those groups of up to 8 activation columns, adding into one accumulator
/// per (row, column). One call per tile and chunk keeps the per-call set-up
/// (index tables, column slices) off the per-row path.
pub type GroupFn = fn(&GroupTile, &[&[Q8Group]], &mut [[[f32; 16]; 8]]);

/// The rows a [`GroupFn`] call covers.
pub struct GroupTile<'a> {
    /// Each row's weights for the chunk of groups (whole groups).
    pub rows: &'a [&'a [u8]],
    /// Bytes to bring into L1 while row `i` is computed (the weights of the
    /// step [`PREFETCH_STEPS`] ahead).
    pub prefetch: &'a [&'a [u8]],
    /// Bytes to bring into L2 while row `i` is computed (the weights of the
    /// step [`PREFETCH_FAR_STEPS`] ahead).
    pub prefetch_far: &'a [&'a [u8]],
}

/// Sum of a group kernel's accumulator lanes, in a fixed order.
pub fn reduce_lanes(a: &[f32; 16]) -> f32 {
    let mut v = *a;
    let mut n = 16;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

impl Kernel {
    /// Most activation columns one call takes.
    fn columns_per_call(&self) -> usize {
        match self {
            Kernel::Q8Group(_) | Kernel::Q8KGroup(_) => 8,
            _ => 4,
        }
    }
}

/// Which instruction set the kernels use. Only [`Simd::detect`] can give
/// [`Simd::avx2`] paths, so a SIMD kernel is never chosen on a CPU without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Simd {
    avx2: bool,
    /// AVX-512 F/BW/VL + VNNI on top of AVX2 (only ever set with `avx2`).
    avx512: bool,
}

impl Simd {
    /// The scalar reference paths.
    pub const SCALAR: Simd = Simd {
        avx2: false,
        avx512: false,
    };

    /// The best the CPU offers (AVX-512 VNNI kernels where they exist, else
    /// AVX2+FMA+F16C); `REALIZAR_SIMD=scalar` or `REALIZAR_SIMD=avx2` caps it.
    pub fn detect() -> Simd {
        let cap = std::env::var("REALIZAR_SIMD").unwrap_or_default();
        if cap == "scalar" {
            return Simd::SCALAR;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                let avx512 = cap != "avx2"
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni");
                return Simd { avx2: true, avx512 };
            }
        }
        Simd::SCALAR
    }

    /// The same, without the AVX-512 kernels (to compare or test the AVX2 ones).
    pub fn without_avx512(self) -> Simd {
        Simd {
            avx2: self.avx2,
            avx512: false,
        }
    }

    pub fn is_avx2(self) -> bool {
        self.avx2
    }

    pub fn is_avx512(self) -> bool {
        self.avx512
    }

    pub fn name(self) -> &'static str {
        match (self.avx2, self.avx512) {
            (true, true) => "avx512-vnni",
            (true, false) => "avx2",
            _ => "scalar",
        }
    }
}

/// The kernel for weights of `dtype` (SIMD when `simd` allows and one exists).
pub fn kernel(dtype: GgmlType, simd: Simd) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    if simd.avx512 {
        // SAFETY: `avx512` is only set by `detect` after checking the CPU
        // for AVX-512 F/BW/VL/VNNI (and AVX2/FMA/F16C).
        if let Some(k) = unsafe { super::dot_avx512::kernel(dtype) } {
            return Some(k);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if simd.avx2 {
        // SAFETY: `avx2` is only set by `detect` after checking the CPU.
        if let Some(k) = unsafe { super::dot_avx2::kernel(dtype) } {
            return Some(k);
        }
    }
    scalar_kernel(dtype)
}

/// Whether `dtype` has a SIMD kernel that `simd` can use.
pub fn has_simd_kernel(dtype: GgmlType, simd: Simd) -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd.avx2 {
        // SAFETY: as in `kernel`.
        return unsafe { super::dot_avx2::kernel(dtype) }.is_some();
    }
    false
}

fn scalar_kernel(dtype: GgmlType) -> Option<Kernel> {
    use GgmlType::*;
    Some(match dtype {
        Q4_0 => Kernel::Q8(sc::q4_0),
        Q4_1 => Kernel::Q8(sc::q4_1),
        Q5_0 => Kernel::Q8(sc::q5_0),
        Q5_1 => Kernel::Q8(sc::q5_1),
        Q8_0 => Kernel::Q8(sc::q8_0),
        IQ4_NL => Kernel::Q8(sc::iq4_nl),
        Q2_K => Kernel::Q8K(sc::q2_k),
        Q3_K => Kernel::Q8K(sc::q3_k),
        Q4_K => Kernel::Q8K(sc::q4_k),
        Q5_K => Kernel::Q8K(sc::q5_k),
        Q6_K => Kernel::Q8K(sc::q6_k),
        Q8_K => Kernel::Q8K(sc::q8_k),
        IQ4_XS => Kernel::Q8K(sc::iq4_xs),
        F32 => Kernel::F32(sc::f32_dot),
        F16 => Kernel::F32(sc::f16_dot),
        BF16 => Kernel::F32(sc::bf16_dot),
        _ => return None,
    })
}

/// A row-major weight matrix in its storage format (`rows` rows of `cols`
/// elements; in GGUF terms dims = [cols, rows]).
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    row_bytes: usize,
    /// The same weights repacked (see [`super::pack`]), where the model made them.
    pub packed: Option<&'a Packed>,
}

impl<'a> Matrix<'a> {
    pub fn new(
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        let layout = dtype.layout().ok_or(KernelError::Unsupported(dtype))?;
        if !cols.is_multiple_of(layout.block_elems) {
            return Err(KernelError::Length {
                what: "columns (whole blocks)",
                expected: cols / layout.block_elems * layout.block_elems,
                got: cols,
            });
        }
        let row_bytes = cols / layout.block_elems * layout.block_bytes;
        if data.len() != rows * row_bytes {
            return Err(KernelError::Length {
                what: "matrix bytes",
                expected: rows * row_bytes,
                got: data.len(),
            });
        }
        Ok(Matrix {
            dtype,
            rows,
            cols,
            data,
            row_bytes,
            packed: None,
        })
    }

    /// The same matrix with its packed copy (see [`super::pack`]).
    pub fn with_packed(self, packed: Option<&'a Packed>) -> Self {
        Matrix { packed, ..self }
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

/// Caller-owned buffers for quantized activations; grows to the largest
/// batch seen and is then reused, so steady-state calls do not allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(super) q8: Vec<Q8Block>,
    q8p: Vec<Q8Pair>,
    q8q: Vec<Q8Quad>,
    pub(super) q8k: Vec<Q8KBlock>,
    grp: Vec<Q8Group>,
    pub(super) gemm: Vec<GemmAct>,
}

/// Output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: each task writes only the rows of its own range (see `matmul`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` must be inside the output and written by no other task.
    pub(super) unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }

    /// # Safety
    /// `i..i + v.len()` must be inside the output and written by no other task.
    pub(super) unsafe fn write_all(self, i: usize, v: &[f32]) {
        std::ptr::copy_nonoverlapping(v.as_ptr(), self.0.add(i), v.len());
    }

    /// [`OutPtr::write_all`] of a fixed 16 values (inlined: no copy call).
    ///
    /// # Safety
    /// As `write_all`.
    #[inline(always)]
    pub(super) unsafe fn write_panel(self, i: usize, v: &[f32; 16]) {
        std::ptr::write_unaligned(self.0.add(i) as *mut [f32; 16], *v);
    }

    /// # Safety
    /// `i..i + n` must be inside the output, written, and used by no other task.
    pub(super) unsafe fn slice_mut<'a>(self, i: usize, n: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(i), n)
    }
}

/// Rows per task: enough tasks to balance the threads, each large enough to
/// amortise the hand-out.
fn rows_per_task(rows: usize, threads: usize) -> usize {
    let target_tasks = threads * 8;
    rows.div_ceil(target_tasks).clamp(4, 256)
}

/// Whether a group kernel should give way to its format's row kernel: for
/// one column (the transposition is not shared), and for rows shorter than
/// four groups that end in a partial one (it costs a whole group: 18 blocks
/// would pay for 32). The choice depends on the batch only through
/// `n_vecs == 1`, so any batch of two or more gives every column the same bits.
fn prefer_row_kernel(k: &Kernel, nb: usize, n_vecs: usize) -> bool {
    let group_blocks = match k {
        Kernel::Q8Group(_) => 16,
        Kernel::Q8KGroup(_) => 2,
        _ => return false,
    };
    n_vecs == 1 || (!nb.is_multiple_of(group_blocks) && nb < 4 * group_blocks)
}

/// Most matrices one [`matmul_many`] dispatch takes.
pub(super) const MAX_MANY: usize = 8;

/// Weight rows processed together before moving to the next group of
/// columns: keeps a tile of weights in L2 while 4 activation columns stream.
const ROW_TILE: usize = 16;

/// `y[v * rows + r] = Σ_c W[r, c] · x[v * cols + c]` for `v in 0..n_vecs`.
pub fn matmul(
    pool: &ThreadPool,
    simd: Simd,
    w: &Matrix,
    x: &[f32],
    n_vecs: usize,
    y: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    matmul_many(pool, simd, &[w], x, n_vecs, &mut [y], scratch)
}

/// Several products of the same input (`ys[m] = ws[m] · X`, e.g. the query,
/// key and value projections): the input is quantized once and all rows go
/// out in one dispatch when the matrices share a type; otherwise one
/// [`matmul`] each.
pub fn matmul_many(
    pool: &ThreadPool,
    simd: Simd,
    ws: &[&Matrix],
    x: &[f32],
    n_vecs: usize,
    ys: &mut [&mut [f32]],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    let Some(first) = ws.first() else {
        return Ok(());
    };
    if ws.len() != ys.len() {
        return Err(KernelError::Length {
            what: "outputs (one per matrix)",
            expected: ws.len(),
            got: ys.len(),
        });
    }
    // Packed matrices of different formats share a dispatch when their
    // activations are quantized alike (a Q4_K query beside a Q6_K value).
    if ws.len() > MAX_MANY
        || ws.iter().any(|w| w.cols != first.cols)
        || (ws.iter().any(|w| w.dtype != first.dtype) && !use_packed(simd, ws, n_vecs))
    {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            matmul_many(pool, simd, &[w], x, n_vecs, &mut [&mut **y], scratch)?;
        }
        return Ok(());
    }
    let w = first;
    if x.len() != n_vecs * w.cols {
        return Err(KernelError::Length {
            what: "input elements (n_vecs × cols)",
            expected: n_vecs * w.cols,
            got: x.len(),
        });
    }
    for (wm, y) in ws.iter().zip(ys.iter()) {
        if y.len() != n_vecs * wm.rows {
            return Err(KernelError::Length {
                what: "output elements (n_vecs × rows)",
                expected: n_vecs * wm.rows,
                got: y.len(),
            });
        }
    }
    if use_packed(simd, ws, n_vecs) {
        gemm_many(pool, simd, ws, x, n_vecs, ys, scratch, None);
        return Ok(());
    }
    let mut k = kernel(w.dtype, simd).ok_or(KernelError::Unsupported(w.dtype))?;
    let nb = w.cols / w.dtype.layout().map_or(1, |l| l.block_elems);
    #[cfg(target_arch = "x86_64")]
    if simd.avx512 && prefer_row_kernel(&k, nb, n_vecs) {
        // SAFETY: as in `kernel`.
        if let Some(row) = unsafe { super::dot_avx512::row_kernel(w.dtype) } {
            k = row;
        }
    }
    if n_vecs == 0 || ws.iter().all(|w| w.rows == 0) {
        return Ok(());
    }
    let per_call = k.columns_per_call();
    match k {
        Kernel::Q8(f) => {
            scratch.q8.resize(n_vecs * nb, Q8Block::default());
            for (xv, qv) in x.chunks_exact(w.cols).zip(scratch.q8.chunks_exact_mut(nb)) {
                quantize_q8(xv, qv);
            }
            let acts = &scratch.q8[..n_vecs * nb];
            run_columns(pool, ws, n_vecs, per_call, ys, acts, nb, f);
        }
        Kernel::Q8Pair(f) => {
            let acts = regroup(x, w.cols, nb, 2, &mut scratch.q8, &mut scratch.q8p, pair_q8);
            run_columns(pool, ws, n_vecs, per_call, ys, acts, nb.div_ceil(2), f);
        }
        Kernel::Q8Quad(f) => {
            let acts = regroup(x, w.cols, nb, 4, &mut scratch.q8, &mut scratch.q8q, quad_q8);
            run_columns(pool, ws, n_vecs, per_call, ys, acts, nb.div_ceil(4), f);
        }
        Kernel::Q8K(f) => {
            scratch.q8k.resize(n_vecs * nb, Q8KBlock::default());
            for (xv, qv) in x.chunks_exact(w.cols).zip(scratch.q8k.chunks_exact_mut(nb)) {
                quantize_q8k(xv, qv);
            }
            let acts = &scratch.q8k[..n_vecs * nb];
            run_columns(pool, ws, n_vecs, per_call, ys, acts, nb, f);
        }
        Kernel::Q8Group(f) => {
            scratch.q8.resize(n_vecs * nb, Q8Block::default());
            let q8 = &mut scratch.q8;
            let ng = group_activations(x, w.cols, nb, 16, &mut scratch.grp, |v, xv, g| {
                let qv = &mut q8[v * nb..(v + 1) * nb];
                quantize_q8(xv, qv);
                group_q8(qv, g);
            });
            let acts = &scratch.grp[..n_vecs * ng];
            let group_bytes = 16 * w.row_bytes() / nb;
            run_rows_grouped(pool, ws, n_vecs, ys, acts, ng, group_bytes, f);
        }
        Kernel::Q8KGroup(f) => {
            scratch.q8k.resize(n_vecs * nb, Q8KBlock::default());
            let q8k = &mut scratch.q8k;
            let ng = group_activations(x, w.cols, nb, 2, &mut scratch.grp, |v, xv, g| {
                let qv = &mut q8k[v * nb..(v + 1) * nb];
                quantize_q8k(xv, qv);
                group_q8k(qv, g);
            });
            let acts = &scratch.grp[..n_vecs * ng];
            let group_bytes = 2 * w.row_bytes() / nb;
            run_rows_grouped(pool, ws, n_vecs, ys, acts, ng, group_bytes, f);
        }
        Kernel::F32(f) => run_columns(pool, ws, n_vecs, per_call, ys, x, w.cols, f),
    }
    Ok(())
}

/// The gated feed-forward's first half: `gate = W_gate · X`, `up = W_up ·
/// X`, then `act(gate, up)` (`gate ← f(gate) · up`). Over packed weights the
/// activation runs in the product's tasks, on the rows each just computed,
/// rather than on one thread after the barrier; the bits are the same.
#[allow(clippy::too_many_arguments)]
pub fn matmul_gated(
    pool: &ThreadPool,
    simd: Simd,
    w_gate: &Matrix,
    w_up: &Matrix,
    x: &[f32],
    n_vecs: usize,
    gate: &mut [f32],
    up: &mut [f32],
    scratch: &mut Scratch,
    act: Gated,
) -> Result<(), KernelError> {
    let ws = [w_gate, w_up];
    let fused = use_packed(simd, &ws, n_vecs)
        && w_gate.rows == w_up.rows
        && w_gate.cols == w_up.cols
        && x.len() == n_vecs * w_gate.cols
        && gate.len() == n_vecs * w_gate.rows
        && up.len() == gate.len();
    if fused {
        gemm_many(
            pool,
            simd,
            &ws,
            x,
            n_vecs,
            &mut [gate, up],
            scratch,
            Some(act),
        );
        return Ok(());
    }
    matmul_many(
        pool,
        simd,
        &ws,
        x,
        n_vecs,
        &mut [&mut *gate, &mut *up],
        scratch,
    )?;
    act(gate, up);
    Ok(())
}

/// Quantize each of the `x.len() / cols` vectors into `q8` and regroup its
/// blocks `per` at a time into `out` by `f`; returns the regrouped vectors.
fn regroup<'a, A: Copy + Default>(
    x: &[f32],
    cols: usize,
    nb: usize,
    per: usize,
    q8: &mut Vec<Q8Block>,
    out: &'a mut Vec<A>,
    f: fn(&[Q8Block], &mut [A]),
) -> &'a [A] {
    let n_vecs = x.len() / cols;
    let ng = nb.div_ceil(per);
    q8.resize(n_vecs * nb, Q8Block::default());
    out.resize(n_vecs * ng, A::default());
    for ((xv, qv), gv) in x
        .chunks_exact(cols)
        .zip(q8.chunks_exact_mut(nb))
        .zip(out.chunks_exact_mut(ng))
    {
        quantize_q8(xv, qv);
        f(qv, gv);
    }
    &out[..n_vecs * ng]
}

/// [`run_rows`] with a row kernel `f` over activation vectors of `per_vec`
/// elements each, laid end to end in `acts`.
#[allow(clippy::too_many_arguments)]
fn run_columns<A: Sync>(
    pool: &ThreadPool,
    ws: &[&Matrix],
    n_vecs: usize,
    per_call: usize,
    ys: &mut [&mut [f32]],
    acts: &[A],
    per_vec: usize,
    f: fn(&[u8], &[&[A]], &mut [f32]),
) {
    run_rows(pool, ws, n_vecs, per_call, ys, |row, v0, nv, out| {
        let cols: [&[A]; 4] = std::array::from_fn(|i| {
            if i < nv {
                &acts[(v0 + i) * per_vec..(v0 + i + 1) * per_vec]
            } else {
                &[]
            }
        });
        f(row, &cols[..nv], out)
    });
}

/// Split the rows of every matrix in `ws` across the pool in one dispatch:
/// `task(w, out, r0, r1)` computes rows `r0..r1` of `w` into `out`, the
/// output of the matrix (`ys[m]` for `ws[m]`), writing only those rows.
fn split_rows(
    pool: &ThreadPool,
    ws: &[&Matrix],
    ys: &mut [&mut [f32]],
    task: impl Fn(&Matrix, OutPtr, usize, usize) + Sync,
) {
    debug_assert_eq!(ws.len(), ys.len());
    assert!(
        ws.len() <= MAX_MANY,
        "at most {MAX_MANY} matrices per dispatch"
    );
    let total_rows: usize = ws.iter().map(|w| w.rows).sum();
    let per = rows_per_task(total_rows, pool.n_threads());
    let mut outs = [OutPtr(std::ptr::null_mut()); MAX_MANY];
    let mut first_task = [0usize; MAX_MANY + 1];
    for (m, (w, y)) in ws.iter().zip(ys.iter_mut()).enumerate() {
        outs[m] = OutPtr(y.as_mut_ptr());
        first_task[m + 1] = first_task[m] + w.rows.div_ceil(per);
    }
    pool.run(first_task[ws.len()], &|t| {
        let m = (0..ws.len())
            .rfind(|&m| first_task[m] <= t)
            .expect("task in range");
        let r0 = (t - first_task[m]) * per;
        task(ws[m], outs[m], r0, (r0 + per).min(ws[m].rows));
    });
}

/// Rows of every matrix in `ws` split across the pool (`split_rows`);
/// within a task, tiles of rows × groups of `per_call` (≤ 8) columns. `ys[m]`
/// receives the products of `ws[m]`.
fn run_rows(
    pool: &ThreadPool,
    ws: &[&Matrix],
    n_vecs: usize,
    per_call: usize,
    ys: &mut [&mut [f32]],
    dot: impl Fn(&[u8], usize, usize, &mut [f32]) + Sync,
) {
    split_rows(pool, ws, ys, |w, out, r0, r1| {
        let rows = w.rows;
        let mut res = [0f32; 8];
        for tile in (r0..r1).step_by(ROW_TILE) {
            let tile_end = (tile + ROW_TILE).min(r1);
            for v0 in (0..n_vecs).step_by(per_call) {
                let nv = (n_vecs - v0).min(per_call);
                for r in tile..tile_end {
                    dot(w.row(r), v0, nv, &mut res[..nv]);
                    for (i, &val) in res[..nv].iter().enumerate() {
                        // SAFETY: r is in this task's row range of matrix m and
                        // v0 + i < n_vecs, so the index is inside ys[m] and no
                        // other task writes it.
                        unsafe { out.write((v0 + i) * rows + r, val) };
                    }
                }
            }
        }
    });
}

/// Quantize and regroup every input vector for a group kernel whose groups
/// hold `per_group` weight blocks (`quantize(v, x_v, groups_v)`); returns
/// the groups per vector.
fn group_activations(
    x: &[f32],
    cols: usize,
    nb: usize,
    per_group: usize,
    grp: &mut Vec<Q8Group>,
    mut quantize: impl FnMut(usize, &[f32], &mut [Q8Group]),
) -> usize {
    let ng = nb.div_ceil(per_group);
    grp.resize(x.len() / cols * ng, Q8Group::default());
    for (v, (xv, gv)) in x
        .chunks_exact(cols)
        .zip(grp.chunks_exact_mut(ng))
        .enumerate()
    {
        quantize(v, xv, gv);
    }
    ng
}

/// Bytes of activations [`run_rows_grouped`] keeps in L1 while a tile of
/// rows passes over them (e.g. 8 columns × 4 groups of 704 bytes).
const GROUP_CHUNK_BYTES: usize = 24 << 10;

/// How many steps (rows of a chunk) ahead [`run_rows_grouped`] prefetches
/// weights.
const PREFETCH_STEPS: usize = 2;

/// How many steps ahead [`run_rows_grouped`] brings weights into L2.
const PREFETCH_FAR_STEPS: usize = 16;

/// Where the whole group kernels' activations do not fit in L1 (8 columns of
/// a 8192-wide row are 90 KiB), each tile of rows is taken a chunk of groups
/// at a time, the kernels adding into per-(row, column) accumulators; the
/// additions happen in the same order as without chunks, so results do not
/// depend on the batch.
#[allow(clippy::too_many_arguments)]
fn run_rows_grouped(
    pool: &ThreadPool,
    ws: &[&Matrix],
    n_vecs: usize,
    ys: &mut [&mut [f32]],
    acts: &[Q8Group],
    ng: usize,
    group_bytes: usize,
    f: GroupFn,
) {
    split_rows(pool, ws, ys, |w, out, r0, r1| {
        let rows = w.rows;
        let mut acc = [[[0f32; 16]; 8]; ROW_TILE];
        for tile in (r0..r1).step_by(ROW_TILE) {
            let tile_end = (tile + ROW_TILE).min(r1);
            for v0 in (0..n_vecs).step_by(8) {
                let nv = (n_vecs - v0).min(8);
                for a in acc[..tile_end - tile].iter_mut() {
                    a[..nv].fill([0f32; 16]);
                }
                let chunk = (GROUP_CHUNK_BYTES / (nv * std::mem::size_of::<Q8Group>())).max(1);
                let tile_rows = tile_end - tile;
                // One step = one row of one chunk; steps run chunk by chunk,
                // then on into the next tile's first chunk. While a step is
                // computed the weights of the step PREFETCH_STEPS ahead are
                // brought into L1 and those PREFETCH_FAR_STEPS ahead into L2,
                // a part with each group (the kernel spreads the requests over
                // the step; one burst per step left weight loads waiting:
                // Q4_K B=8 +9%, Q8_0 +20%). The first tile of a task fetches
                // its first steps at once.
                let n_chunks = ng.div_ceil(chunk);
                let steps = n_chunks * tile_rows;
                let span = |r: usize, c: usize| {
                    let row = w.row(r);
                    let g0 = c * chunk;
                    &row[g0 * group_bytes..((g0 + chunk) * group_bytes).min(row.len())]
                };
                let ahead = |s: usize| -> &[u8] {
                    if s < steps {
                        span(tile + s % tile_rows, s / tile_rows)
                    } else {
                        let next = s - steps + tile_end;
                        if next < r1 && next < tile_end + ROW_TILE {
                            span(next, 0)
                        } else {
                            &[]
                        }
                    }
                };
                if tile == r0 {
                    for s in 0..PREFETCH_FAR_STEPS {
                        prefetch(ahead(s));
                    }
                }
                for c in 0..n_chunks {
                    let g0 = c * chunk;
                    let g1 = (g0 + chunk).min(ng);
                    let cols: [&[Q8Group]; 8] = std::array::from_fn(|i| {
                        if i < nv {
                            &acts[(v0 + i) * ng + g0..(v0 + i) * ng + g1]
                        } else {
                            &[]
                        }
                    });
                    let rows = per_row(tile_rows, |i| span(tile + i, c));
                    let pf = per_row(tile_rows, |i| ahead(c * tile_rows + i + PREFETCH_STEPS));
                    let pf_far =
                        per_row(tile_rows, |i| ahead(c * tile_rows + i + PREFETCH_FAR_STEPS));
                    let t = GroupTile {
                        rows: &rows[..tile_rows],
                        prefetch: &pf[..tile_rows],
                        prefetch_far: &pf_far[..tile_rows],
                    };
                    f(&t, &cols[..nv], &mut acc[..tile_rows]);
                }
                for r in tile..tile_end {
                    for (i, a) in acc[r - tile][..nv].iter().enumerate() {
                        // SAFETY: as in `run_rows`.
                        unsafe { out.write((v0 + i) * rows + r, reduce_lanes(a)) };
                    }
                }
            }
        }
    });
}

/// The first `n` of a tile's rows mapped by `g`, the rest empty.
fn per_row<'a>(n: usize, g: impl Fn(usize) -> &'a [u8]) -> [&'a [u8]; ROW_TILE] {
    std::array::from_fn(|i| if i < n { g(i) } else { &[] })
}

/// Ask for `bytes` to be brought into the caches.
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch of an address inside `bytes` (a hint; it cannot fault).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                bytes.as_ptr().add(off) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Single-threaded convenience: `y = W·x` for one vector.
pub fn matvec(
    simd: Simd,
    w: &Matrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    thread_local! {
        static SOLO: ThreadPool = ThreadPool::new(1);
    }
    SOLO.with(|p| matmul(p, simd, w, x, 1, y, scratch))
}
