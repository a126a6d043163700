//! The model actor: it owns one loaded model's executor thread, forwards
//! requests to it and, when the executor panics, logs and counts the
//! restart, starts a fresh executor and hands it the requests that were
//! still queued (the executor fails the running ones as it dies).

use std::sync::{mpsc, Arc};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use realizar_shared::metrics as names;

use crate::engine::{Event, ExecConfig, ExecMsg, ExecShared, Executor, Exit, GenRequest};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

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

pub enum ModelMsg {
    Generate(GenRequest),
    /// Sent by the executor thread as it ends.
    ExecutorExited(Option<String>, Vec<GenRequest>),
    /// Fail everything in flight with this reason and stop.
    Shutdown(String),
}

pub struct ModelArgs {
    pub id: String,
    pub model: Arc<dyn Model>,
    pub tok: Arc<Tokenizer>,
    pub cfg: ExecConfig,
    pub exec: Arc<ExecShared>,
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
    let (id, model, tok, cfg, shared) = (
        a.id.clone(),
        a.model.clone(),
        a.tok.clone(),
        a.cfg.clone(),
        a.exec.clone(),
    );
    // Thread names cannot hold NUL; ids are validated, this keeps it so.
    let name: String = format!("exec-{id}")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    std::thread::Builder::new().name(name).spawn(move || {
        let exec = Executor::new(id, model, tok, cfg, shared);
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
                metrics::counter!(names::EXECUTOR_RESTARTS, names::MODEL => id.clone())
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
