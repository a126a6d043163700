//! The OpenAI-compatible HTTP API (axum): chat and text completions
//! (streamed or not), models, tokenize/detokenize, health, metrics and the
//! admin routes that load and unload models. Request bodies are read as JSON
//! values and checked field by field, so every 400 names its parameter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::ActorRef;
use realizar_shared::error::ErrorBody;
use realizar_shared::http_server::{read_body, Limits};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use super::config::ModelOptions;
use super::executor::{event_channel, Event, EventRx, GenRequest, LogprobEntry, TokenOut, Usage};
use super::registry::{
    touch, LoadSpec, ModelHandle, ModelMsg, Models, Origin, RegistryError, RegistryMsg,
};
use crate::sampling::SamplingParams;
use crate::tokenizer::{Budget, ChatMessage, Interrupted};

pub struct AppState {
    pub models: Models,
    pub registry: ActorRef<RegistryMsg>,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    pub max_queue: usize,
    pub fault_injection: bool,
    pub default_options: ModelOptions,
    pub next_id: AtomicU64,
    /// Set once shutdown begins: /health answers 503 so balancers stop
    /// sending new work.
    pub draining: AtomicBool,
    /// `Authorization: Bearer` token the admin routes need, if any.
    pub admin_token: Option<String>,
    /// Threads for tokenization and chat templating (off the async workers).
    pub cpu_slots: Arc<Semaphore>,
    /// CPU time one request's tokenization may take.
    pub tokenize_budget: Duration,
    pub limits: Arc<Limits>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.limits.clone();
    let admin = Router::new()
        .route("/admin/models", get(admin_list).post(admin_load))
        .route("/admin/models/{*id}", axum::routing::delete(admin_unload))
        .route("/admin/fault/{*id}", post(admin_fault))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ));
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(admin)
        .fallback(not_found_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            read_body(limits.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(track))
        .with_state(state)
}

/// The admin routes need the node's token when it has one.
async fn require_admin(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.trim().as_bytes(), token.as_bytes()) {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "the admin routes need `Authorization: Bearer <admin token>`",
                None,
                Some("invalid_admin_token"),
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Compares in time that depends only on the lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Counts requests by endpoint and status.
async fn track(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("realizar_http_requests_total", "endpoint" => endpoint.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("realizar_http_request_duration_seconds", "endpoint" => endpoint)
        .record(t0.elapsed().as_secs_f64());
    resp
}

// ---------------------------------------------------------------- errors

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &str,
        msg: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            body: ErrorBody::new(kind, msg, param, code),
            retry_after: None,
        }
    }
    fn param(param: &str, msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            msg,
            Some(param),
            Some("invalid_value"),
        )
    }
    fn model_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{id}` does not exist or is not loaded"),
            Some("model"),
            Some("model_not_found"),
        )
    }
    fn server(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            msg,
            None,
            None,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "this route does not take that method",
        None,
        Some("method_not_allowed"),
    )
}

async fn not_found_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route",
        None,
        Some("not_found"),
    )
}

// ---------------------------------------------------------------- params

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request body must be a JSON object",
            None,
            Some("invalid_json"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the request body is not valid JSON: {e}"),
            None,
            Some("invalid_json"),
        )),
    }
}

struct Params<'a>(&'a Map<String, Value>);

impl Params<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn f32(&self, k: &str) -> Result<Option<f32>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(|x| Some(x as f32))
                .ok_or_else(|| ApiError::param(k, format!("`{k}` must be a number"))),
        }
    }
    fn uint(&self, k: &str) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::param(k, format!("`{k}` must be a non-negative integer"))),
        }
    }
    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| ApiError::param(k, format!("`{k}` must be a boolean"))),
        }
    }
    fn str(&self, k: &str) -> Result<Option<&str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::param(k, format!("`{k}` must be a string"))),
        }
    }
}

fn model_for(state: &AppState, p: &Params) -> Result<Arc<ModelHandle>, ApiError> {
    let models = state.models.read().unwrap_or_else(|e| e.into_inner());
    let h = match p.str("model")? {
        Some(id) => models
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::model_not_found(id))?,
        None if models.len() == 1 => models.values().next().cloned().expect("one model"),
        None => return Err(ApiError::param("model", "`model` is required")),
    };
    touch(&h, state.started);
    Ok(h)
}

/// What a completion request asks for, checked.
struct GenSpec {
    params: SamplingParams,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    n: usize,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
    ignore_eos: bool,
}

/// OpenAI parameters this server does not implement: refused by name
/// rather than silently ignored (as vLLM and llama-server do). Each entry is
/// the parameter and whether a value counts as asking for it.
type AsksFor = fn(&Value) -> bool;
const UNSUPPORTED: &[(&str, AsksFor)] = &[
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

fn refuse_unsupported(p: &Params) -> Result<(), ApiError> {
    for (k, asks) in UNSUPPORTED {
        if let Some(v) = p.get(k) {
            if asks(v) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("`{k}` is not supported by this server"),
                    Some(k),
                    Some("unsupported_parameter"),
                ));
            }
        }
    }
    Ok(())
}

fn gen_spec(p: &Params, h: &ModelHandle, chat: bool) -> Result<GenSpec, ApiError> {
    refuse_unsupported(p)?;
    let mut s = SamplingParams::default();
    if let Some(t) = p.f32("temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::param(
                "temperature",
                "`temperature` must be between 0 and 2",
            ));
        }
        s.temperature = t;
    }
    if let Some(v) = p.f32("top_p")? {
        s.top_p = v;
    }
    if let Some(v) = p.uint("top_k")? {
        s.top_k = v as usize;
    }
    if let Some(v) = p.f32("min_p")? {
        s.min_p = v;
    }
    for (k, dst) in [
        ("presence_penalty", &mut s.presence_penalty),
        ("frequency_penalty", &mut s.frequency_penalty),
    ] {
        if let Some(v) = p.f32(k)? {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::param(
                    k,
                    format!("`{k}` must be between -2 and 2"),
                ));
            }
            *dst = v;
        }
    }
    for k in ["repetition_penalty", "repeat_penalty"] {
        if let Some(v) = p.f32(k)? {
            s.repetition_penalty = v;
        }
    }
    if let Some(v) = p.get("seed") {
        s.seed = Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|x| x as u64))
                .ok_or_else(|| ApiError::param("seed", "`seed` must be an integer"))?,
        );
    }
    if let Some(v) = p.get("logit_bias") {
        let m = v.as_object().ok_or_else(|| {
            ApiError::param("logit_bias", "`logit_bias` must map token ids to numbers")
        })?;
        let mut bias = HashMap::new();
        for (k, b) in m {
            let id: u32 = k
                .parse()
                .ok()
                .filter(|&id: &u32| (id as usize) < h.n_vocab)
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        format!("`logit_bias`: {k:?} is not a token id of this model"),
                    )
                })?;
            let b = b
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        "`logit_bias` values must be numbers between -100 and 100",
                    )
                })?;
            bias.insert(id, b as f32);
        }
        s.logit_bias = bias;
    }
    let (logprobs, top) = if chat {
        let lp = p.bool("logprobs")?.unwrap_or(false);
        let top = p.uint("top_logprobs")?.unwrap_or(0) as usize;
        if top > 20 {
            return Err(ApiError::param(
                "top_logprobs",
                "`top_logprobs` must be between 0 and 20",
            ));
        }
        if top > 0 && !lp {
            return Err(ApiError::param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs` set to true",
            ));
        }
        (lp, top)
    } else {
        match p.uint("logprobs")? {
            None => (false, 0),
            Some(n) if n <= 20 => (true, n as usize),
            Some(_) => {
                return Err(ApiError::param(
                    "logprobs",
                    "`logprobs` must be between 0 and 20",
                ))
            }
        }
    };
    s.top_logprobs = top;
    s.logprobs = logprobs;
    s.validate(h.n_vocab)
        .map_err(|e| ApiError::param(e.param, e.to_string()))?;
    let mut max_tokens = None;
    for k in ["max_tokens", "max_completion_tokens", "n_predict"] {
        if let Some(v) = p.uint(k)? {
            if v == 0 {
                return Err(ApiError::param(k, format!("`{k}` must be at least 1")));
            }
            max_tokens = Some(v as usize);
        }
    }
    let stop = match p.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let v: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(str::to_owned)).collect();
            let v = v.ok_or_else(|| {
                ApiError::param("stop", "`stop` must be a string or an array of strings")
            })?;
            if v.len() > 16 {
                return Err(ApiError::param("stop", "`stop` takes at most 16 strings"));
            }
            v
        }
        Some(_) => {
            return Err(ApiError::param(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    if let Some(i) = stop.iter().position(|x| x.is_empty() || x.len() > 1024) {
        return Err(ApiError::param(
            "stop",
            format!("`stop[{i}]` must be a non-empty string of at most 1024 bytes"),
        ));
    }
    let n = p.uint("n")?.unwrap_or(1) as usize;
    if !(1..=16).contains(&n) {
        return Err(ApiError::param("n", "`n` must be between 1 and 16"));
    }
    let stream = p.bool("stream")?.unwrap_or(false);
    let include_usage = match p.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Params(o)
            .bool("include_usage")
            .map_err(|_| {
                ApiError::param(
                    "stream_options",
                    "`stream_options.include_usage` must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::param(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    Ok(GenSpec {
        params: s,
        max_tokens,
        stop,
        n,
        stream,
        include_usage,
        logprobs,
        ignore_eos: p.bool("ignore_eos")?.unwrap_or(false),
    })
}

/// One choice's receiver, with the guard that counts it in flight.
struct Submitted {
    rxs: Vec<EventRx>,
    _guard: Inflight,
}

struct Inflight(Arc<AtomicUsize>, usize);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

fn context_error(param: &str, n_prompt: usize, n_ctx: usize, lower_bound: bool) -> ApiError {
    let has = if lower_bound { "at least " } else { "" };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        format!(
            "This model's maximum context length is {n_ctx} tokens. However, your prompt has {has}{n_prompt} tokens \
             (at least one token must be left for the completion)."
        ),
        Some(param),
        Some("context_length_exceeded"),
    )
}

/// Submit `n` choices for each prompt, checking length and queue.
fn submit(
    state: &AppState,
    h: &ModelHandle,
    prompts: &[Vec<u32>],
    spec: &GenSpec,
    prompt_param: &str,
) -> Result<Submitted, ApiError> {
    for p in prompts {
        if p.is_empty() {
            return Err(ApiError::param(prompt_param, "the prompt is empty"));
        }
        if p.len() >= h.n_ctx {
            return Err(context_error(prompt_param, p.len(), h.n_ctx, false));
        }
    }
    let total = prompts.len() * spec.n;
    let before = h.inflight.fetch_add(total, Ordering::SeqCst);
    let guard = Inflight(h.inflight.clone(), total);
    if before + total > state.max_queue {
        metrics::counter!("realizar_rejected_requests_total", "model" => h.id.clone()).increment(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "model `{}` has {before} requests queued or running (limit {}); retry later",
                h.id, state.max_queue
            ),
            None,
            Some("queue_full"),
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    let now = Instant::now();
    let mut rxs = Vec::with_capacity(total);
    for p in prompts {
        for i in 0..spec.n {
            let (tx, rx) = event_channel();
            let mut params = spec.params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            let req = GenRequest {
                prompt: p.clone(),
                params,
                max_tokens: spec.max_tokens.unwrap_or(usize::MAX).min(h.n_ctx - p.len()),
                stop: spec.stop.clone(),
                ignore_eos: spec.ignore_eos,
                fallback_seed: state.next_id.fetch_add(1, Ordering::Relaxed)
                    ^ (state.started.elapsed().as_nanos() as u64).rotate_left(32),
                events: tx,
                arrived: now,
            };
            h.actor
                .cast(ModelMsg::Generate(req))
                .map_err(|_| ApiError::server(format!("model `{}` is shutting down", h.id)))?;
            rxs.push(rx);
        }
    }
    Ok(Submitted { rxs, _guard: guard })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

fn entry_json(e: &LogprobEntry) -> Value {
    json!({"token": e.token, "logprob": e.logprob, "bytes": e.bytes})
}

fn chat_logprob(t: &TokenOut) -> Value {
    let mut v = entry_json(&t.logprob);
    v["top_logprobs"] = Value::Array(t.top.iter().map(entry_json).collect());
    v
}

/// Legacy completions logprobs for a run of tokens starting at text offset `offset`.
fn completion_logprobs(tokens: &[TokenOut], mut offset: usize) -> Value {
    let mut toks = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offs = Vec::new();
    for t in tokens {
        toks.push(json!(t.logprob.token));
        lps.push(json!(t.logprob.logprob));
        let m: Map<String, Value> = t
            .top
            .iter()
            .map(|e| (e.token.clone(), json!(e.logprob)))
            .collect();
        tops.push(Value::Object(m));
        offs.push(json!(offset));
        offset += t.text.len();
    }
    json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
}

/// Sums usage over choices: prompt tokens once per prompt.
fn total_usage(per_choice: &[Usage], n: usize) -> Usage {
    let mut u = Usage::default();
    for (i, c) in per_choice.iter().enumerate() {
        if i % n == 0 {
            u.prompt_tokens += c.prompt_tokens;
            u.cached_tokens += c.cached_tokens;
        }
        u.completion_tokens += c.completion_tokens;
    }
    u
}

struct Choice {
    text: String,
    tokens: Vec<TokenOut>,
    finish: &'static str,
    usage: Usage,
}

async fn collect(mut rx: EventRx) -> Result<Choice, ApiError> {
    let mut c = Choice {
        text: String::new(),
        tokens: Vec::new(),
        finish: "stop",
        usage: Usage::default(),
    };
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token(t) => {
                c.text.push_str(&t.text);
                c.tokens.push(t);
            }
            Event::Done {
                text,
                finish,
                usage,
            } => {
                c.text.push_str(&text);
                c.finish = finish.as_str();
                c.usage = usage;
                return Ok(c);
            }
            Event::Error(m) => return Err(ApiError::server(m)),
        }
    }
    Err(ApiError::server("the generation ended without a result"))
}

// ---------------------------------------------------------------- chat

fn chat_messages(p: &Params) -> Result<Vec<ChatMessage>, ApiError> {
    let msgs = p
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::param("messages", "`messages` must be a non-empty array"))?;
    if msgs.is_empty() {
        return Err(ApiError::param(
            "messages",
            "`messages` must be a non-empty array",
        ));
    }
    let mut out = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::param(
                &format!("{at}.role"),
                format!("`{at}.role` must be a string"),
            )
        })?;
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(ApiError::param(
                &format!("{at}.role"),
                format!("`{at}.role`: unknown role {role:?}"),
            ));
        }
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for part in parts {
                    match (
                        part.get("type").and_then(Value::as_str),
                        part.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::param(
                                &format!("{at}.content"),
                                format!("`{at}.content`: only text parts are supported"),
                            ))
                        }
                    }
                }
                s
            }
            Some(_) => {
                return Err(ApiError::param(
                    &format!("{at}.content"),
                    format!("`{at}.content` must be a string or an array of text parts"),
                ))
            }
        };
        let role = if role == "developer" { "system" } else { role };
        out.push(ChatMessage::new(role, &content));
    }
    Ok(out)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let map = parse_body(&body)?;
    let p = Params(&map);
    let h = model_for(&state, &p)?;
    let messages = chat_messages(&p)?;
    let spec = gen_spec(&p, &h, true)?;
    let t = h.template.as_ref().ok_or_else(|| {
        ApiError::param(
            "messages",
            format!("model `{}` has no chat template; use /v1/completions", h.id),
        )
    })?;
    let (t, h2, len) = (t.clone(), h.clone(), state.tokenize_budget);
    let prompt = on_cpu(&state, move |b| {
        let text = t
            .render(&messages, true)
            .map_err(|e| ApiError::param("messages", format!("the chat template failed: {e}")))?;
        b.check().map_err(|e| interrupted("messages", e, len))?;
        let add_bos = t.bos_token().is_empty() || !text.starts_with(t.bos_token());
        encode_prompt(&h2, &text, add_bos, "messages", b, len)
    })
    .await?;
    let sub = submit(&state, &h, std::slice::from_ref(&prompt), &spec, "messages")?;
    let id = format!(
        "chatcmpl-{:016x}",
        state.next_id.fetch_add(1, Ordering::Relaxed) ^ unix_now() << 20
    );
    let created = unix_now();
    if spec.stream {
        return Ok(stream_response(sub, spec, id, created, h.id.clone(), true));
    }
    let mut choices = Vec::new();
    let mut usages = Vec::new();
    let Submitted { rxs, _guard } = sub;
    let results = futures_util::future::join_all(rxs.into_iter().map(collect)).await;
    for (i, r) in results.into_iter().enumerate() {
        let c = r?;
        usages.push(c.usage);
        choices.push(json!({
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": if spec.logprobs {
                json!({"content": c.tokens.iter().map(chat_logprob).collect::<Vec<_>>(), "refusal": null})
            } else { Value::Null },
            "finish_reason": c.finish,
        }));
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": h.id,
        "choices": choices,
        "usage": usage_json(&total_usage(&usages, spec.n)),
        "system_fingerprint": "realizar",
    }))
    .into_response())
}

// ---------------------------------------------------------------- completions

/// A completion prompt as sent: texts to encode, or token ids.
enum PromptInput {
    Texts(Vec<String>),
    Ids(Vec<Vec<u32>>),
}

fn completion_prompts(p: &Params, h: &ModelHandle) -> Result<PromptInput, ApiError> {
    let bad = || {
        ApiError::param(
            "prompt",
            "`prompt` must be a string, an array of strings, or token ids",
        )
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&x| (x as usize) < h.n_vocab)
                    .map(|x| x as u32)
                    .ok_or_else(|| {
                        ApiError::param(
                            "prompt",
                            "`prompt` holds a token id outside the vocabulary",
                        )
                    })
            })
            .collect()
    };
    let texts = |a: &[Value]| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    match p.get("prompt") {
        Some(Value::String(s)) => Ok(PromptInput::Texts(vec![s.clone()])),
        Some(Value::Array(a)) if a.is_empty() => Err(bad()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(PromptInput::Texts(texts(a))),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            Ok(PromptInput::Ids(vec![ids(a)?]))
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| ids(x.as_array().expect("checked")))
            .collect::<Result<_, _>>()
            .map(PromptInput::Ids),
        _ => Err(bad()),
    }
}

/// Cancels a budget when the request holding it is dropped (its client
/// went away), so work on its behalf stops.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Run CPU-bound request work (chat templating, tokenization) on a blocking
/// thread, holding one of the node's CPU slots, within the tokenization
/// budget, and cancelled if the request goes away: the async workers that
/// answer /health and every other connection are never held by it.
async fn on_cpu<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Budget) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = state
        .cpu_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::server("the node is shutting down"))?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancel.clone());
    let budget = Budget::new(Some(Instant::now() + state.tokenize_budget), Some(cancel));
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&budget)
    })
    .await
    .map_err(|e| ApiError::server(format!("tokenization failed: {e}")))?
}

fn interrupted(param: &str, e: Interrupted, budget: Duration) -> ApiError {
    match e {
        Interrupted::Deadline => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "tokenizing `{param}` took longer than this server's budget of {} ms; send shorter input",
                budget.as_millis()
            ),
            Some(param),
            Some("tokenization_budget_exceeded"),
        ),
        Interrupted::Cancelled => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request was cancelled",
            Some(param),
            Some("cancelled"),
        ),
    }
}

/// Encode a prompt for generation: refused at once when its length alone
/// proves it cannot fit the context (every token covers at most
/// `max_token_bytes` bytes), else encoded within the budget.
fn encode_prompt(
    h: &ModelHandle,
    text: &str,
    add_bos: bool,
    param: &str,
    budget: &Budget,
    budget_len: Duration,
) -> Result<Vec<u32>, ApiError> {
    let at_least = text.len() / h.tok.max_token_bytes();
    if at_least >= h.n_ctx {
        return Err(context_error(param, at_least, h.n_ctx, true));
    }
    h.tok
        .encode_within(text, add_bos, true, budget)
        .map_err(|e| interrupted(param, e, budget_len))
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let map = parse_body(&body)?;
    let p = Params(&map);
    let h = model_for(&state, &p)?;
    let input = completion_prompts(&p, &h)?;
    let mut spec = gen_spec(&p, &h, false)?;
    let prompts = match input {
        PromptInput::Ids(v) => v,
        PromptInput::Texts(texts) => {
            if texts.len() > 16 {
                return Err(ApiError::param("prompt", "at most 16 prompts per request"));
            }
            let (h2, len) = (h.clone(), state.tokenize_budget);
            on_cpu(&state, move |b| {
                texts
                    .iter()
                    .map(|t| encode_prompt(&h2, t, true, "prompt", b, len))
                    .collect()
            })
            .await?
        }
    };
    if prompts.len() > 16 {
        return Err(ApiError::param("prompt", "at most 16 prompts per request"));
    }
    if spec.max_tokens.is_none() {
        spec.max_tokens = Some(16); // OpenAI's default for completions
    }
    let sub = submit(&state, &h, &prompts, &spec, "prompt")?;
    let id = format!(
        "cmpl-{:016x}",
        state.next_id.fetch_add(1, Ordering::Relaxed) ^ unix_now() << 20
    );
    let created = unix_now();
    if spec.stream {
        return Ok(stream_response(sub, spec, id, created, h.id.clone(), false));
    }
    let Submitted { rxs, _guard } = sub;
    let results = futures_util::future::join_all(rxs.into_iter().map(collect)).await;
    let mut choices = Vec::new();
    let mut usages = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let c = r?;
        usages.push(c.usage);
        choices.push(json!({
            "index": i,
            "text": c.text,
            "logprobs": if spec.logprobs { completion_logprobs(&c.tokens, 0) } else { Value::Null },
            "finish_reason": c.finish,
        }));
    }
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": h.id,
        "choices": choices,
        "usage": usage_json(&total_usage(&usages, spec.n)),
        "system_fingerprint": "realizar",
    }))
    .into_response())
}

// ---------------------------------------------------------------- streaming

struct StreamState {
    events:
        futures_util::stream::SelectAll<futures_util::stream::BoxStream<'static, (usize, Event)>>,
    spec: GenSpec,
    id: String,
    created: u64,
    model: String,
    chat: bool,
    usages: Vec<Option<Usage>>,
    offsets: Vec<usize>,
    done: bool,
    _guard: Inflight,
}

impl StreamState {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut v = json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "realizar",
            "choices": choices,
        });
        if self.spec.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::default().data(v.to_string())
    }

    fn choice(
        &self,
        i: usize,
        text: &str,
        tokens: &[TokenOut],
        finish: Option<&str>,
        first: bool,
    ) -> Value {
        if self.chat {
            let mut delta = json!({});
            if first {
                delta["role"] = json!("assistant");
            }
            if !text.is_empty() || first {
                delta["content"] = json!(text);
            }
            let logprobs = if self.spec.logprobs && !tokens.is_empty() {
                json!({"content": tokens.iter().map(chat_logprob).collect::<Vec<_>>(), "refusal": null})
            } else {
                Value::Null
            };
            json!([{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
        } else {
            let logprobs = if self.spec.logprobs && !tokens.is_empty() {
                completion_logprobs(tokens, self.offsets[i])
            } else {
                Value::Null
            };
            json!([{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}])
        }
    }

    /// The SSE events for one executor event.
    fn on(&mut self, i: usize, e: Event) -> Vec<SseEvent> {
        let mut out = Vec::new();
        match e {
            Event::Token(t) => {
                if t.text.is_empty() && !self.spec.logprobs {
                    return out;
                }
                let c = self.choice(i, &t.text, std::slice::from_ref(&t), None, false);
                self.offsets[i] += t.text.len();
                out.push(self.chunk(c, None));
            }
            Event::Done {
                text,
                finish,
                usage,
            } => {
                if !text.is_empty() {
                    let c = self.choice(i, &text, &[], None, false);
                    out.push(self.chunk(c, None));
                }
                let c = self.choice(i, "", &[], Some(finish.as_str()), false);
                out.push(self.chunk(c, None));
                self.usages[i] = Some(usage);
                if self.usages.iter().all(Option::is_some) {
                    if self.spec.include_usage {
                        let u: Vec<Usage> =
                            self.usages.iter().map(|u| u.expect("all done")).collect();
                        let total = total_usage(&u, self.spec.n);
                        out.push(self.chunk(json!([]), Some(usage_json(&total))));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    self.done = true;
                }
            }
            Event::Error(m) => {
                // The stream ends on the error: no `[DONE]`, which would
                // tell a client the generation completed.
                let body = ErrorBody::new("server_error", m, None, Some("generation_failed"));
                out.push(
                    SseEvent::default().data(serde_json::to_string(&body).unwrap_or_default()),
                );
                self.done = true;
            }
        }
        out
    }
}

fn stream_response(
    sub: Submitted,
    spec: GenSpec,
    id: String,
    created: u64,
    model: String,
    chat: bool,
) -> Response {
    let Submitted { rxs, _guard } = sub;
    let n = rxs.len();
    let streams = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| rx.into_stream().map(move |e| (i, e)).boxed());
    let st = StreamState {
        events: futures_util::stream::select_all(streams),
        spec,
        id,
        created,
        model,
        chat,
        usages: vec![None; n],
        offsets: vec![0; n],
        done: false,
        _guard,
    };
    // The role comes first, for every chat choice.
    let first: Vec<SseEvent> = if chat {
        (0..n)
            .map(|i| st.chunk(st.choice(i, "", &[], None, true), None))
            .collect()
    } else {
        Vec::new()
    };
    let rest =
        futures_util::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            match st.events.next().await {
                Some((i, e)) => {
                    let evs = st.on(i, e);
                    Some((evs, st))
                }
                None => {
                    st.done = true;
                    let body = ErrorBody::new(
                        "server_error",
                        "the generation ended without a result",
                        None,
                        None,
                    );
                    Some((
                        vec![SseEvent::default()
                            .data(serde_json::to_string(&body).unwrap_or_default())],
                        st,
                    ))
                }
            }
        })
        .flat_map(|v| {
            futures_util::stream::iter(v.into_iter().map(Ok::<_, std::convert::Infallible>))
        });
    let all = futures_util::stream::iter(first.into_iter().map(Ok)).chain(rest);
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ---------------------------------------------------------------- the rest

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models = state.models.read().unwrap_or_else(|e| e.into_inner());
    let mut data: Vec<Value> = models
        .values()
        .map(|h| json!({"id": h.id, "object": "model", "created": h.created, "owned_by": "realizar", "meta": {"n_ctx": h.n_ctx, "n_vocab": h.n_vocab, "architecture": h.architecture}}))
        .collect();
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({"object": "list", "data": data}))
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = parse_body(&body)?;
    let p = Params(&map);
    let h = model_for(&state, &p)?;
    let content = p
        .str("content")?
        .ok_or_else(|| ApiError::param("content", "`content` must be a string"))?
        .to_owned();
    let add_special = p.bool("add_special")?.unwrap_or(true);
    let with_pieces = p.bool("with_pieces")?.unwrap_or(false);
    let (h2, len) = (h.clone(), state.tokenize_budget);
    let ids = on_cpu(&state, move |b| {
        h2.tok
            .encode_within(&content, add_special, true, b)
            .map_err(|e| interrupted("content", e, len))
    })
    .await?;
    if with_pieces {
        let v: Vec<Value> = ids
            .iter()
            .map(|&id| {
                let mut b = Vec::new();
                h.tok.token_bytes(id, true, &mut b);
                json!({"id": id, "piece": String::from_utf8_lossy(&b)})
            })
            .collect();
        return Ok(Json(json!({"tokens": v})));
    }
    Ok(Json(json!({"tokens": ids})))
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = parse_body(&body)?;
    let p = Params(&map);
    let h = model_for(&state, &p)?;
    let toks = p
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::param("tokens", "`tokens` must be an array of token ids"))?;
    let ids: Vec<u32> = toks
        .iter()
        .map(|v| {
            v.as_u64()
                .filter(|&x| (x as usize) < h.n_vocab)
                .map(|x| x as u32)
                .ok_or_else(|| {
                    ApiError::param(
                        "tokens",
                        "`tokens` holds a value that is not a token id of this model",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({"content": h.tok.decode(&ids, false)})))
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "the node is shutting down",
            None,
            Some("draining"),
        );
        r.retry_after = Some(1);
        return r.into_response();
    }
    if state
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "no model is loaded yet",
            None,
            Some("loading"),
        );
        r.retry_after = Some(1);
        return r.into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.prometheus.render(),
    )
        .into_response()
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotFound(id) => ApiError::model_not_found(&id),
        RegistryError::AlreadyLoaded(_) => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            e.to_string(),
            Some("id"),
            Some("already_loaded"),
        ),
        RegistryError::Load(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            e.to_string(),
            Some("path"),
            Some("load_failed"),
        ),
        RegistryError::OverBudget { .. } => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "server_error",
            e.to_string(),
            None,
            Some("over_budget"),
        ),
        RegistryError::Pinned(_) => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            e.to_string(),
            Some("force"),
            Some("model_pinned"),
        ),
        RegistryError::NotAllowed(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            e.to_string(),
            Some("path"),
            Some("path_not_allowed"),
        ),
        RegistryError::NoDownload(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            e.to_string(),
            Some("path"),
            Some("download_disabled"),
        ),
        RegistryError::Internal(_) => ApiError::server(e.to_string()),
    }
}

/// Model ids are what clients send and what metrics and thread names carry:
/// 1 to 128 characters of letters, digits and `._:@+-/`, not starting with
/// a separator.
pub fn check_model_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:@+-/".contains(c);
    if id.is_empty() || id.len() > 128 {
        return Err("a model id has 1 to 128 characters".into());
    }
    if let Some(c) = id.chars().find(|&c| !ok_char(c)) {
        return Err(format!(
            "a model id holds only letters, digits and `._:@+-/` (found {c:?})"
        ));
    }
    if id.starts_with(['.', '/', '-']) {
        return Err("a model id cannot start with `.`, `/` or `-`".into());
    }
    Ok(())
}

async fn admin_list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models = state.models.read().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = models
        .values()
        .map(|h| super::registry::ModelInfo::of_handle(h))
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    Json(json!({"models": v}))
}

async fn admin_load(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let map = parse_body(&body)?;
    let p = Params(&map);
    let path = p
        .str("path")?
        .ok_or_else(|| ApiError::param("path", "`path` must be a string"))?;
    if path.is_empty() || path.len() > 4096 || path.contains('\0') {
        return Err(ApiError::param(
            "path",
            "`path` must be a non-empty path of at most 4096 bytes without NUL",
        ));
    }
    let id = p.str("id")?.unwrap_or(path).to_owned();
    check_model_id(&id).map_err(|m| ApiError::param("id", format!("`id`: {m}")))?;
    let options = match p.get("options") {
        None => state.default_options.clone(),
        Some(v) => {
            let o: ModelOptions = serde_json::from_value(v.clone())
                .map_err(|e| ApiError::param("options", format!("`options`: {e}")))?;
            o.check("request", "options")
                .map_err(|e| ApiError::param("options", e.to_string()))?;
            o
        }
    };
    let spec = LoadSpec {
        id,
        path: path.to_owned(),
        pinned: p.bool("pinned")?.unwrap_or(false),
        options,
        origin: Origin::Admin,
    };
    let r = state
        .registry
        .call(|reply| RegistryMsg::Load(spec, reply), None)
        .await
        .map_err(|e| ApiError::server(format!("the registry is down: {e}")))?;
    match r {
        ractor::rpc::CallResult::Success(Ok(info)) => {
            Ok(Json(serde_json::to_value(info).unwrap_or_default()))
        }
        ractor::rpc::CallResult::Success(Err(e)) => Err(registry_error(e)),
        _ => Err(ApiError::server("the registry did not answer")),
    }
}

#[derive(serde::Deserialize)]
struct UnloadQuery {
    #[serde(default)]
    force: bool,
}

async fn admin_unload(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<UnloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let force = query
        .map_err(|e| ApiError::param("force", format!("`force` must be true or false: {e}")))?
        .force;
    let r = state
        .registry
        .call(
            |reply| RegistryMsg::Unload {
                id: id.clone(),
                force,
                reply,
            },
            None,
        )
        .await
        .map_err(|e| ApiError::server(format!("the registry is down: {e}")))?;
    match r {
        ractor::rpc::CallResult::Success(Ok(())) => Ok(Json(json!({"id": id, "unloaded": true}))),
        ractor::rpc::CallResult::Success(Err(e)) => Err(registry_error(e)),
        _ => Err(ApiError::server("the registry did not answer")),
    }
}

async fn admin_fault(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.fault_injection {
        return Err(not_found_route().await);
    }
    let h = state
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    h.inject_fault();
    Ok(Json(json!({"id": id, "fault": "armed"})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids() {
        for ok in [
            "smollm2",
            "org/model-7b",
            "llama3:8b",
            "a.b_c+d@e",
            &"x".repeat(128),
        ] {
            assert!(check_model_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a\0b",
            "a b",
            "tab\t",
            "é",
            "/x",
            ".x",
            "-x",
            &"x".repeat(129),
        ] {
            assert!(check_model_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unsupported_parameters_are_named() {
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
            let got = refuse_unsupported(&Params(&m)).err();
            assert_eq!(
                got.as_ref().and_then(|e| e.body.error.param.as_deref()),
                want,
                "{body}"
            );
        }
    }
}
