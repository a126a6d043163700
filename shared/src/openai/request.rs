//! OpenAI request bodies. Clients (the bench, the gateway's tests) build
//! them with serde; the node and the gateway read them with `from_json`,
//! which checks types and the request's shape field by field so a bad
//! request gets a 400 naming the parameter (serde's own errors name a
//! line and column, not a parameter). Ranges that belong to sampling
//! (temperature, top_p, penalties, logit bias) are checked where sampling
//! is, by the node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Parameters both endpoints take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Also read as llama.cpp's `repeat_penalty`.
    #[serde(
        default,
        alias = "repeat_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Token id → bias.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logit_bias: BTreeMap<u32, f32>,
    /// Also read as `max_completion_tokens` and llama.cpp's `n_predict`.
    #[serde(
        default,
        alias = "max_completion_tokens",
        alias = "n_predict",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Keep generating past end-of-generation tokens (vLLM's, llama.cpp's).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Prompt-lookup speculative decoding: on by default for greedy
    /// requests (temperature 0), `false` turns it off, `true` turns it on
    /// for sampled ones. The output is the same either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl GenParams {
    pub fn stops(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }

    pub fn n(&self) -> usize {
        self.n.unwrap_or(1) as usize
    }
}

/// A chat message's content: text, or parts of which only text is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// system, developer, user, assistant or tool.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
}

impl Message {
    pub fn new(role: &str, text: &str) -> Self {
        Message {
            role: role.to_owned(),
            content: Some(Content::Text(text.to_owned())),
        }
    }

    /// The content as one text.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(p)) => p.iter().map(|p| p.text.as_str()).collect(),
        }
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// Optional when the node serves one model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u64>,
    #[serde(flatten)]
    pub params: GenParams,
}

/// A completion prompt: text(s) or token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Alternatives per token (0–20); present means log-probabilities on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u64>,
    #[serde(flatten)]
    pub params: GenParams,
}

/// `POST /tokenize` (llama-server's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub content: String,
    #[serde(default = "yes")]
    pub add_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetokenizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

fn yes() -> bool {
    true
}

// ------------------------------------------------------------- reading

/// The body as a JSON object, or a 400.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
            None,
            "invalid_json",
        )),
        Err(e) => Err(ApiError::bad_request(
            format!("the request body is not valid JSON: {e}"),
            None,
            "invalid_json",
        )),
    }
}

/// Typed reads of an object's fields; null counts as absent.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    pub fn f32(&self, k: &str) -> Result<Option<f32>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(|x| Some(x as f32))
                .ok_or_else(|| ApiError::invalid_param(k, format!("`{k}` must be a number"))),
        }
    }
    pub fn uint(&self, k: &str) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ApiError::invalid_param(k, format!("`{k}` must be a non-negative integer"))
            }),
        }
    }
    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| ApiError::invalid_param(k, format!("`{k}` must be a boolean"))),
        }
    }
    pub fn str(&self, k: &str) -> Result<Option<&str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::invalid_param(k, format!("`{k}` must be a string"))),
        }
    }
}

/// OpenAI parameters this server does not implement: refused by name
/// rather than silently ignored (as vLLM and llama-server do). Each entry is
/// the parameter and whether a value counts as asking for it.
type AsksFor = fn(&Value) -> bool;
pub const UNSUPPORTED: &[(&str, AsksFor)] = &[
    ("best_of", |v| v.as_u64() != Some(1)),
    ("echo", |v| v != &Value::Bool(false)),
    ("suffix", |v| v.as_str() != Some("")),
    ("tools", |v| !matches!(v, Value::Array(a) if a.is_empty())),
    ("tool_choice", |v| v.as_str() != Some("none")),
    (
        "functions",
        |v| !matches!(v, Value::Array(a) if a.is_empty()),
    ),
    ("function_call", |v| v.as_str() != Some("none")),
    ("parallel_tool_calls", |_| false),
    ("response_format", |v| {
        v.get("type").and_then(Value::as_str) != Some("text")
    }),
    ("audio", |_| true),
    (
        "modalities",
        |v| !matches!(v, Value::Array(a) if a.iter().all(|m| m == "text")),
    ),
    ("prediction", |_| true),
    ("web_search_options", |_| true),
    ("guided_json", |_| true),
    ("guided_regex", |_| true),
    ("guided_choice", |_| true),
    ("guided_grammar", |_| true),
    ("grammar", |_| true),
    ("json_schema", |_| true),
];

fn refuse_unsupported(p: &Fields) -> Result<(), ApiError> {
    for (k, asks) in UNSUPPORTED {
        if let Some(v) = p.get(k) {
            if asks(v) {
                return Err(ApiError::bad_request(
                    format!("`{k}` is not supported by this server"),
                    Some(k),
                    "unsupported_parameter",
                ));
            }
        }
    }
    Ok(())
}

impl GenParams {
    fn read(p: &Fields) -> Result<Self, ApiError> {
        refuse_unsupported(p)?;
        let mut g = GenParams {
            temperature: p.f32("temperature")?,
            top_p: p.f32("top_p")?,
            top_k: p.uint("top_k")?,
            min_p: p.f32("min_p")?,
            presence_penalty: p.f32("presence_penalty")?,
            frequency_penalty: p.f32("frequency_penalty")?,
            ..Default::default()
        };
        for k in ["repetition_penalty", "repeat_penalty"] {
            if let Some(v) = p.f32(k)? {
                g.repetition_penalty = Some(v);
            }
        }
        if let Some(v) = p.get("seed") {
            g.seed = Some(
                v.as_u64()
                    .or_else(|| v.as_i64().map(|x| x as u64))
                    .ok_or_else(|| ApiError::invalid_param("seed", "`seed` must be an integer"))?,
            );
        }
        if let Some(v) = p.get("logit_bias") {
            let m = v.as_object().ok_or_else(|| {
                ApiError::invalid_param("logit_bias", "`logit_bias` must map token ids to numbers")
            })?;
            for (k, b) in m {
                let id: u32 = k.parse().map_err(|_| {
                    ApiError::invalid_param(
                        "logit_bias",
                        format!("`logit_bias`: {k:?} is not a token id"),
                    )
                })?;
                let b = b.as_f64().filter(|b| b.is_finite()).ok_or_else(|| {
                    ApiError::invalid_param("logit_bias", "`logit_bias` values must be numbers")
                })?;
                g.logit_bias.insert(id, b as f32);
            }
        }
        for k in ["max_tokens", "max_completion_tokens", "n_predict"] {
            if let Some(v) = p.uint(k)? {
                if v == 0 {
                    return Err(ApiError::invalid_param(
                        k,
                        format!("`{k}` must be at least 1"),
                    ));
                }
                g.max_tokens = Some(v);
            }
        }
        g.stop = match p.get("stop") {
            None => None,
            Some(Value::String(s)) => Some(Stop::One(s.clone())),
            Some(Value::Array(a)) => {
                let v: Option<Vec<String>> =
                    a.iter().map(|x| x.as_str().map(str::to_owned)).collect();
                let v = v.ok_or_else(|| {
                    ApiError::invalid_param(
                        "stop",
                        "`stop` must be a string or an array of strings",
                    )
                })?;
                if v.len() > 16 {
                    return Err(ApiError::invalid_param(
                        "stop",
                        "`stop` takes at most 16 strings",
                    ));
                }
                Some(Stop::Many(v))
            }
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "stop",
                    "`stop` must be a string or an array of strings",
                ))
            }
        };
        if let Some(i) = g
            .stops()
            .iter()
            .position(|x| x.is_empty() || x.len() > 1024)
        {
            return Err(ApiError::invalid_param(
                "stop",
                format!("`stop[{i}]` must be a non-empty string of at most 1024 bytes"),
            ));
        }
        g.n = p.uint("n")?;
        if !(1..=16).contains(&g.n()) {
            return Err(ApiError::invalid_param("n", "`n` must be between 1 and 16"));
        }
        g.stream = p.bool("stream")?.unwrap_or(false);
        g.stream_options = match p.get("stream_options") {
            None => None,
            Some(Value::Object(o)) => Some(StreamOptions {
                include_usage: Fields(o)
                    .bool("include_usage")
                    .map_err(|_| {
                        ApiError::invalid_param(
                            "stream_options",
                            "`stream_options.include_usage` must be a boolean",
                        )
                    })?
                    .unwrap_or(false),
            }),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "stream_options",
                    "`stream_options` must be an object",
                ))
            }
        };
        g.ignore_eos = p.bool("ignore_eos")?.unwrap_or(false);
        g.speculative = p.bool("speculative")?;
        g.user = p.str("user")?.map(str::to_owned);
        Ok(g)
    }
}

fn messages(p: &Fields) -> Result<Vec<Message>, ApiError> {
    let msgs = p
        .get("messages")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_param("messages", "`messages` must be a non-empty array")
        })?;
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid_param(
                &format!("{at}.role"),
                format!("`{at}.role` must be a string"),
            )
        })?;
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(ApiError::invalid_param(
                &format!("{at}.role"),
                format!("`{at}.role`: unknown role {role:?}"),
            ));
        }
        let content = match m.get("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Content::Text(s.clone())),
            Some(Value::Array(parts)) => {
                let mut v = Vec::with_capacity(parts.len());
                for part in parts {
                    match (
                        part.get("type").and_then(Value::as_str),
                        part.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => v.push(ContentPart {
                            kind: "text".into(),
                            text: t.to_owned(),
                        }),
                        _ => {
                            return Err(ApiError::invalid_param(
                                &format!("{at}.content"),
                                format!("`{at}.content`: only text parts are supported"),
                            ))
                        }
                    }
                }
                Some(Content::Parts(v))
            }
            Some(_) => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.content"),
                    format!("`{at}.content` must be a string or an array of text parts"),
                ))
            }
        };
        out.push(Message {
            role: role.to_owned(),
            content,
        });
    }
    Ok(out)
}

impl ChatCompletionRequest {
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let map = json_object(body)?;
        let p = Fields(&map);
        let model = p.str("model")?.map(str::to_owned);
        let messages = messages(&p)?;
        let params = GenParams::read(&p)?;
        let logprobs = p.bool("logprobs")?.unwrap_or(false);
        let top_logprobs = p.uint("top_logprobs")?;
        let top = top_logprobs.unwrap_or(0);
        if top > 20 {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` must be between 0 and 20",
            ));
        }
        if top > 0 && !logprobs {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs` set to true",
            ));
        }
        Ok(ChatCompletionRequest {
            model,
            messages,
            logprobs,
            top_logprobs,
            params,
        })
    }
}

impl CompletionRequest {
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let map = json_object(body)?;
        let p = Fields(&map);
        let model = p.str("model")?.map(str::to_owned);
        let prompt = prompt(&p)?;
        let params = GenParams::read(&p)?;
        let logprobs = p.uint("logprobs")?;
        if logprobs.is_some_and(|n| n > 20) {
            return Err(ApiError::invalid_param(
                "logprobs",
                "`logprobs` must be between 0 and 20",
            ));
        }
        Ok(CompletionRequest {
            model,
            prompt,
            logprobs,
            params,
        })
    }
}

fn prompt(p: &Fields) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "prompt",
            "`prompt` must be a string, an array of strings, or token ids",
        )
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            "prompt",
                            "`prompt` holds a token id outside the vocabulary",
                        )
                    })
            })
            .collect()
    };
    let p = match p.get("prompt") {
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) if a.is_empty() => return Err(bad()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Prompt::Texts(
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
        ),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => Prompt::Ids(ids(a)?),
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => Prompt::IdLists(
            a.iter()
                .map(|x| ids(x.as_array().expect("checked")))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(bad()),
    };
    let n = match &p {
        Prompt::Texts(v) => v.len(),
        Prompt::IdLists(v) => v.len(),
        _ => 1,
    };
    if n > 16 {
        return Err(ApiError::invalid_param(
            "prompt",
            "at most 16 prompts per request",
        ));
    }
    Ok(p)
}

impl TokenizeRequest {
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let map = json_object(body)?;
        let p = Fields(&map);
        Ok(TokenizeRequest {
            model: p.str("model")?.map(str::to_owned),
            content: p
                .str("content")?
                .ok_or_else(|| ApiError::invalid_param("content", "`content` must be a string"))?
                .to_owned(),
            add_special: p.bool("add_special")?.unwrap_or(true),
            with_pieces: p.bool("with_pieces")?.unwrap_or(false),
        })
    }
}

impl DetokenizeRequest {
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let map = json_object(body)?;
        let p = Fields(&map);
        let bad = || {
            ApiError::invalid_param(
                "tokens",
                "`tokens` holds a value that is not a token id of this model",
            )
        };
        let tokens = p
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ApiError::invalid_param("tokens", "`tokens` must be an array of token ids")
            })?
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(bad)
            })
            .collect::<Result<_, _>>()?;
        Ok(DetokenizeRequest {
            model: p.str("model")?.map(str::to_owned),
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(e: ApiError) -> String {
        e.body.error.param.unwrap_or_default()
    }

    #[test]
    fn what_a_client_serializes_the_server_reads_back() {
        let req = ChatCompletionRequest {
            model: Some("m".into()),
            messages: vec![Message::new("user", "hi")],
            logprobs: true,
            top_logprobs: Some(2),
            params: GenParams {
                temperature: Some(0.5),
                max_tokens: Some(8),
                stop: Some(Stop::Many(vec!["\n".into()])),
                logit_bias: [(7, -100.0)].into_iter().collect(),
                stream: true,
                stream_options: Some(StreamOptions {
                    include_usage: true,
                }),
                ..Default::default()
            },
        };
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(ChatCompletionRequest::from_json(&bytes).unwrap(), req);
        let req = CompletionRequest {
            model: None,
            prompt: Prompt::IdLists(vec![vec![1, 2], vec![3]]),
            logprobs: Some(1),
            params: GenParams {
                n: Some(2),
                seed: Some(4),
                ..Default::default()
            },
        };
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(CompletionRequest::from_json(&bytes).unwrap(), req);
    }

    #[test]
    fn errors_name_the_parameter() {
        let cases: &[(&str, &str)] = &[
            (r#"{"prompt":"x","temperature":"hot"}"#, "temperature"),
            (r#"{"prompt":"x","n":0}"#, "n"),
            (r#"{"prompt":"x","stop":[1]}"#, "stop"),
            (r#"{"prompt":"x","stop":""}"#, "stop"),
            (r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"x","logit_bias":{"a":1}}"#, "logit_bias"),
            (r#"{"prompt":"x","best_of":3}"#, "best_of"),
            (r#"{"prompt":{}}"#, "prompt"),
            (r#"{"prompt":[[1],[2,-1]]}"#, "prompt"),
        ];
        for (body, param) in cases {
            let e = CompletionRequest::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(param_of(e), *param, "{body}");
        }
        let cases: &[(&str, &str)] = &[
            (r#"{"messages":[]}"#, "messages"),
            (
                r#"{"messages":[{"role":"king","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#,
                "top_logprobs",
            ),
            (r#"{"messages":[{"role":"user"}],"tools":[{}]}"#, "tools"),
        ];
        for (body, param) in cases {
            let e = ChatCompletionRequest::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(param_of(e), *param, "{body}");
        }
        let e = CompletionRequest::from_json(b"[1]").unwrap_err();
        assert_eq!(e.body.error.code.as_deref(), Some("invalid_json"));
    }

    #[test]
    fn unsupported_parameters_are_named() {
        use serde_json::json;
        let cases = [
            (json!({"best_of": 3}), Some("best_of")),
            (json!({"best_of": 1}), None),
            (json!({"echo": true}), Some("echo")),
            (json!({"echo": false}), None),
            (json!({"suffix": "x"}), Some("suffix")),
            (json!({"suffix": ""}), None),
            (json!({"tools": []}), None),
            (json!({"tools": [{}]}), Some("tools")),
            (json!({"tool_choice": "none"}), None),
            (json!({"tool_choice": "auto"}), Some("tool_choice")),
            (json!({"response_format": {"type": "text"}}), None),
            (
                json!({"response_format": {"type": "json_schema"}}),
                Some("response_format"),
            ),
            (json!({"user": "u", "stream": true}), None),
        ];
        for (body, want) in cases {
            let m = body.as_object().unwrap().clone();
            let got = refuse_unsupported(&Fields(&m)).err();
            assert_eq!(
                got.as_ref().and_then(|e| e.body.error.param.as_deref()),
                want,
                "{body}"
            );
        }
    }
}
