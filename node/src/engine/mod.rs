//! The engine around the model: a request and its events, the
//! continuous-batching scheduler, prompt-lookup drafts for speculative
//! decoding, and the executor thread that runs
//! schedule → forward → sample → update.

pub mod draft;
pub mod executor;
pub mod request;
pub mod scheduler;

pub use executor::{ExecConfig, ExecMsg, ExecShared, Executor, Exit};
pub use request::{
    event_channel, Event, EventRx, EventTx, FinishReason, GenRequest, LogprobEntry, TokenOut, Usage,
};
pub use scheduler::{SchedConfig, Scheduler};
