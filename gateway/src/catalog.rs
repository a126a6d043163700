//! The models the cluster serves: from `--model`, the gateway's TOML
//! (`[[models]]` in configs/cluster.toml) and the admin routes, which
//! add, remove, pin and change replica counts while it runs.

use std::collections::{BTreeMap, BTreeSet};

use realizar_shared::control::ModelOptions;
use serde::{Deserialize, Serialize};

/// The most replicas one model may ask for.
pub const MAX_REPLICAS: usize = 1024;

/// A model the cluster serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// The name clients use.
    pub id: String,
    /// What the node loads: a catalog name or a file inside its model
    /// directories.
    pub path: String,
    #[serde(default = "one")]
    pub replicas: usize,
    /// Nodes (by id) that own the model whenever they are live and it fits
    /// them, before hashing chooses the rest of its replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pin: Vec<String>,
    /// What the nodes load it with (default: each node's own defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<ModelOptions>,
    /// Demand-driven replicas: up to this many while its queue is long
    /// (`replicas` is then the minimum, and may be 0: scaled to zero, the
    /// first request waits while a node loads it). None: `replicas`, fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<usize>,
    /// Waiting sequences across its replicas above which one is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up_waiting: Option<usize>,
    /// Seconds without a request before it goes back to `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_secs: Option<f64>,
}

fn one() -> usize {
    1
}

impl CatalogEntry {
    /// `ID=PATH_OR_NAME[@REPLICAS]`, or `NAME[@REPLICAS]`; REPLICAS is a
    /// count or MIN-MAX (demand-driven, MIN may be 0).
    pub fn parse(s: &str) -> Result<Self, String> {
        let count = |r: &str| {
            r.parse::<usize>()
                .map_err(|_| format!("--model {s}: replicas must be N or MIN-MAX, whole numbers"))
        };
        let (spec, replicas, max_replicas) = match s.rsplit_once('@') {
            Some((a, r)) => match r.split_once('-') {
                Some((lo, hi)) => (a, count(lo)?, Some(count(hi)?)),
                None => (a, count(r)?, None),
            },
            None => (s, 1, None),
        };
        let (id, path) = spec.split_once('=').unwrap_or((spec, spec));
        let e = CatalogEntry {
            id: id.to_owned(),
            path: path.to_owned(),
            replicas,
            pin: Vec::new(),
            options: None,
            max_replicas,
            scale_up_waiting: None,
            keep_alive_secs: None,
        };
        e.check()
            .map_err(|(field, why)| format!("--model {s}: `{field}` {why}"))?;
        Ok(e)
    }

    /// Range checks: the offending field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.id.is_empty() || self.id.len() > 256 || self.id.chars().any(char::is_control) {
            return Err(("id", "must be 1 to 256 printable characters".into()));
        }
        if self.path.is_empty() {
            return Err(("path", "must not be empty".into()));
        }
        match self.max_replicas {
            None if !(1..=MAX_REPLICAS).contains(&self.replicas) => {
                return Err(("replicas", format!("must be between 1 and {MAX_REPLICAS}")));
            }
            Some(max) if !(1..=MAX_REPLICAS).contains(&max) => {
                return Err((
                    "max_replicas",
                    format!("must be between 1 and {MAX_REPLICAS}"),
                ));
            }
            Some(max) if self.replicas > max => {
                return Err(("replicas", "must be at most `max_replicas`".into()));
            }
            _ => {}
        }
        if self.scale_up_waiting == Some(0) {
            return Err(("scale_up_waiting", "must be at least 1".into()));
        }
        if let Some(k) = self.keep_alive_secs {
            if !(k.is_finite() && k > 0.0) {
                return Err((
                    "keep_alive_secs",
                    "must be a number of seconds above 0".into(),
                ));
            }
        }
        if self.pin.iter().any(String::is_empty) {
            return Err(("pin", "node ids must not be empty".into()));
        }
        if let Some(o) = &self.options {
            o.check("request", "options")
                .map_err(|e| ("options", e.to_string()))?;
        }
        Ok(())
    }
}

/// The catalog and what was taken out of it (whose replicas the
/// coordinator still has to unload).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
    /// Removed ids some node may still hold.
    pub removed: BTreeSet<String>,
    /// Bumped on every change.
    pub version: u64,
}

impl Catalog {
    pub fn new(mut entries: Vec<CatalogEntry>) -> Result<Self, String> {
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = entries.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(format!("model `{}` is in the catalog twice", w[0].id));
        }
        Ok(Catalog {
            entries,
            removed: BTreeSet::new(),
            version: 0,
        })
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    pub fn get(&self, id: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Add a model or replace its entry; true when it is new.
    pub fn upsert(&mut self, e: CatalogEntry) -> bool {
        self.version += 1;
        self.removed.remove(&e.id);
        match self.entries.binary_search_by(|x| x.id.cmp(&e.id)) {
            Ok(i) => {
                self.entries[i] = e;
                false
            }
            Err(i) => {
                self.entries.insert(i, e);
                true
            }
        }
    }

    /// This catalog with each model's replica count replaced by `counts`
    /// (demand-driven; scale.rs).
    pub fn with_replicas(&self, counts: &BTreeMap<String, usize>) -> Catalog {
        let mut c = self.clone();
        for e in &mut c.entries {
            if let Some(&n) = counts.get(&e.id) {
                e.replicas = n;
            }
        }
        c
    }

    /// Take a model out; its replicas are unloaded as they go idle.
    pub fn remove(&mut self, id: &str) -> Option<CatalogEntry> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        self.version += 1;
        self.removed.insert(id.to_owned());
        Some(self.entries.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        let e = CatalogEntry::parse("chat=smollm2@2").unwrap();
        assert_eq!(
            (e.id.as_str(), e.path.as_str(), e.replicas),
            ("chat", "smollm2", 2)
        );
        let e = CatalogEntry::parse("gemma3").unwrap();
        assert_eq!(
            (e.id.as_str(), e.path.as_str(), e.replicas),
            ("gemma3", "gemma3", 1)
        );
        assert!(CatalogEntry::parse("x@0").unwrap_err().contains("replicas"));
        let e = CatalogEntry::parse("m=gemma3@0-2").unwrap();
        assert_eq!((e.replicas, e.max_replicas), (0, Some(2)));
        assert!(CatalogEntry::parse("x@3-2")
            .unwrap_err()
            .contains("`replicas`"));
        assert!(CatalogEntry::parse("x@0-0")
            .unwrap_err()
            .contains("max_replicas"));
        assert!(CatalogEntry::parse("x@two").is_err());
        assert!(CatalogEntry::parse("=p").unwrap_err().contains("`id`"));
        assert!(CatalogEntry::parse("a=").unwrap_err().contains("`path`"));
    }

    #[test]
    fn changes_are_versioned_and_removals_remembered() {
        let mut c = Catalog::new(vec![CatalogEntry::parse("b@1").unwrap()]).unwrap();
        assert!(c.upsert(CatalogEntry::parse("a@2").unwrap()));
        assert_eq!(
            c.entries()
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(!c.upsert(CatalogEntry::parse("a@3").unwrap()));
        assert_eq!(c.get("a").unwrap().replicas, 3);
        assert!(c.remove("b").is_some());
        assert!(c.removed.contains("b"));
        assert!(c.remove("b").is_none());
        // Adding it back forgets the removal.
        c.upsert(CatalogEntry::parse("b").unwrap());
        assert!(c.removed.is_empty());
        assert_eq!(c.version, 4);
        assert!(Catalog::new(vec![
            CatalogEntry::parse("a").unwrap(),
            CatalogEntry::parse("a@2").unwrap()
        ])
        .is_err());
    }
}
