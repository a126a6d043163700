//! The hashes placement and routing rank by live in the shared crate
//! (`realizar_shared::hash`): the gateway's envelope reading hashes
//! conversations with them too.

pub use realizar_shared::hash::*;
