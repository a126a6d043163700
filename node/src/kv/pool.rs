//! Key/value caches in f32 or f16 (half the memory and the attention's
//! memory traffic): a paged pool shared by many sequences, and the
//! single-sequence cache built on it.

use crate::tensor::GgmlType;

/// Element type of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl KvType {
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            _ => None,
        }
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
        }
    }

    /// Bytes per stored element.
    pub fn bytes_per_elem(self) -> usize {
        self.bytes()
    }

    pub(crate) fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// A zeroed byte buffer whose first byte sits on a cache line, so that rows
/// at offsets that are multiples of 64 bytes (a head of 16+ f32s or 32+ f16s)
/// do not straddle lines. A plain `Vec<u8>` of this size comes from `mmap`
/// through malloc and starts 16 bytes into a page. Over-allocated by 64 bytes
/// with `vec![0; n]` (calloc: pages are zeroed lazily, so an unused pool
/// costs no resident memory).
pub(crate) struct LineBuf {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl LineBuf {
    fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + 63];
        let off = buf.as_ptr().align_offset(64).min(63);
        LineBuf { buf, off, len }
    }
}

impl Clone for LineBuf {
    fn clone(&self) -> Self {
        let mut c = LineBuf::zeroed(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl std::ops::Deref for LineBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for LineBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl std::fmt::Debug for LineBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineBuf({} bytes)", self.len)
    }
}

/// Keys and values for many sequences in fixed-size blocks of positions. A
/// sequence owns a block table (indices into the pool); position `p` lives
/// in block `table[p / block_size]` at slot `p % block_size`. Blocks may be
/// shared read-only between sequences with a common prefix.
///
/// Values are laid out [block][layer][slot][kv width]: a position's row is
/// contiguous, as the value sums read it. Keys are transposed within each
/// (block, layer): [block][layer][kv width][slot], so one element of a head
/// for 16 consecutive positions is one vector load — a decode step's scores
/// take 16 positions an instruction, each still summed over the head's
/// dimensions in order ([`KvPool::key_at`]).
#[derive(Debug, Clone)]
pub struct KvPool {
    /// Keys and values as little-endian bytes of `ty`.
    pub(crate) k: LineBuf,
    pub(crate) v: LineBuf,
    pub(crate) ty: KvType,
    kv_dim: usize,
    n_layer: usize,
    block_size: usize,
    n_blocks: usize,
}

impl KvPool {
    pub fn new(
        n_layer: usize,
        kv_dim: usize,
        block_size: usize,
        n_blocks: usize,
        ty: KvType,
    ) -> Self {
        let block_size = block_size.max(1);
        let n = n_blocks * n_layer * block_size * kv_dim * ty.bytes();
        KvPool {
            k: LineBuf::zeroed(n),
            v: LineBuf::zeroed(n),
            ty,
            kv_dim,
            n_layer,
            block_size,
            n_blocks,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    pub fn kv_type(&self) -> KvType {
        self.ty
    }

    /// Bytes one block takes, keys and values together.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.n_layer * self.block_size * self.kv_dim * self.ty.bytes()
    }

    /// Bytes held by keys and values together.
    pub fn size_bytes(&self) -> usize {
        self.k.len() + self.v.len()
    }

    /// Byte offset in `v` of element `elem` of position `pos`'s values in
    /// `layer` for the sequence with block table `table`; the position's
    /// other elements follow it.
    #[inline]
    pub(crate) fn value_at(&self, table: &[u32], layer: usize, pos: usize, elem: usize) -> usize {
        let b = table[pos / self.block_size] as usize;
        debug_assert!(b < self.n_blocks);
        (((b * self.n_layer + layer) * self.block_size + pos % self.block_size) * self.kv_dim
            + elem)
            * self.ty.bytes()
    }

    /// Byte offset in `k` of element `elem` of position `pos`'s keys in
    /// `layer`; element `elem + i` is `i ·` [`KvPool::key_stride`] bytes on,
    /// position `pos + i` of the same block `i` elements on.
    #[inline]
    pub(crate) fn key_at(&self, table: &[u32], layer: usize, pos: usize, elem: usize) -> usize {
        let b = table[pos / self.block_size] as usize;
        debug_assert!(b < self.n_blocks);
        (((b * self.n_layer + layer) * self.kv_dim + elem) * self.block_size
            + pos % self.block_size)
            * self.ty.bytes()
    }

    /// Bytes from one element of a position's keys to the next.
    #[inline]
    pub(crate) fn key_stride(&self) -> usize {
        self.block_size * self.ty.bytes()
    }

    /// Store one position's keys and values for `layer`.
    pub(crate) fn store(&mut self, table: &[u32], layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let bytes = self.ty.bytes();
        let at = self.value_at(table, layer, pos, 0);
        let n = self.kv_dim * bytes;
        encode(self.ty, v, &mut self.v[at..at + n]);
        // Keys a chunk at a time through a row buffer, then one element a
        // slot apart each: the same bytes the row would hold.
        let (at, stride) = (self.key_at(table, layer, pos, 0), self.key_stride());
        let mut row = [0u8; 4 * 256];
        for (c, src) in k.chunks(256).enumerate() {
            let row = &mut row[..src.len() * bytes];
            encode(self.ty, src, row);
            for (i, x) in row.chunks_exact(bytes).enumerate() {
                let o = at + (c * 256 + i) * stride;
                self.k[o..o + bytes].copy_from_slice(x);
            }
        }
    }

    /// Position `pos`'s keys of head `g` (`out.len()` elements) in `layer`,
    /// as f32.
    pub(crate) fn key_row(
        &self,
        table: &[u32],
        layer: usize,
        pos: usize,
        g: usize,
        out: &mut [f32],
    ) {
        let (at, stride) = (
            self.key_at(table, layer, pos, g * out.len()),
            self.key_stride(),
        );
        for (i, o) in out.iter_mut().enumerate() {
            *o = decode(self.ty, &self.k[at + i * stride..]);
        }
    }
}

/// `src` as little-endian bytes of `ty` into `out` (as long).
fn encode(ty: KvType, src: &[f32], out: &mut [u8]) {
    match ty {
        KvType::F32 => out
            .chunks_exact_mut(4)
            .zip(src)
            .for_each(|(o, x)| o.copy_from_slice(&x.to_le_bytes())),
        KvType::F16 => crate::tensor::f32_to_f16_bytes(src, out),
    }
}

/// The element of `ty` at the start of `b`, as f32 (exact).
#[inline(always)]
pub(crate) fn decode(ty: KvType, b: &[u8]) -> f32 {
    match ty {
        KvType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        KvType::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
    }
}

/// Positions per block of a single sequence's cache: a key vector's worth.
const CACHE_BLOCK: usize = 16;

/// One sequence's cache: a pool of blocks as long as the context, in order.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) pool: KvPool,
    pub(crate) table: Vec<u32>,
    capacity: usize,
    /// Positions filled.
    pub len: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, kv_dim: usize, capacity: usize, ty: KvType) -> Self {
        let n_blocks = capacity.div_ceil(CACHE_BLOCK).max(1);
        KvCache {
            pool: KvPool::new(n_layer, kv_dim, CACHE_BLOCK, n_blocks, ty),
            table: (0..n_blocks as u32).collect(),
            capacity,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn n_layer(&self) -> usize {
        self.pool.n_layer
    }

    pub fn kv_type(&self) -> KvType {
        self.pool.ty
    }

    /// Bytes held by keys and values together.
    pub fn size_bytes(&self) -> usize {
        self.pool.size_bytes()
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `n` positions.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }
}

impl From<realizar_shared::control::KvType> for KvType {
    fn from(t: realizar_shared::control::KvType) -> Self {
        match t {
            realizar_shared::control::KvType::F16 => KvType::F16,
            realizar_shared::control::KvType::F32 => KvType::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_buffers_start_on_a_cache_line_and_clone_keeps_content_and_alignment() {
        for n in [0, 1, 63, 64, 1000, 1 << 20] {
            let mut b = LineBuf::zeroed(n);
            assert_eq!(b.len(), n);
            assert_eq!(b.as_ptr() as usize % 64, 0, "{n} bytes");
            assert!(b.iter().all(|&x| x == 0));
            b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8);
            let c = b.clone();
            assert_eq!(c.as_ptr() as usize % 64, 0);
            assert_eq!(&c[..], &b[..]);
        }
        let p = KvPool::new(2, 192, 16, 4, KvType::F32);
        assert_eq!(p.k.as_ptr() as usize % 64, 0);
        assert_eq!(p.v.as_ptr() as usize % 64, 0);
    }

    #[test]
    fn f16_halves_the_memory_and_round_trips_values() {
        let a = KvCache::new(2, 8, 16, KvType::F32);
        let mut b = KvCache::new(2, 8, 16, KvType::F16);
        assert_eq!(a.size_bytes(), 2 * b.size_bytes());
        let k: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        b.pool.store(&[0], 1, 5, &k, &v);
        let at = b.pool.value_at(&[0], 1, 5, 0);
        let mut back = vec![0f32; 8];
        crate::tensor::dequantize(
            crate::tensor::GgmlType::F16,
            &b.pool.v[at..at + 16],
            &mut back,
        )
        .unwrap();
        assert_eq!(back, v); // quarter steps are exact in f16
        b.pool.key_row(&[0], 1, 5, 0, &mut back);
        assert_eq!(back, k);
    }

    /// Keys sit transposed within a block: one element of consecutive
    /// positions side by side, a position's elements a block apart; values
    /// a row per position. Neighbouring positions, layers and blocks keep
    /// their own bytes.
    #[test]
    fn keys_are_stored_transposed_within_a_block_and_values_by_row() {
        for ty in [KvType::F32, KvType::F16] {
            let (n_layer, kv_dim, bs) = (2, 6, 4);
            let mut p = KvPool::new(n_layer, kv_dim, bs, 3, ty);
            let table = [2u32, 0];
            let key = |pos: usize, l: usize, e: usize| (pos * 100 + l * 10 + e) as f32;
            for pos in 0..8 {
                for l in 0..n_layer {
                    let k: Vec<f32> = (0..kv_dim).map(|e| key(pos, l, e)).collect();
                    let v: Vec<f32> = k.iter().map(|x| x + 0.5).collect();
                    p.store(&table, l, pos, &k, &v);
                }
            }
            let b = ty.bytes();
            for pos in 0..8 {
                for l in 0..n_layer {
                    for e in 0..kv_dim {
                        let at = p.key_at(&table, l, pos, e);
                        assert_eq!(decode(ty, &p.k[at..]), key(pos, l, e), "{ty:?}");
                        if pos % bs + 1 < bs {
                            assert_eq!(p.key_at(&table, l, pos + 1, e), at + b);
                        }
                        if e + 1 < kv_dim {
                            assert_eq!(at + p.key_stride(), p.key_at(&table, l, pos, e + 1));
                        }
                        let at = p.value_at(&table, l, pos, e);
                        assert_eq!(decode(ty, &p.v[at..]), key(pos, l, e) + 0.5);
                    }
                    let mut row = vec![0f32; 3];
                    p.key_row(&table, l, pos, 1, &mut row);
                    assert_eq!(row, [3, 4, 5].map(|e| key(pos, l, e)));
                }
            }
            // Block 1 was never in the table: untouched.
            let per = n_layer * bs * kv_dim * b;
            assert!(p.k[per..2 * per].iter().all(|&x| x == 0));
        }
    }
}
