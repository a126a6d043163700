//! realizar-node: the inference engine and the node process that serves it.
//!
//! - `format/`, `tensor/`, `model/`, `tokenizer/`, `sampling.rs`: the engine
//!   proper (files, kernels, architectures, text, token choice)
//! - `kv/`: the paged KV pool and its block allocator with prefix caching
//! - `engine/`: requests, the continuous-batching scheduler, the executor
//! - `actors/`: the registry (supervisor) and one actor per model
//! - `service/`: configuration, the node facade, `run`
//! - `http/`: the API routes

pub mod actors;
pub mod engine;
pub mod eval;
pub mod format;
pub mod http;
pub mod kv;
pub mod model;
pub mod sampling;
pub mod service;
pub mod tensor;
pub mod tokenizer;
