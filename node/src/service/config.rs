//! Node configuration (TOML). Every field has a default, so an empty file
//! (or none) is a valid configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use realizar_shared::config::ConfigError;
use realizar_shared::config::{self as toml_config, Checked};
pub use realizar_shared::control::ModelOptions;
use realizar_shared::http_server::Limits;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub host: String,
    pub port: u16,
    /// The node's name in a cluster, stable across restarts (default: the
    /// advertised URL).
    pub id: Option<String>,
    /// The URL a gateway reaches this node at (default: `http://host:port`).
    pub advertise: Option<String>,
    /// A gateway to join: the node sends it its load report every second
    /// (`POST /admin/nodes/join`, with the admin token when it has one).
    pub join: Option<String>,
    /// Compute threads per model executor (0: all cores).
    pub threads: usize,
    /// Memory for loaded models (weights plus KV pools); loading past it
    /// evicts the least recently used unpinned model.
    pub memory_budget_mib: u64,
    /// Requests queued or running per model before new ones get 429.
    pub max_queue: usize,
    /// Enables `POST /admin/fault/{id}`, which panics the model's executor
    /// in its next step. For the supervision tests: only builds with the
    /// `fault-injection` cargo feature accept it.
    pub fault_injection: bool,
    /// A file holding the admin token: when set, `/admin/*` needs
    /// `Authorization: Bearer <token>` (the gateway presents it).
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself, not from a file: `realizar serve` gives its
    /// in-process node one it makes up. Not read from TOML.
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// Binding to a non-loopback address without an admin token is refused
    /// unless this is set.
    pub allow_open_admin: bool,
    /// Directories `POST /admin/models` may load files from (paths are
    /// resolved inside them; nothing outside is read). Empty: the models
    /// directory the command line gives.
    pub model_dirs: Vec<PathBuf>,
    /// Whether `POST /admin/models` may fetch a catalog model (smollm2,
    /// gemma3) that is not on disk yet.
    pub allow_downloads: bool,
    /// Connection limits (see realizar_shared::http_server).
    pub header_timeout_secs: f64,
    pub idle_timeout_secs: f64,
    pub body_timeout_secs: f64,
    pub max_body_mib: usize,
    pub max_connections: usize,
    /// After SIGTERM: how long requests in flight may finish before their
    /// streams are ended with an error event and the process exits.
    pub shutdown_grace_secs: f64,
    /// After SIGTERM, when a gateway knows the node: how long it waits for
    /// the gateway to drain it (move its models elsewhere, warm first)
    /// before the shutdown above begins. 0: never waits.
    pub leave_timeout_secs: f64,
    /// CPU time one request's tokenization (and chat templating) may take;
    /// past it the request gets a 400.
    pub tokenize_budget_ms: u64,
    /// Events a stream may have generated and not yet sent; past it the
    /// sequence is paused until its client reads.
    pub stream_buffer_events: usize,
    /// A paused stream whose client has not read for this long is cancelled.
    pub stream_stall_secs: f64,
    /// Each connection's socket send buffer (0: the kernel's autotuning).
    pub send_buffer_kib: usize,
    /// Defaults for every model; each `[[models]]` entry may override them.
    pub model_defaults: ModelOptions,
    pub models: Vec<ModelEntry>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            id: None,
            advertise: None,
            join: None,
            threads: 0,
            memory_budget_mib: 8192,
            max_queue: 256,
            fault_injection: false,
            admin_token_file: None,
            admin_token: None,
            allow_open_admin: false,
            model_dirs: Vec::new(),
            allow_downloads: false,
            header_timeout_secs: 10.0,
            idle_timeout_secs: 60.0,
            body_timeout_secs: 30.0,
            max_body_mib: 16,
            max_connections: 1024,
            shutdown_grace_secs: 10.0,
            leave_timeout_secs: 60.0,
            tokenize_budget_ms: 2000,
            stream_buffer_events: 256,
            stream_stall_secs: 30.0,
            send_buffer_kib: 0,
            model_defaults: ModelOptions::default(),
            models: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients use in `model`.
    pub id: String,
    /// A GGUF path, or a known model name (smollm2, gemma3).
    pub path: String,
    /// Pinned models are never evicted.
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub options: Option<ModelOptions>,
}

/// Environment variables that set configuration keys start with this.
pub const ENV_PREFIX: &str = "REALIZAR_NODE_";

impl NodeConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        toml_config::load(path)
    }

    pub fn from_toml(text: &str, file: &str) -> Result<Self, ConfigError> {
        toml_config::from_toml(text, file)
    }

    /// The file (if any) with `REALIZAR_NODE_<KEY>` environment variables over
    /// it (`toml_config::load_with_env`): how containers configure it.
    pub fn from_file_and_env(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        toml_config::load_with_env(path, ENV_PREFIX, std::env::vars())
    }

    /// The limits that need checking beyond their types.
    pub fn check_limits(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |field: &str, message: &str| {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                field: field.to_owned(),
                message: message.to_owned(),
            })
        };
        for (field, v) in [
            ("header_timeout_secs", self.header_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("body_timeout_secs", self.body_timeout_secs),
            ("stream_stall_secs", self.stream_stall_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86400.0) {
                return bad(
                    field,
                    "must be a number of seconds above 0 and at most 86400",
                );
            }
        }
        if !(self.shutdown_grace_secs.is_finite()
            && (0.0..=3600.0).contains(&self.shutdown_grace_secs))
        {
            return bad("shutdown_grace_secs", "must be between 0 and 3600");
        }
        if !(self.leave_timeout_secs.is_finite()
            && (0.0..=3600.0).contains(&self.leave_timeout_secs))
        {
            return bad("leave_timeout_secs", "must be between 0 and 3600");
        }
        if self.max_body_mib == 0 || self.max_body_mib > 1024 {
            return bad("max_body_mib", "must be between 1 and 1024");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.tokenize_budget_ms == 0 {
            return bad("tokenize_budget_ms", "must be at least 1");
        }
        if self.stream_buffer_events < 4 {
            return bad("stream_buffer_events", "must be at least 4");
        }
        if self.fault_injection && !cfg!(feature = "fault-injection") {
            return bad(
                "fault_injection",
                "this build has no fault injection (cargo feature `fault-injection`)",
            );
        }
        if let Some(id) = &self.id {
            if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
                return bad(
                    "id",
                    "must be 1 to 128 characters without control characters",
                );
            }
        }
        self.model_defaults.check(file, "model_defaults")?;
        for (i, m) in self.models.iter().enumerate() {
            if let Some(o) = &m.options {
                o.check(file, &format!("models[{i}].options"))?;
            }
        }
        Ok(())
    }

    /// Where a gateway reaches this node.
    pub fn advertised_url(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", self.host, self.port))
    }

    /// The node's id: `id`, else the advertised URL.
    pub fn node_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.advertised_url())
    }

    /// The listener's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: Duration::from_secs_f64(self.header_timeout_secs),
            idle_timeout: Duration::from_secs_f64(self.idle_timeout_secs),
            body_timeout: Duration::from_secs_f64(self.body_timeout_secs),
            max_body_bytes: self.max_body_mib << 20,
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_secs_f64(self.shutdown_grace_secs),
            flush: Duration::from_secs(2),
            send_buffer_bytes: (self.send_buffer_kib > 0).then_some(self.send_buffer_kib << 10),
        }
    }

    pub fn threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
    }
}

impl Checked for NodeConfig {
    fn check(&self, file: &str) -> Result<(), ConfigError> {
        self.check_limits(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults_and_errors_name_the_field() {
        let c = NodeConfig::from_toml("", "x.toml").unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.model_defaults, ModelOptions::default());
        let c = NodeConfig::from_toml(
            "port = 9000\n[[models]]\nid = \"a\"\npath = \"smollm2\"\npinned = true\n[models.options]\nmax_batch = 4\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.port, 9000);
        assert!(c.models[0].pinned);
        assert_eq!(c.models[0].options.as_ref().unwrap().max_batch, 4);
        let e =
            NodeConfig::from_toml("[model_defaults]\nkv_type = \"q4\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("model_defaults.kv_type"), "{e}");
        // The llama.cpp-parity numerics are a tool of `run` and `perplexity`,
        // not a serving option.
        let e = NodeConfig::from_toml("[model_defaults]\nnumerics = \"ggml-avx2\"\n", "x.toml")
            .unwrap_err();
        assert!(e.to_string().contains("numerics"), "{e}");
        let e = NodeConfig::from_toml("prot = 1\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_shipped_example_config_parses() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/node.toml");
        let c = super::NodeConfig::from_file(std::path::Path::new(p)).unwrap();
        assert_eq!(c.models.len(), 2);
        assert!(c.models[0].pinned);
        assert_eq!(c.models[1].options.as_ref().unwrap().n_ctx, 8192);
    }

    #[test]
    fn no_file_and_no_variables_is_the_default() {
        let from_env = super::NodeConfig::from_file_and_env(None).unwrap();
        assert_eq!(
            format!("{from_env:?}"),
            format!("{:?}", super::NodeConfig::default())
        );
    }
}
