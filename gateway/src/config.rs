//! The gateway's TOML (configs/cluster.toml): where it listens, which
//! nodes it knows, how it routes, its keys, and the model catalog. Read by
//! shared/config.rs, so unknown keys are refused and every error names the
//! file and the field (`models[1].replicas`). Command-line flags override
//! it and add to its lists.

use std::path::PathBuf;

use realizar_shared::config::{self as toml_config, Checked, ConfigError};
use serde::Deserialize;

use crate::catalog::CatalogEntry;
use crate::routing::Policy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub host: String,
    pub port: u16,
    /// Node base URLs.
    pub nodes: Vec<String>,
    /// `NAME:PORT` names whose addresses are nodes.
    pub discover_dns: Vec<String>,
    pub dns_every_secs: f64,
    pub policy: Policy,
    pub epsilon: f64,
    pub spill_floor: u64,
    pub cached_epsilon: f64,
    pub drain_timeout_secs: f64,
    /// A node silent (no poll answered, no heartbeat) this long is down.
    pub down_after_secs: f64,
    /// Replica loads under way at once across the cluster.
    pub max_loads: usize,
    pub api_keys_file: Option<PathBuf>,
    pub admin_key_file: Option<PathBuf>,
    pub cluster_token_file: Option<PathBuf>,
    pub models: Vec<CatalogEntry>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            nodes: Vec::new(),
            discover_dns: Vec::new(),
            dns_every_secs: 5.0,
            policy: Policy::Affinity,
            epsilon: 0.25,
            spill_floor: 4,
            cached_epsilon: 1.0,
            drain_timeout_secs: 300.0,
            down_after_secs: crate::membership::DOWN_AFTER.as_secs_f64(),
            max_loads: crate::coordinator::MAX_LOADS,
            api_keys_file: None,
            admin_key_file: None,
            cluster_token_file: None,
            models: Vec::new(),
        }
    }
}

/// Environment variables that set configuration keys start with this.
pub const ENV_PREFIX: &str = "REALIZAR_GATEWAY_";

impl GatewayConfig {
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        toml_config::load(path)
    }

    pub fn from_toml(text: &str, file: &str) -> Result<Self, ConfigError> {
        toml_config::from_toml(text, file)
    }

    /// The file (if any) with `REALIZAR_GATEWAY_<KEY>` environment variables over
    /// it (`toml_config::load_with_env`): how containers configure it.
    pub fn from_file_and_env(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        toml_config::load_with_env(path, ENV_PREFIX, std::env::vars())
    }
}

impl Checked for GatewayConfig {
    fn check(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |field: String, message: &str| Err(ConfigError::invalid(file, field, message));
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad("epsilon".into(), "must be a number above 0");
        }
        if !(self.cached_epsilon.is_finite() && self.cached_epsilon >= self.epsilon) {
            return bad(
                "cached_epsilon".into(),
                "must be a number at least `epsilon`",
            );
        }
        if !(self.dns_every_secs.is_finite() && self.dns_every_secs >= 0.1) {
            return bad("dns_every_secs".into(), "must be at least 0.1");
        }
        if !(self.down_after_secs.is_finite() && self.down_after_secs >= 1.0) {
            return bad(
                "down_after_secs".into(),
                "must be at least 1 (two polls of 0.5 s)",
            );
        }
        if self.max_loads == 0 {
            return bad("max_loads".into(), "must be at least 1");
        }
        if !(self.drain_timeout_secs.is_finite() && self.drain_timeout_secs > 0.0) {
            return bad("drain_timeout_secs".into(), "must be a number above 0");
        }
        for (i, u) in self.nodes.iter().enumerate() {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.parse::<hyper::Uri>().is_ok();
            if !ok {
                return bad(format!("nodes[{i}]"), "must be an http(s) URL");
            }
        }
        for (i, d) in self.discover_dns.iter().enumerate() {
            if !d
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return bad(format!("discover_dns[{i}]"), "must be NAME:PORT");
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if let Err((field, why)) = m.check() {
                return bad(format!("models[{i}].{field}"), &why);
            }
            if !seen.insert(m.id.as_str()) {
                return bad(format!("models[{i}].id"), "is already in the catalog");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/cluster.toml");
        let c = GatewayConfig::from_file(std::path::Path::new(p)).unwrap();
        assert_eq!(c.policy, Policy::Affinity);
        assert!(c
            .models
            .iter()
            .any(|m| m.id == "smollm2" && m.replicas == 2));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = GatewayConfig::from_toml(
            "[[models]]\nid = \"a\"\npath = \"smollm2\"\nreplicas = 0\n",
            "cluster.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cluster.toml") && e.contains("models[0].replicas"),
            "{e}"
        );
        let e = GatewayConfig::from_toml("policy = \"random\"\n", "cluster.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy"), "{e}");
        let e = GatewayConfig::from_toml(
            "[[models]]\nid = \"a\"\npath = \"x\"\nreplica = 2\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("replica"), "{e}");
        let e = GatewayConfig::from_toml("nodes = [\"10.0.0.1:80\"]\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodes[0]"), "{e}");
    }

    #[test]
    fn no_file_and_no_variables_is_the_default() {
        let from_env = GatewayConfig::from_file_and_env(None).unwrap();
        assert_eq!(
            format!("{from_env:?}"),
            format!("{:?}", GatewayConfig::default())
        );
    }
}
