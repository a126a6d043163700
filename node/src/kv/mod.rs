//! The KV cache: the paged pool that holds every sequence's keys and values
//! (and the single-sequence cache built on it), and the allocator of its
//! blocks with prefix caching.

pub mod affinity;
pub mod blocks;
pub mod pool;

pub use blocks::{block_hash, prefix_hashes, BlockManager};
pub(crate) use pool::decode;
pub use pool::{KvCache, KvPool, KvType};
