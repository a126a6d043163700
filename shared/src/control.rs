//! The node's control protocol, spoken by the gateway (and `realizar`'s own
//! tools): what a model load asks for, what a node says about its models,
//! and the load report a node gives (`GET /admin/report`) and heartbeats.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Element type of a model's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    #[default]
    F16,
    F32,
}

/// Per-model serving limits (in a node's TOML and in a load request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOptions {
    /// Context length (prompt plus generation); 0: the model's training
    /// context, capped by the KV pool.
    pub n_ctx: usize,
    /// Memory for the model's paged KV pool.
    pub kv_memory_mib: usize,
    /// Positions per KV block.
    pub block_size: usize,
    pub kv_type: KvType,
    /// Most sequences in the running batch.
    pub max_batch: usize,
    /// Most tokens one step computes (decodes plus prefill chunks).
    pub max_step_tokens: usize,
    /// Most prompt-lookup draft tokens a decoding sequence verifies per
    /// step (speculative decoding); 0: none.
    pub draft_max: usize,
}

/// Draft tokens per step by default: enough that a passage quoted back is
/// produced several tokens a step, few enough that a wrong guess costs
/// little.
pub const DRAFT_MAX: usize = 8;

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            n_ctx: 4096,
            kv_memory_mib: 512,
            block_size: 16,
            kv_type: KvType::F16,
            max_batch: 16,
            max_step_tokens: 256,
            draft_max: DRAFT_MAX,
        }
    }
}

impl ModelOptions {
    /// Range checks; `at` is the options' place in `file` (e.g.
    /// `models[1].options`), so errors name the whole field path.
    pub fn check(&self, file: &str, at: &str) -> Result<(), ConfigError> {
        let bad = |field: &str, message: &str| {
            Err(ConfigError::invalid(file, format!("{at}.{field}"), message))
        };
        if self.block_size == 0 || self.block_size > 1024 {
            return bad("block_size", "must be between 1 and 1024");
        }
        if self.max_batch == 0 {
            return bad("max_batch", "must be at least 1");
        }
        if self.max_step_tokens == 0 {
            return bad("max_step_tokens", "must be at least 1");
        }
        if self.draft_max > 64 {
            return bad("draft_max", "must be at most 64");
        }
        if self.kv_memory_mib == 0 {
            return bad("kv_memory_mib", "must be at least 1");
        }
        Ok(())
    }
}

/// `POST /admin/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// A file inside the node's model directories, or a catalog name.
    pub path: String,
    /// The name clients use (default: `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Pinned models are never evicted and unload only with `force`.
    #[serde(default)]
    pub pinned: bool,
    /// Default: the node's `model_defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<ModelOptions>,
}

/// `DELETE /admin/models/{id}` answers this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unloaded {
    pub id: String,
    pub unloaded: bool,
}

/// Where a model is in its life on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    /// Being opened and warmed: not yet served.
    Loading,
    /// Served.
    Ready,
    /// No longer taking requests; finishing the ones in flight.
    Unloading,
}

/// One model on a node: what it is and how busy it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub state: ModelState,
    /// The file it was loaded from (empty while loading).
    pub path: String,
    pub architecture: String,
    pub pinned: bool,
    /// Memory it holds: the file plus its KV pool.
    pub bytes: u64,
    pub load_seconds: f64,
    pub n_ctx: usize,
    /// Requests submitted and not finished.
    pub inflight: usize,
    /// Sequences in the running batch, and queued.
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_capacity: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Hashes of cached prompt blocks (chained per block of `block_size`
    /// tokens, as the node's prefix cache keys them), busiest first.
    #[serde(default)]
    pub prefix_hashes: Vec<u64>,
    /// Gateway affinity keys (`AFFINITY_HEADER`) whose prompt start is in
    /// the prefix cache, most recently seen first (at most 256).
    #[serde(default)]
    pub affinity_keys: Vec<u64>,
    /// Gateway conversation keys (`CONVERSATION_HEADER`) whose prompt is
    /// still cached here, nearly to its end: a next turn sent here finds
    /// its history. Most recently seen first (at most 256).
    #[serde(default)]
    pub conversation_keys: Vec<u64>,
    /// Of the last `START_TALLY` requests whose prompt start this node had
    /// held cached (a start key it saw before, whose probe block it has
    /// been seen to cache), how many came back to find it evicted: whether
    /// this cache is too small for the prompt starts sent to it, so that a
    /// copy made elsewhere costs another tenant's start.
    #[serde(default)]
    pub starts_returned: u32,
    #[serde(default)]
    pub starts_lost: u32,
}

/// How many returning prompt starts `ModelInfo::starts_returned` counts
/// (the latest).
pub const START_TALLY: usize = 64;

/// The header a gateway names a request's affinity keys in (16 hex digits
/// each, at most two, comma-separated: its user's and its prompt start's),
/// so the node can report which keys it has the prompt start of cached.
pub const AFFINITY_HEADER: &str = "x-realizar-affinity";
/// The header a gateway names a request's conversation key in (16 hex
/// digits), so the node can report while the whole prompt is cached.
pub const CONVERSATION_HEADER: &str = "x-realizar-conversation";

/// What a gateway tells a node about a request for its cache report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Affinity {
    /// Keys of the prompt's start (at most two).
    pub start: Vec<u64>,
    /// The key of the whole prompt.
    pub conversation: Option<u64>,
}

impl Affinity {
    /// From the two headers' values; None when neither names a key.
    /// Malformed values are ignored (they only steer routing).
    pub fn from_headers(affinity: Option<&str>, conversation: Option<&str>) -> Option<Affinity> {
        let hex = |s: &str| u64::from_str_radix(s.trim(), 16).ok();
        let start: Vec<u64> = affinity
            .into_iter()
            .flat_map(|v| v.split(','))
            .take(2)
            .filter_map(hex)
            .collect();
        let conversation = conversation.and_then(hex);
        (!start.is_empty() || conversation.is_some()).then_some(Affinity {
            start,
            conversation,
        })
    }

    /// The headers' values: (affinity, conversation).
    pub fn to_headers(&self) -> (Option<String>, Option<String>) {
        let start = (!self.start.is_empty()).then(|| {
            self.start
                .iter()
                .map(|k| format!("{k:016x}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        (start, self.conversation.map(|k| format!("{k:016x}")))
    }
}

/// Header: the gateway asks a stream for its token ids, as SSE comment
/// lines (which OpenAI clients ignore, and the gateway strips): first
/// `: realizar-prompt ID ID …` (the prompt as the model saw it), then with
/// each chunk `: realizar-ids ID …` (the tokens whose text it carries, and
/// any held back before). With them the gateway can resume the stream
/// elsewhere if its node fails (`RESUME_HEADER`).
pub const TOKEN_IDS_HEADER: &str = "x-realizar-token-ids";
pub const PROMPT_IDS_COMMENT: &str = "realizar-prompt";
pub const TOKEN_IDS_COMMENT: &str = "realizar-ids";
/// Header: the body has a `realizar_resume` field ([`Resume`]): continue a
/// stream another node began.
pub const RESUME_HEADER: &str = "x-realizar-resume";
pub const RESUME_FIELD: &str = "realizar_resume";

/// A stream to continue: the original request's body plus this. The node
/// runs `tokens` (the prompt and what was generated) as the prompt, counts
/// `generated` of them as already generated (for `max_tokens` and usage),
/// answers under the first response's id and creation time, and leaves out
/// the chat role chunk the client already has. Seeded sampling draws by
/// position, so the continuation draws what the first node would have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    pub tokens: Vec<u32>,
    pub generated: usize,
    pub id: String,
    pub created: u64,
}

/// `GET /admin/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
}

/// A node's load report: `GET /admin/report`, and what it heartbeats to a
/// gateway. Everything the gateway routes and places by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Stable across restarts: `--id`, else the advertised URL.
    pub node_id: String,
    /// Where the gateway reaches the node.
    pub url: String,
    /// The node's `realizar` version.
    pub version: String,
    pub uptime_seconds: f64,
    /// Shutting down: route nothing new to it.
    pub draining: bool,
    /// Told to stop (SIGTERM) and asking its gateway to drain it first: it
    /// serves on meanwhile, and exits once it holds no model (or nobody
    /// drains it). A report from after a restart says false again.
    #[serde(default)]
    pub leaving: bool,
    /// Models this node evicted on its own (its memory budget, to load
    /// another) in the last minutes, newest last: the gateway places them
    /// elsewhere rather than load them back into the same squeeze.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<Eviction>,
    pub memory_budget_bytes: u64,
    pub memory_used_bytes: u64,
    /// Compute threads per model.
    pub threads: usize,
    pub models: Vec<ModelInfo>,
}

/// One eviction in a load report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eviction {
    pub id: String,
    /// What it held (weights and KV pool).
    pub bytes: u64,
    pub seconds_ago: f64,
}

impl LoadReport {
    pub fn model(&self, id: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.id == id)
    }

    /// A node up for a second with a 1 GiB budget and no models: what the
    /// gateway's tests and simulator build their reports from.
    pub fn empty(node_id: &str, url: &str) -> LoadReport {
        LoadReport {
            node_id: node_id.to_owned(),
            url: url.to_owned(),
            version: String::new(),
            uptime_seconds: 1.0,
            draining: false,
            leaving: false,
            evicted: Vec::new(),
            memory_budget_bytes: 1 << 30,
            memory_used_bytes: 0,
            threads: 1,
            models: Vec::new(),
        }
    }
}

impl ModelInfo {
    /// A llama model of 1 byte in `state` with nothing in flight and
    /// nothing cached: what the gateway's tests and simulator build their
    /// reports from.
    pub fn idle(id: &str, state: ModelState) -> ModelInfo {
        ModelInfo {
            id: id.to_owned(),
            state,
            path: String::new(),
            architecture: "llama".into(),
            pinned: false,
            bytes: 1,
            load_seconds: 0.0,
            n_ctx: 1,
            inflight: 0,
            running: 0,
            waiting: 0,
            kv_blocks_used: 0,
            kv_blocks_capacity: 1,
            block_size: 16,
            prefix_hashes: Vec::new(),
            affinity_keys: Vec::new(),
            conversation_keys: Vec::new(),
            starts_returned: 0,
            starts_lost: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_headers_round_trip_and_bad_values_are_ignored() {
        let a = Affinity {
            start: vec![1, u64::MAX],
            conversation: Some(0xabc),
        };
        let (s, c) = a.to_headers();
        assert_eq!(s.as_deref(), Some("0000000000000001,ffffffffffffffff"));
        assert_eq!(Affinity::from_headers(s.as_deref(), c.as_deref()), Some(a));
        // Only two start keys are taken; junk is skipped, not an error.
        let b = Affinity::from_headers(Some("zz,5,6,7"), Some("not hex")).unwrap();
        assert_eq!(b.start, [5]);
        assert_eq!(b.conversation, None);
        assert_eq!(Affinity::from_headers(None, None), None);
        assert_eq!(Affinity::from_headers(Some(""), Some("")), None);
    }

    #[test]
    fn enums_are_lowercase_strings_and_unknown_option_keys_are_refused() {
        let o: ModelOptions = serde_json::from_str(r#"{"kv_type":"f32","max_batch":4}"#).unwrap();
        assert_eq!(o.kv_type, KvType::F32);
        assert_eq!(o.max_batch, 4);
        assert_eq!(o.block_size, ModelOptions::default().block_size);
        let e = serde_json::from_str::<ModelOptions>(r#"{"kv_type":"q4"}"#).unwrap_err();
        assert!(e.to_string().contains("f16"), "{e}");
        let e = serde_json::from_str::<ModelOptions>(r#"{"numerics":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("numerics"), "{e}");
        assert_eq!(
            serde_json::to_value(ModelState::Unloading).unwrap(),
            "unloading"
        );
        let e = ModelOptions {
            max_batch: 0,
            ..Default::default()
        }
        .check("node.toml", "models[2].options")
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node.toml: `models[2].options.max_batch`: must be at least 1"
        );
    }
}
