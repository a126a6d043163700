//! The node's actors (ractor). The registry is the supervisor: it loads,
//! warms and unloads models within a memory budget (evicting the least
//! recently used unpinned model) and owns one model actor per loaded model.
//! A model actor owns its executor thread (engine/): it forwards requests to
//! it and restarts it when it panics.

pub mod model;
pub mod registry;
pub mod sources;

pub use model::{ModelActor, ModelMsg};
pub use registry::{ModelHandle, Models, Registry, RegistryArgs, RegistryError, RegistryMsg};
