//! Per-sequence key/value cache (f32), laid out [layer][position][kv width].

#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    kv_dim: usize,
    capacity: usize,
    n_layer: usize,
    /// Positions filled.
    pub len: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, kv_dim: usize, capacity: usize) -> Self {
        let n = n_layer * capacity * kv_dim;
        KvCache {
            k: vec![0.0; n],
            v: vec![0.0; n],
            kv_dim,
            capacity,
            n_layer,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    pub(crate) fn at(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim
    }

    /// Store one position's keys and values for `layer`.
    pub(crate) fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.at(layer, pos);
        self.k[at..at + self.kv_dim].copy_from_slice(k);
        self.v[at..at + self.kv_dim].copy_from_slice(v);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `n` positions.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }
}
