//! The node's actors (ractor). The registry is the supervisor: it loads,
//! warms and unloads models within a memory budget (evicting the least
//! recently used unpinned model), and owns one model actor per loaded model.
//! A model actor owns its executor thread: it forwards requests to it and,
//! when the executor panics, fails the in-flight requests (the executor does
//! that as it dies), logs and counts the restart, starts a fresh executor
//! and hands it the requests that were still queued.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;

use super::config::ModelOptions;
use super::executor::{Event, ExecConfig, ExecMsg, Executor, Exit, GenRequest};
use crate::model::{Logits, Model, Workspace};
use crate::tensor::{Simd, ThreadPool};
use crate::tokenizer::{ChatTemplate, Tokenizer};

/// Turns a model argument into a file path: a catalog name (smollm2,
/// gemma3) becomes its file in the models directory, fetched first when the
/// second argument allows it and it is missing; anything else is returned as
/// the path it names.
pub type Resolver = Arc<dyn Fn(&str, bool) -> Result<PathBuf, String> + Send + Sync>;

/// Who asked for a load, which decides where it may read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The operator: the command line or the config file. Any path; catalog
    /// names are fetched when missing.
    Operator,
    /// `POST /admin/models`: only files inside the model directories, and
    /// fetching only when the node allows downloads.
    Admin,
}

/// Where admin loads may read model files from.
#[derive(Debug, Clone, Default)]
pub struct ModelDirs {
    /// Canonical directories.
    pub dirs: Vec<PathBuf>,
    pub allow_downloads: bool,
}

impl ModelDirs {
    pub fn new(dirs: &[PathBuf], allow_downloads: bool) -> Self {
        ModelDirs {
            dirs: dirs
                .iter()
                .filter_map(|d| std::fs::canonicalize(d).ok())
                .collect(),
            allow_downloads,
        }
    }

    /// The file `p` names inside one of the directories (a path relative to
    /// one of them, or an absolute path under one), after following every
    /// symlink. Anything else, including a file that does not exist, is the
    /// same `NotAllowed`, so a caller learns nothing about files outside. The
    /// file itself is never opened here.
    pub fn confine(&self, p: &Path) -> Result<PathBuf, RegistryError> {
        let not_allowed = || RegistryError::NotAllowed(p.display().to_string());
        if p.as_os_str().is_empty()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(not_allowed());
        }
        for d in &self.dirs {
            let candidate = if p.is_absolute() {
                if !p.starts_with(d) {
                    continue;
                }
                p.to_path_buf()
            } else {
                d.join(p)
            };
            if let Ok(c) = std::fs::canonicalize(&candidate) {
                if c.starts_with(d) && c.is_file() {
                    return Ok(c);
                }
            }
        }
        Err(not_allowed())
    }
}

/// What the HTTP layer needs of a loaded model; cheap to clone.
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
    fault: Arc<AtomicBool>,
}

impl ModelHandle {
    /// Test-only: panic the executor in its next step with work.
    pub fn inject_fault(&self) {
        self.fault.store(true, Ordering::SeqCst);
    }
}

/// Loaded models by id, shared with the HTTP handlers.
pub type Models = Arc<RwLock<HashMap<String, Arc<ModelHandle>>>>;

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub path: String,
    pub architecture: String,
    pub pinned: bool,
    pub bytes: u64,
    pub load_seconds: f64,
    pub n_ctx: usize,
    pub inflight: usize,
}

impl ModelInfo {
    pub fn of_handle(h: &ModelHandle) -> Self {
        ModelInfo {
            id: h.id.clone(),
            path: h.path.display().to_string(),
            architecture: h.architecture.to_owned(),
            pinned: h.pinned,
            bytes: h.bytes,
            load_seconds: h.load_seconds,
            n_ctx: h.n_ctx,
            inflight: h.inflight.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub id: String,
    pub path: String,
    pub pinned: bool,
    pub options: ModelOptions,
    pub origin: Origin,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("model `{0}` is not loaded")]
    NotFound(String),
    #[error("model `{0}` is already loaded")]
    AlreadyLoaded(String),
    #[error("{0}")]
    Load(String),
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
}

pub struct RegistryState {
    args: RegistryArgs,
    /// Model actor id → model id, for supervision events.
    actors: HashMap<ractor::ActorId, String>,
    /// How each model was loaded, to restart its actor.
    specs: HashMap<String, (Arc<dyn Model>, ExecConfig)>,
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
        metrics::gauge!("realizar_loaded_models").set(0.0);
        Ok(RegistryState {
            args,
            actors: HashMap::new(),
            specs: HashMap::new(),
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
                let r = load(&myself, state, spec).await;
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
        if let SupervisionEvent::ActorTerminated(..) = evt {
            // An unloaded model's actor is gone with its state (weights map,
            // tokenizer): return the freed heap pages, now and once the last
            // handles held by finishing requests are gone.
            release_free_memory();
            tokio::spawn(async {
                for ms in [100, 1000] {
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
            metrics::counter!("realizar_model_actor_restarts_total", "model" => id.clone())
                .increment(1);
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
                        fault: h.fault.clone(),
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
        fault: h.fault.clone(),
    }
}

struct Opened {
    model: Arc<dyn Model>,
    tok: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    path: PathBuf,
    file_bytes: u64,
}

/// Where a load reads from: the operator's path or catalog name as given;
/// an admin request's only inside the model directories.
fn resolve(
    spec: &LoadSpec,
    resolver: &Resolver,
    dirs: &ModelDirs,
) -> Result<PathBuf, RegistryError> {
    match spec.origin {
        Origin::Operator => resolver(&spec.path, true).map_err(RegistryError::Load),
        Origin::Admin => {
            let named = resolver(&spec.path, false);
            let p = match named {
                Ok(p) => p,
                // A catalog name that is not on disk.
                Err(_) if dirs.allow_downloads => {
                    resolver(&spec.path, true).map_err(RegistryError::Load)?
                }
                Err(_) => return Err(RegistryError::NoDownload(spec.path.clone())),
            };
            dirs.confine(&p)
                .map_err(|_| RegistryError::NotAllowed(spec.path.clone()))
        }
    }
}

/// Open, build and warm a model (blocking: runs off the async threads).
fn open_model(spec: &LoadSpec, path: PathBuf, threads: usize) -> Result<Opened, String> {
    let t0 = Instant::now();
    tracing::info!(model = %spec.id, path = %path.display(), "loading: mapping the file");
    let file =
        Arc::new(crate::format::hf_convert::open_model_file(&path).map_err(|e| e.to_string())?);
    let file_bytes = file.bytes().len() as u64;
    tracing::info!(model = %spec.id, mib = file_bytes >> 20, "loading: tokenizer");
    let tok =
        Tokenizer::from_gguf(file.metadata()).map_err(|e| format!("{}: {e}", path.display()))?;
    let template =
        ChatTemplate::for_model(file.metadata().get_str("tokenizer.chat_template"), &tok).ok();
    tracing::info!(model = %spec.id, "loading: building the model");
    let model: Arc<dyn Model> = Arc::from(crate::model::load(file).map_err(|e| e.to_string())?);
    // Warm: one token through every layer pages the weights in, so the first
    // request does not pay for it.
    tracing::info!(model = %spec.id, "loading: warming");
    let pool = ThreadPool::new(threads);
    let mut cache = model.new_cache(1);
    let mut ws = Workspace::default();
    model.forward(
        &pool,
        Simd::detect(),
        &[0],
        &mut cache,
        &mut ws,
        Logits::Last,
    );
    tracing::info!(model = %spec.id, seconds = t0.elapsed().as_secs_f64(), "loaded");
    Ok(Opened {
        model,
        tok: Arc::new(tok),
        template,
        path,
        file_bytes,
    })
}

fn exec_config(
    model: &dyn Model,
    o: &ModelOptions,
    threads: usize,
    args: &RegistryArgs,
) -> ExecConfig {
    let d = model.dims();
    let kv_type = o.kv_type();
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
        block_size: o.block_size,
        kv_blocks,
        kv_type,
        max_batch: o.max_batch,
        max_step_tokens: o.max_step_tokens,
        n_ctx,
        stream_buffer: args.stream_buffer,
        stall: args.stall,
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
    let spec2 = spec.clone();
    let opened = tokio::task::spawn_blocking(move || open_model(&spec2, path, threads))
        .await
        .map_err(|e| RegistryError::Internal(format!("loading {} panicked: {e}", spec.id)))?
        .map_err(RegistryError::Load)?;
    let cfg = exec_config(&*opened.model, &spec.options, threads, &state.args);
    let kv_bytes = (cfg.kv_blocks
        * 2
        * opened.model.dims().n_layer
        * cfg.block_size
        * opened.model.dims().kv_dim
        * cfg.kv_type.bytes_per_elem()) as u64;
    let need = opened.file_bytes + kv_bytes;
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
                .map(|h| h.id.clone());
            (used, pinned, victim)
        };
        if used + need <= state.args.budget_bytes {
            break;
        }
        match victim {
            Some(v) => {
                tracing::info!(evicted = %v, for_model = %spec.id, "memory budget: evicting the least recently used model");
                metrics::counter!("realizar_model_evictions_total").increment(1);
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
    let fault = Arc::new(AtomicBool::new(false));
    let (actor, _) = Actor::spawn_linked(
        None,
        ModelActor,
        ModelArgs {
            id: spec.id.clone(),
            model: opened.model.clone(),
            tok: opened.tok.clone(),
            cfg: cfg.clone(),
            fault: fault.clone(),
        },
        myself.get_cell(),
    )
    .await
    .map_err(|e| {
        release_free_memory();
        RegistryError::Internal(format!("starting {}: {e}", spec.id))
    })?;
    let load_seconds = t0.elapsed().as_secs_f64();
    metrics::histogram!("realizar_model_load_seconds", "model" => spec.id.clone())
        .record(load_seconds);
    let handle = ModelHandle {
        id: spec.id.clone(),
        path: opened.path,
        architecture: opened.model.architecture(),
        n_vocab: opened.model.n_vocab(),
        tok: opened.tok,
        template: opened.template,
        n_ctx: cfg.n_ctx,
        pinned: spec.pinned,
        bytes: need,
        load_seconds,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        actor: actor.clone(),
        inflight: Arc::new(AtomicUsize::new(0)),
        last_used: AtomicU64::new(now_ms(state.args.started)),
        fault,
    };
    let info = ModelInfo::of_handle(&handle);
    state.actors.insert(actor.get_id(), spec.id.clone());
    state.specs.insert(spec.id.clone(), (opened.model, cfg));
    let n = {
        let mut m = state.args.models.write().unwrap_or_else(|e| e.into_inner());
        m.insert(spec.id.clone(), Arc::new(handle));
        m.len()
    };
    metrics::gauge!("realizar_loaded_models").set(n as f64);
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
    let _ = h.actor.cast(ModelMsg::Shutdown(why.to_owned()));
    let n = state
        .args
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    metrics::gauge!("realizar_loaded_models").set(n as f64);
    tracing::info!(model = %id, "unloaded");
    Ok(())
}

/// Return free heap memory to the operating system (glibc keeps freed
/// small allocations, like a tokenizer's vocabulary, in its arenas).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases memory glibc holds as free.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Touch a model for the LRU order.
pub fn touch(h: &ModelHandle, started: Instant) {
    h.last_used.store(now_ms(started), Ordering::Relaxed);
}

pub enum ModelMsg {
    Generate(GenRequest),
    /// Sent by the executor thread as it ends.
    ExecutorExited(Option<String>, Vec<GenRequest>),
    /// Fail everything in flight with this reason and stop.
    Shutdown(String),
}

pub struct ModelArgs {
    id: String,
    model: Arc<dyn Model>,
    tok: Arc<Tokenizer>,
    cfg: ExecConfig,
    fault: Arc<AtomicBool>,
}

pub struct ModelState {
    args: ModelArgs,
    exec: mpsc::Sender<ExecMsg>,
    /// Requests that arrived while the executor was down.
    pending: Vec<GenRequest>,
    stopping: bool,
}

pub struct ModelActor;

fn spawn_executor(
    myself: ActorRef<ModelMsg>,
    a: &ModelArgs,
) -> Result<mpsc::Sender<ExecMsg>, std::io::Error> {
    let (tx, rx) = mpsc::channel();
    let (id, model, tok, cfg, fault) = (
        a.id.clone(),
        a.model.clone(),
        a.tok.clone(),
        a.cfg.clone(),
        a.fault.clone(),
    );
    // Thread names cannot hold NUL; ids are validated, this keeps it so.
    let name: String = format!("exec-{id}")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    std::thread::Builder::new().name(name).spawn(move || {
        let exec = Executor::new(id, model, tok, cfg, fault);
        let exit = exec.run(&rx);
        // Requests still in the channel were never started.
        let mut queued = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let ExecMsg::Submit(r) = m {
                queued.push(*r);
            }
        }
        drop(rx);
        let msg = match exit {
            Exit::Clean => {
                for r in queued.drain(..) {
                    let _ = r.events.send(Event::Error("the model was unloaded".into()));
                }
                None
            }
            Exit::Panicked { message, queued: q } => {
                queued.splice(0..0, q);
                Some(message)
            }
        };
        let _ = myself.cast(ModelMsg::ExecutorExited(msg, queued));
    })?;
    Ok(tx)
}

impl Actor for ModelActor {
    type Msg = ModelMsg;
    type State = ModelState;
    type Arguments = ModelArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ModelArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let exec = spawn_executor(myself, &args)?;
        Ok(ModelState {
            args,
            exec,
            pending: Vec::new(),
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ModelMsg::Generate(req) => {
                if state.stopping {
                    let _ = req
                        .events
                        .send(Event::Error("the model was unloaded".into()));
                } else if let Err(mpsc::SendError(ExecMsg::Submit(req))) =
                    state.exec.send(ExecMsg::Submit(Box::new(req)))
                {
                    // The executor is down; it is restarted when its exit arrives.
                    state.pending.push(*req);
                }
            }
            ModelMsg::ExecutorExited(None, _) => {
                // The executor has dropped the KV pool; give freed heap
                // pages back to the system so RSS reflects the unload.
                release_free_memory();
                myself.stop(None)
            }
            ModelMsg::ExecutorExited(Some(why), queued) => {
                let id = &state.args.id;
                tracing::error!(model = %id, error = %why, requeued = queued.len(), "executor panicked; restarting it");
                metrics::counter!("realizar_executor_restarts_total", "model" => id.clone())
                    .increment(1);
                state.exec = spawn_executor(myself.clone(), &state.args)?;
                for r in queued.into_iter().chain(state.pending.drain(..)) {
                    let _ = state.exec.send(ExecMsg::Submit(Box::new(r)));
                }
            }
            ModelMsg::Shutdown(why) => {
                state.stopping = true;
                let _ = state.exec.send(ExecMsg::Shutdown(why.clone()));
                for r in state.pending.drain(..) {
                    let _ = r.events.send(Event::Error(why.clone()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_admits_only_files_inside_the_directories() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("models");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/m.gguf"), b"x").unwrap();
        std::fs::write(root.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("out.gguf")).unwrap();
        std::os::unix::fs::symlink(dir.join("sub/m.gguf"), dir.join("in.gguf")).unwrap();
        let dirs = ModelDirs::new(std::slice::from_ref(&dir), false);
        let canon = std::fs::canonicalize(dir.join("sub/m.gguf")).unwrap();
        for ok in ["sub/m.gguf", "in.gguf", "./sub/m.gguf"] {
            assert_eq!(dirs.confine(Path::new(ok)).unwrap(), canon, "{ok}");
        }
        assert_eq!(dirs.confine(&canon).unwrap(), canon);
        let secret = root.path().join("secret");
        for bad in [
            "out.gguf",
            "../secret",
            "sub/../../secret",
            "sub/../sub/m.gguf",
            "missing.gguf",
            "sub",
            "",
            secret.to_str().unwrap(),
            "/etc/passwd",
        ] {
            assert!(
                matches!(
                    dirs.confine(Path::new(bad)),
                    Err(RegistryError::NotAllowed(_))
                ),
                "{bad}"
            );
        }
        // No directory at all: nothing is allowed.
        let none = ModelDirs::new(&[root.path().join("absent")], false);
        assert!(none.confine(Path::new("sub/m.gguf")).is_err());
    }
}
