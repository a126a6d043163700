//! The node's actors (ractor). The registry is the supervisor: it loads,
//! warms and unloads models within a memory budget (evicting the least
//! recently used unpinned model), and owns one model actor per loaded model.
//! A model actor owns its executor thread: it forwards requests to it and,
//! when the executor panics, fails the in-flight requests (the executor does
//! that as it dies), logs and counts the restart, starts a fresh executor
//! and hands it the requests that were still queued.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use realizar_shared::control::{ModelInfo, ModelOptions, ModelState};
use realizar_shared::metrics as names;

use super::model::{release_free_memory, ModelActor, ModelArgs, ModelMsg};
use super::sources::{resolve, ModelDirs, Origin, Resolver};
use crate::engine::{ExecConfig, ExecShared, SchedConfig};
use crate::kv::KvType;
use crate::model::{LoadError, LoadedModel, Model};
use crate::tokenizer::{ChatTemplate, Tokenizer};

/// What the rest of the node needs of a loaded model.
pub struct ModelHandle {
    pub id: String,
    pub path: PathBuf,
    pub architecture: &'static str,
    pub tok: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub pinned: bool,
    pub bytes: u64,
    pub load_seconds: f64,
    /// Unix seconds when loaded.
    pub created: u64,
    pub actor: ActorRef<ModelMsg>,
    /// Requests submitted and not yet finished.
    pub inflight: Arc<AtomicUsize>,
    /// Milliseconds since the node started, at the last request.
    pub last_used: AtomicU64,
    /// The executor's load figures and fault switch.
    pub exec: Arc<ExecShared>,
}

impl ModelHandle {
    /// Fault injection: panic the executor in its next step with work.
    pub fn inject_fault(&self) {
        self.exec.fault.store(true, Ordering::SeqCst);
    }

    /// The model as the control protocol describes it.
    pub fn info(&self) -> ModelInfo {
        let e = &self.exec;
        let (returned, lost) = *e.start_returns.lock().unwrap_or_else(|e| e.into_inner());
        ModelInfo {
            id: self.id.clone(),
            state: ModelState::Ready,
            path: self.path.display().to_string(),
            architecture: self.architecture.to_owned(),
            pinned: self.pinned,
            bytes: self.bytes,
            load_seconds: self.load_seconds,
            n_ctx: self.n_ctx,
            inflight: self.inflight.load(Ordering::Relaxed),
            running: e.running.load(Ordering::Relaxed),
            waiting: e.waiting.load(Ordering::Relaxed),
            kv_blocks_used: e.kv_blocks_used.load(Ordering::Relaxed),
            kv_blocks_capacity: e.kv_blocks_capacity.load(Ordering::Relaxed),
            block_size: e.block_size.load(Ordering::Relaxed),
            prefix_hashes: e
                .prefix_hashes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            affinity_keys: e
                .affinity_keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            conversation_keys: e
                .conversation_keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            starts_returned: returned,
            starts_lost: lost,
        }
    }
}

/// Loaded models by id, shared with the node facade.
pub type Models = Arc<RwLock<HashMap<String, Arc<ModelHandle>>>>;

/// Models on their way in (loading) or out (unloading), for the report.
pub type Transitions = Arc<RwLock<BTreeMap<String, ModelState>>>;

/// Evictions to fit the memory budget, newest last, for the report:
/// (model id, bytes, when).
pub type Evictions = Arc<std::sync::Mutex<std::collections::VecDeque<(String, u64, Instant)>>>;
/// How long an eviction stays in the report.
pub const EVICTIONS_KEPT: std::time::Duration = std::time::Duration::from_secs(300);

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

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub id: String,
    pub path: String,
    pub pinned: bool,
    pub options: ModelOptions,
    pub origin: Origin,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model `{0}` is not loaded")]
    NotFound(String),
    #[error("model `{0}` is already loaded")]
    AlreadyLoaded(String),
    /// The path or catalog name leads to no file (or its fetch failed).
    #[error("{0}")]
    Resolve(String),
    /// The file is not a model this node can serve.
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("model `{0}` is pinned; unload it with `force`")]
    Pinned(String),
    #[error("`path` {0:?}: not allowed (models load only from files inside the node's model directories)")]
    NotAllowed(String),
    #[error("model `{0}` is not on disk and this node does not download models (allow_downloads)")]
    NoDownload(String),
    #[error("{0}")]
    Internal(String),
    #[error("model `{id}` needs {need_mib} MiB; the budget is {budget_mib} MiB and pinned models hold {pinned_mib} MiB")]
    OverBudget {
        id: String,
        need_mib: u64,
        budget_mib: u64,
        pinned_mib: u64,
    },
}

pub enum RegistryMsg {
    Load(LoadSpec, RpcReplyPort<Result<ModelInfo, RegistryError>>),
    /// Unload a model; a pinned one only with `force`.
    Unload {
        id: String,
        force: bool,
        reply: RpcReplyPort<Result<(), RegistryError>>,
    },
    /// Shutdown: fail every sequence of every model with this reason.
    StopAll(String, RpcReplyPort<()>),
}

pub struct RegistryArgs {
    pub models: Models,
    pub budget_bytes: u64,
    pub threads: usize,
    pub max_queue: usize,
    pub resolver: Resolver,
    pub dirs: ModelDirs,
    pub started: Instant,
    /// Stream back-pressure for every model's executor.
    pub stream_buffer: usize,
    pub stall: std::time::Duration,
    pub transitions: Transitions,
    pub evictions: Evictions,
}

pub struct RegistryState {
    args: RegistryArgs,
    /// Model actor id → model id, for supervision events.
    actors: HashMap<ractor::ActorId, String>,
    /// How each model was loaded, to restart its actor.
    specs: HashMap<String, (Arc<dyn Model>, ExecConfig)>,
    /// Actors of unloaded models still finishing their requests.
    unloading: HashMap<ractor::ActorId, String>,
}

pub struct Registry;

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RegistryArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::gauge!(names::LOADED_MODELS).set(0.0);
        Ok(RegistryState {
            args,
            actors: HashMap::new(),
            specs: HashMap::new(),
            unloading: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Load(spec, reply) => {
                let id = spec.id.clone();
                let transitions = state.args.transitions.clone();
                let already = state
                    .args
                    .models
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&id);
                if !already {
                    transitions
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), ModelState::Loading);
                }
                let r = load(&myself, state, spec).await;
                if !already {
                    let mut t = transitions.write().unwrap_or_else(|e| e.into_inner());
                    if t.get(&id) == Some(&ModelState::Loading) {
                        t.remove(&id);
                    }
                }
                let _ = reply.send(r);
            }
            RegistryMsg::Unload { id, force, reply } => {
                let r = match pinned(state, &id) {
                    Some(true) if !force => Err(RegistryError::Pinned(id)),
                    _ => unload(state, &id, "the model was unloaded"),
                };
                let _ = reply.send(r);
            }
            RegistryMsg::StopAll(why, reply) => {
                let ids: Vec<String> = state
                    .args
                    .models
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                for id in ids {
                    let _ = unload(state, &id, &why);
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(cell, ..) = &evt {
            if let Some(id) = state.unloading.remove(&cell.get_id()) {
                let mut t = state
                    .args
                    .transitions
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                if t.get(&id) == Some(&ModelState::Unloading) {
                    t.remove(&id);
                }
            }
            // An unloaded model's actor is gone with its state (weights map,
            // tokenizer): return the freed heap pages, now and once the last
            // handles held by finishing requests are gone.
            release_free_memory();
            tokio::spawn(async {
                for ms in [100, 900, 2000] {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    release_free_memory();
                }
            });
            return Ok(());
        }
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            // A model actor itself failed (not just its executor): start a
            // new one for the same model.
            let Some(id) = state.actors.remove(&cell.get_id()) else {
                return Ok(());
            };
            tracing::error!(model = %id, error = %err, "model actor failed; restarting it");
            metrics::counter!(names::MODEL_ACTOR_RESTARTS, names::MODEL => id.clone()).increment(1);
            let handle = state
                .args
                .models
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned();
            if let (Some(h), Some((model, cfg))) = (handle, state.specs.get(&id).cloned()) {
                let (actor, _) = Actor::spawn_linked(
                    None,
                    ModelActor,
                    ModelArgs {
                        id: id.clone(),
                        model,
                        tok: h.tok.clone(),
                        cfg,
                        exec: h.exec.clone(),
                    },
                    myself.get_cell(),
                )
                .await?;
                state.actors.insert(actor.get_id(), id.clone());
                let mut new = clone_handle(&h);
                new.actor = actor;
                state
                    .args
                    .models
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Arc::new(new));
            }
        }
        Ok(())
    }
}

fn pinned(state: &RegistryState, id: &str) -> Option<bool> {
    state
        .args
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .map(|h| h.pinned)
}

fn clone_handle(h: &ModelHandle) -> ModelHandle {
    ModelHandle {
        id: h.id.clone(),
        path: h.path.clone(),
        architecture: h.architecture,
        tok: h.tok.clone(),
        template: h.template.clone(),
        n_ctx: h.n_ctx,
        n_vocab: h.n_vocab,
        pinned: h.pinned,
        bytes: h.bytes,
        load_seconds: h.load_seconds,
        created: h.created,
        actor: h.actor.clone(),
        inflight: h.inflight.clone(),
        last_used: AtomicU64::new(h.last_used.load(Ordering::Relaxed)),
        exec: h.exec.clone(),
    }
}

/// Open, build and warm a model (blocking: runs off the async threads).
fn open_model(id: &str, path: PathBuf, threads: usize) -> Result<LoadedModel, LoadError> {
    let t0 = Instant::now();
    tracing::info!(model = %id, path = %path.display(), "loading");
    let m = LoadedModel::open(&path)?;
    tracing::info!(model = %id, mib = m.file_bytes() >> 20, "loading: warming");
    m.warm(threads);
    tracing::info!(model = %id, seconds = t0.elapsed().as_secs_f64(), "loaded");
    Ok(m)
}

/// The executor's limits for a model and its options: the KV pool gets as
/// many blocks as its memory holds, and the context is capped by the
/// model's training context and by the pool.
fn exec_config(
    model: &dyn Model,
    o: &ModelOptions,
    threads: usize,
    args: &RegistryArgs,
) -> ExecConfig {
    let d = model.dims();
    let kv_type = KvType::from(o.kv_type);
    let per_block = 2 * d.n_layer * o.block_size * d.kv_dim * kv_type.bytes_per_elem();
    let kv_blocks = ((o.kv_memory_mib << 20) / per_block.max(1)).max(1);
    let mut n_ctx = if o.n_ctx == 0 {
        d.n_ctx_train
    } else {
        o.n_ctx.min(d.n_ctx_train)
    };
    n_ctx = n_ctx.min(kv_blocks * o.block_size);
    ExecConfig {
        threads,
        kv_type,
        sched: SchedConfig {
            block_size: o.block_size,
            kv_blocks,
            max_batch: o.max_batch,
            max_step_tokens: o.max_step_tokens,
            n_ctx,
            stream_buffer: args.stream_buffer,
            stall: args.stall,
            draft_max: o.draft_max,
        },
    }
}

/// Bytes held by models that could be evicted, and by pinned ones.
fn held(state: &RegistryState) -> (u64, u64) {
    let m = state.args.models.read().unwrap_or_else(|e| e.into_inner());
    let pinned = m.values().filter(|h| h.pinned).map(|h| h.bytes).sum();
    let unpinned = m.values().filter(|h| !h.pinned).map(|h| h.bytes).sum();
    (pinned, unpinned)
}

fn now_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

async fn load(
    myself: &ActorRef<RegistryMsg>,
    state: &mut RegistryState,
    spec: LoadSpec,
) -> Result<ModelInfo, RegistryError> {
    if state
        .args
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&spec.id)
    {
        return Err(RegistryError::AlreadyLoaded(spec.id));
    }
    let t0 = Instant::now();
    let (resolver, threads, dirs) = (
        state.args.resolver.clone(),
        state.args.threads,
        state.args.dirs.clone(),
    );
    let spec2 = spec.clone();
    let path = tokio::task::spawn_blocking(move || resolve(&spec2, &resolver, &dirs))
        .await
        .map_err(|e| RegistryError::Internal(format!("resolving {} panicked: {e}", spec.id)))??;
    // Admission before any side effect: the file and the KV pool asked for
    // must fit beside the pinned models, or nothing is opened or evicted.
    let budget = state.args.budget_bytes;
    let over = |need: u64, pinned: u64| RegistryError::OverBudget {
        id: spec.id.clone(),
        need_mib: need >> 20,
        budget_mib: budget >> 20,
        pinned_mib: pinned >> 20,
    };
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let kv_asked = (spec.options.kv_memory_mib as u64) << 20;
    let (pinned, _) = held(state);
    if pinned + file_bytes + kv_asked > budget {
        return Err(over(file_bytes + kv_asked, pinned));
    }
    let id2 = spec.id.clone();
    let opened = tokio::task::spawn_blocking(move || open_model(&id2, path, threads))
        .await
        .map_err(|e| RegistryError::Internal(format!("loading {} panicked: {e}", spec.id)))??;
    let cfg = exec_config(&*opened.model, &spec.options, threads, &state.args);
    let kv_bytes = (cfg.sched.kv_blocks
        * 2
        * opened.model.dims().n_layer
        * cfg.sched.block_size
        * opened.model.dims().kv_dim
        * cfg.kv_type.bytes_per_elem()) as u64;
    // The mapped file, the weights repacked beside it, the KV pool.
    let need = opened.file_bytes() + opened.model.packed_bytes() + kv_bytes;
    let (pinned, _) = held(state);
    if pinned + need > budget {
        drop(opened);
        release_free_memory();
        return Err(over(need, pinned));
    }
    // It fits once unpinned models go: evict least recently used ones.
    loop {
        let (used, pinned, victim) = {
            let m = state.args.models.read().unwrap_or_else(|e| e.into_inner());
            let used: u64 = m.values().map(|h| h.bytes).sum();
            let pinned: u64 = m.values().filter(|h| h.pinned).map(|h| h.bytes).sum();
            let victim = m
                .values()
                .filter(|h| !h.pinned)
                .min_by_key(|h| h.last_used.load(Ordering::Relaxed))
                .map(|h| (h.id.clone(), h.bytes));
            (used, pinned, victim)
        };
        if used + need <= state.args.budget_bytes {
            break;
        }
        match victim {
            Some((v, bytes)) => {
                tracing::info!(evicted = %v, for_model = %spec.id, "memory budget: evicting the least recently used model");
                metrics::counter!(names::MODEL_EVICTIONS).increment(1);
                {
                    let mut e = state
                        .args
                        .evictions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    e.retain(|(_, _, at)| now.duration_since(*at) < EVICTIONS_KEPT);
                    if e.len() >= 64 {
                        e.pop_front();
                    }
                    e.push_back((v.clone(), bytes, now));
                }
                let _ = unload(state, &v, "the model was evicted to make room for another");
            }
            None => {
                return Err(RegistryError::OverBudget {
                    id: spec.id,
                    need_mib: need >> 20,
                    budget_mib: state.args.budget_bytes >> 20,
                    pinned_mib: pinned >> 20,
                })
            }
        }
    }
    let exec = Arc::new(ExecShared::default());
    let (actor, _) = Actor::spawn_linked(
        None,
        ModelActor,
        ModelArgs {
            id: spec.id.clone(),
            model: opened.model.clone(),
            tok: opened.tok.clone(),
            cfg: cfg.clone(),
            exec: exec.clone(),
        },
        myself.get_cell(),
    )
    .await
    .map_err(|e| {
        release_free_memory();
        RegistryError::Internal(format!("starting {}: {e}", spec.id))
    })?;
    let load_seconds = t0.elapsed().as_secs_f64();
    metrics::histogram!(names::MODEL_LOAD_SECONDS, names::MODEL => spec.id.clone())
        .record(load_seconds);
    let handle = ModelHandle {
        id: spec.id.clone(),
        template: opened.chat_template().ok(),
        path: opened.path,
        architecture: opened.model.architecture(),
        n_vocab: opened.model.n_vocab(),
        tok: opened.tok,
        n_ctx: cfg.sched.n_ctx,
        pinned: spec.pinned,
        bytes: need,
        load_seconds,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        actor: actor.clone(),
        inflight: Arc::new(AtomicUsize::new(0)),
        last_used: AtomicU64::new(now_ms(state.args.started)),
        exec,
    };
    let info = handle.info();
    state.actors.insert(actor.get_id(), spec.id.clone());
    state.specs.insert(spec.id.clone(), (opened.model, cfg));
    let n = {
        let mut m = state.args.models.write().unwrap_or_else(|e| e.into_inner());
        m.insert(spec.id.clone(), Arc::new(handle));
        m.len()
    };
    metrics::gauge!(names::LOADED_MODELS).set(n as f64);
    Ok(info)
}

fn unload(state: &mut RegistryState, id: &str, why: &str) -> Result<(), RegistryError> {
    let h = state
        .args
        .models
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id)
        .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
    state.actors.retain(|_, v| v != id);
    state.specs.remove(id);
    // Reported as unloading until its actor has finished what was in flight.
    state.unloading.insert(h.actor.get_id(), id.to_owned());
    state
        .args
        .transitions
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_owned(), ModelState::Unloading);
    let _ = h.actor.cast(ModelMsg::Shutdown(why.to_owned()));
    let n = state
        .args
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    metrics::gauge!(names::LOADED_MODELS).set(n as f64);
    tracing::info!(model = %id, "unloaded");
    Ok(())
}

/// Touch a model for the LRU order.
pub fn touch(h: &ModelHandle, started: Instant) {
    h.last_used.store(now_ms(started), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::check_model_id;

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
}
