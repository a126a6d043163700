//! realizar-shared: types shared by the node, the gateway and the CLI.

pub mod error;
pub mod http_server;
