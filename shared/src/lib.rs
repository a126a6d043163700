//! realizar-shared: the wire layer the node, the gateway and the CLI share
//! (like mini-redis's one command type for server and client): OpenAI
//! request/response types, the node's control protocol and load report,
//! errors, server-sent events, the hashes routing ranks by, metric names, TOML config loading, and the
//! HTTP listener both servers run on.

pub mod config;
pub mod control;
pub mod error;
pub mod hash;
pub mod http_server;
pub mod metrics;
pub mod openai;
pub mod sse;
