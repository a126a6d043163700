//! The node facade: what the HTTP layer asks of the node, in the node's
//! terms. It finds models (touching them for the LRU order), runs prompt
//! templating and tokenization off the async threads within their budget,
//! checks prompts against the context, admits requests against the queue
//! limit and submits them to the model's actor, and speaks the control
//! protocol (load, unload, report). HTTP handlers parse and render; the
//! policy lives here.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use ractor::ActorRef;
use realizar_shared::control::{
    Eviction, LoadReport, LoadRequest, ModelInfo, ModelOptions, ModelState,
};
use realizar_shared::error::ApiError;
use realizar_shared::http_server::Limits;
use realizar_shared::metrics as names;
use realizar_shared::openai::GenParams;
use tokio::sync::Semaphore;

use crate::actors::registry::{
    check_model_id, touch, Evictions, LoadSpec, ModelHandle, Models, RegistryError, RegistryMsg,
    Transitions, EVICTIONS_KEPT,
};
use crate::actors::sources::Origin;
use crate::actors::ModelMsg;
use crate::engine::{event_channel, EventRx, GenRequest};
use crate::sampling::SamplingParams;
use crate::tokenizer::{Budget, Interrupted};

/// Who the node is, for its load report.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub url: String,
    pub budget_bytes: u64,
    pub threads: usize,
}

pub struct Node {
    pub models: Models,
    pub transitions: Transitions,
    pub evictions: Evictions,
    pub registry: ActorRef<RegistryMsg>,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    pub identity: Identity,
    pub max_queue: usize,
    pub fault_injection: bool,
    pub default_options: ModelOptions,
    pub next_id: AtomicU64,
    /// Set once shutdown begins: /health answers 503 so balancers stop
    /// sending new work.
    pub draining: AtomicBool,
    /// Set on SIGTERM while a gateway drains the node (LoadReport::leaving).
    pub leaving: AtomicBool,
    /// When a gateway last asked for the report or took a heartbeat, in
    /// milliseconds since `started` (0: never): a node a gateway knows asks
    /// it to be drained before it exits.
    pub gateway_seen_ms: AtomicU64,
    /// `Authorization: Bearer` token the admin routes need, if any.
    pub admin_token: Option<String>,
    /// Threads for tokenization and chat templating (off the async workers).
    pub cpu_slots: Arc<Semaphore>,
    /// CPU time one request's tokenization may take.
    pub tokenize_budget: Duration,
    pub limits: Arc<Limits>,
}

/// What a generation request asks for, checked against the model.
pub struct GenSpec {
    pub params: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    pub ignore_eos: bool,
    /// Verify prompt-lookup drafts (default: for greedy requests).
    pub speculative: bool,
    /// The gateway's affinity keys (`x-realizar-affinity`,
    /// `x-realizar-conversation`), if it sent any.
    pub affinity: Option<realizar_shared::control::Affinity>,
}

/// The receivers of a request's choices, with the guard that counts them
/// in flight until they are dropped.
pub struct Submitted {
    pub rxs: Vec<EventRx>,
    pub guard: Inflight,
}

pub struct Inflight(Arc<AtomicUsize>, usize);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
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

pub fn context_error(param: &str, n_prompt: usize, n_ctx: usize, lower_bound: bool) -> ApiError {
    let has = if lower_bound { "at least " } else { "" };
    ApiError::bad_request(
        format!(
            "This model's maximum context length is {n_ctx} tokens. However, your prompt has {has}{n_prompt} tokens \
             (at least one token must be left for the completion)."
        ),
        Some(param),
        "context_length_exceeded",
    )
}

fn interrupted(param: &str, e: Interrupted, budget: Duration) -> ApiError {
    match e {
        Interrupted::Deadline => ApiError::bad_request(
            format!(
                "tokenizing `{param}` took longer than this server's budget of {} ms; send shorter input",
                budget.as_millis()
            ),
            Some(param),
            "tokenization_budget_exceeded",
        ),
        Interrupted::Cancelled => {
            ApiError::bad_request("the request was cancelled", Some(param), "cancelled")
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    /// The model a request names (or the only one), touched for the LRU.
    pub fn model(&self, id: Option<&str>) -> Result<Arc<ModelHandle>, ApiError> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let h = match id {
            Some(id) => models
                .get(id)
                .cloned()
                .ok_or_else(|| ApiError::model_not_found(id))?,
            None => (models.len() == 1)
                .then(|| models.values().next().cloned())
                .flatten()
                .ok_or_else(|| ApiError::invalid_param("model", "`model` is required"))?,
        };
        touch(&h, self.started);
        Ok(h)
    }

    /// A fresh response id.
    pub fn response_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:016x}",
            self.next_id.fetch_add(1, Ordering::Relaxed) ^ unix_now() << 20
        )
    }

    pub fn now(&self) -> u64 {
        unix_now()
    }

    /// Run CPU-bound request work (chat templating, tokenization) on a
    /// blocking thread, holding one of the node's CPU slots, within the
    /// tokenization budget, and cancelled if the request goes away: the
    /// async workers that answer /health and every other connection are
    /// never held by it.
    pub async fn on_cpu<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Budget) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self
            .cpu_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::server("the node is shutting down"))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(cancel.clone());
        let allowed = self.tokenize_budget;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // The budget is for the work: its clock starts on the thread
            // that does it, not while the request waited for one.
            let budget = Budget::new(Some(Instant::now() + allowed), Some(cancel));
            f(&budget)
        })
        .await
        .map_err(|e| ApiError::server(format!("tokenization failed: {e}")))?
    }

    /// Encode text within the budget (no context check: `/tokenize`).
    pub fn encode(
        &self,
        h: &ModelHandle,
        text: &str,
        add_special: bool,
        param: &str,
        budget: &Budget,
    ) -> Result<Vec<u32>, ApiError> {
        h.tok
            .encode_within(text, add_special, true, budget)
            .map_err(|e| interrupted(param, e, self.tokenize_budget))
    }

    /// Encode a prompt for generation: refused at once when its length
    /// alone proves it cannot fit the context (every token covers at most
    /// `max_token_bytes` bytes), else encoded within the budget.
    pub fn encode_prompt(
        &self,
        h: &ModelHandle,
        text: &str,
        add_bos: bool,
        param: &str,
        budget: &Budget,
    ) -> Result<Vec<u32>, ApiError> {
        let at_least = text.len() / h.tok.max_token_bytes();
        if at_least >= h.n_ctx {
            return Err(context_error(param, at_least, h.n_ctx, true));
        }
        self.encode(h, text, add_bos, param, budget)
    }

    /// Interpret a request's generation parameters for this model: the one
    /// place sampling limits are checked (`SamplingParams::validate`).
    /// `logprobs` is (on, alternatives per token).
    pub fn gen_spec(
        &self,
        g: &GenParams,
        logprobs: (bool, usize),
        h: &ModelHandle,
    ) -> Result<GenSpec, ApiError> {
        let mut s = SamplingParams::default();
        let set = |dst: &mut f32, v: Option<f32>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut s.temperature, g.temperature);
        set(&mut s.top_p, g.top_p);
        set(&mut s.min_p, g.min_p);
        set(&mut s.presence_penalty, g.presence_penalty);
        set(&mut s.frequency_penalty, g.frequency_penalty);
        set(&mut s.repetition_penalty, g.repetition_penalty);
        if let Some(k) = g.top_k {
            s.top_k = usize::try_from(k).unwrap_or(usize::MAX);
        }
        s.seed = g.seed;
        s.logit_bias = g.logit_bias.iter().map(|(&k, &v)| (k, v)).collect();
        (s.logprobs, s.top_logprobs) = logprobs;
        s.validate(h.n_vocab)
            .map_err(|e| ApiError::invalid_param(e.param, e.to_string()))?;
        let speculative = g.speculative.unwrap_or(s.temperature == 0.0);
        Ok(GenSpec {
            params: s,
            max_tokens: g
                .max_tokens
                .map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            stop: g.stops(),
            n: g.n(),
            stream: g.stream,
            include_usage: g.include_usage(),
            logprobs: logprobs.0,
            ignore_eos: g.ignore_eos,
            speculative,
            affinity: None,
        })
    }

    /// Check token ids against the model's vocabulary.
    pub fn check_ids(&self, h: &ModelHandle, ids: &[u32], param: &str) -> Result<(), ApiError> {
        if ids.iter().any(|&i| i as usize >= h.n_vocab) {
            return Err(ApiError::invalid_param(
                param,
                format!("`{param}` holds a token id outside the vocabulary"),
            ));
        }
        Ok(())
    }

    /// Submit `n` choices for each prompt, checking length and queue.
    pub fn submit(
        &self,
        h: &ModelHandle,
        prompts: &[Vec<u32>],
        spec: &GenSpec,
        prompt_param: &str,
    ) -> Result<Submitted, ApiError> {
        for p in prompts {
            if p.is_empty() {
                return Err(ApiError::invalid_param(prompt_param, "the prompt is empty"));
            }
            if p.len() >= h.n_ctx {
                return Err(context_error(prompt_param, p.len(), h.n_ctx, false));
            }
        }
        let total = prompts.len() * spec.n;
        let before = h.inflight.fetch_add(total, Ordering::SeqCst);
        let guard = Inflight(h.inflight.clone(), total);
        if before + total > self.max_queue {
            metrics::counter!(names::REJECTED_REQUESTS, names::MODEL => h.id.clone()).increment(1);
            return Err(ApiError::too_many_requests(
                format!(
                    "model `{}` has {before} requests queued or running (limit {}); retry later",
                    h.id, self.max_queue
                ),
                "queue_full",
                1,
            ));
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
                    speculative: spec.speculative,
                    fallback_seed: self.next_id.fetch_add(1, Ordering::Relaxed)
                        ^ (self.started.elapsed().as_nanos() as u64).rotate_left(32),
                    events: tx,
                    arrived: now,
                    affinity: spec.affinity.clone().map(Box::new),
                };
                h.actor
                    .cast(ModelMsg::Generate(req))
                    .map_err(|_| ApiError::server(format!("model `{}` is shutting down", h.id)))?;
                rxs.push(rx);
            }
        }
        Ok(Submitted { rxs, guard })
    }

    // ------------------------------------------------------------ control

    /// What the node says about each model, ready or in transition.
    pub fn model_infos(&self) -> Vec<ModelInfo> {
        let mut v: Vec<ModelInfo> = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|h| h.info())
            .collect();
        for (id, state) in self
            .transitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if !v.iter().any(|m| &m.id == id) {
                v.push(ModelInfo {
                    id: id.clone(),
                    state: *state,
                    path: String::new(),
                    architecture: String::new(),
                    pinned: false,
                    bytes: 0,
                    load_seconds: 0.0,
                    n_ctx: 0,
                    inflight: 0,
                    running: 0,
                    waiting: 0,
                    kv_blocks_used: 0,
                    kv_blocks_capacity: 0,
                    block_size: 0,
                    prefix_hashes: Vec::new(),
                    affinity_keys: Vec::new(),
                    conversation_keys: Vec::new(),
                    starts_returned: 0,
                    starts_lost: 0,
                });
            }
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Milliseconds since the node started (at least 1).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis().max(1) as u64
    }

    /// A gateway took a report built after `at` (`now_ms`): what the node
    /// had set before `at` (say, `leaving`) is known to it.
    pub fn gateway_seen(&self, at: u64) {
        self.gateway_seen_ms.fetch_max(at, Ordering::SeqCst);
    }

    /// How long since a gateway was last heard from (None: never).
    pub fn since_gateway(&self) -> Option<Duration> {
        match self.gateway_seen_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    fn recent_evictions(&self) -> Vec<Eviction> {
        let e = self.evictions.lock().unwrap_or_else(|e| e.into_inner());
        e.iter()
            .filter(|(_, _, at)| at.elapsed() < EVICTIONS_KEPT)
            .map(|(id, bytes, at)| Eviction {
                id: id.clone(),
                bytes: *bytes,
                seconds_ago: at.elapsed().as_secs_f64(),
            })
            .collect()
    }

    pub fn report(&self) -> LoadReport {
        let models = self.model_infos();
        LoadReport {
            node_id: self.identity.id.clone(),
            url: self.identity.url.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            draining: self.draining.load(Ordering::Relaxed),
            leaving: self.leaving.load(Ordering::Relaxed),
            evicted: self.recent_evictions(),
            memory_budget_bytes: self.identity.budget_bytes,
            memory_used_bytes: models
                .iter()
                .filter(|m| m.state == ModelState::Ready)
                .map(|m| m.bytes)
                .sum(),
            threads: self.identity.threads,
            models,
        }
    }

    /// `POST /admin/models`.
    pub async fn load(&self, req: LoadRequest) -> Result<ModelInfo, ApiError> {
        let path = req.path;
        if path.is_empty() || path.len() > 4096 || path.contains('\0') {
            return Err(ApiError::invalid_param(
                "path",
                "`path` must be a non-empty path of at most 4096 bytes without NUL",
            ));
        }
        let id = req.id.unwrap_or_else(|| path.clone());
        check_model_id(&id).map_err(|m| ApiError::invalid_param("id", format!("`id`: {m}")))?;
        let options = match req.options {
            None => self.default_options.clone(),
            Some(o) => {
                o.check("request", "options")
                    .map_err(|e| ApiError::invalid_param("options", e.to_string()))?;
                o
            }
        };
        let spec = LoadSpec {
            id,
            path,
            pinned: req.pinned,
            options,
            origin: Origin::Admin,
        };
        self.ask(|reply| RegistryMsg::Load(spec, reply)).await
    }

    /// `DELETE /admin/models/{id}`.
    pub async fn unload(&self, id: String, force: bool) -> Result<(), ApiError> {
        self.ask(|reply| RegistryMsg::Unload { id, force, reply })
            .await
    }

    async fn ask<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T, RegistryError>>) -> RegistryMsg,
    ) -> Result<T, ApiError> {
        match self.registry.call(msg, None).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r.map_err(registry_error),
            Ok(_) => Err(ApiError::server("the registry did not answer")),
            Err(e) => Err(ApiError::server(format!("the registry is down: {e}"))),
        }
    }
}

/// A registry failure as the API reports it: the request's fault (4xx)
/// or the node's (5xx).
pub fn registry_error(e: RegistryError) -> ApiError {
    let m = e.to_string();
    match e {
        RegistryError::NotFound(id) => ApiError::model_not_found(&id),
        RegistryError::AlreadyLoaded(_) => ApiError::conflict(m, Some("id"), "already_loaded"),
        RegistryError::Resolve(_) | RegistryError::Load(_) => {
            ApiError::bad_request(m, Some("path"), "load_failed")
        }
        RegistryError::OverBudget { .. } => ApiError::insufficient_storage(m, "over_budget"),
        RegistryError::Pinned(_) => ApiError::conflict(m, Some("force"), "model_pinned"),
        RegistryError::NotAllowed(_) => ApiError::forbidden(m, Some("path"), "path_not_allowed"),
        RegistryError::NoDownload(_) => ApiError::bad_request(m, Some("path"), "download_disabled"),
        RegistryError::Internal(_) => ApiError::server(m),
    }
}
