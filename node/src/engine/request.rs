//! One generation request as the engine receives it, and the events it
//! sends back: the channel between the node's async side (HTTP, actors) and
//! the executor thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::sampling::SamplingParams;

/// The sending half of a request's events. It counts the events its reader
/// has not taken, so the executor can pause a sequence whose client stops
/// reading instead of buffering without bound (the executor never blocks on
/// a client: it serves the whole batch).
#[derive(Debug)]
pub struct EventTx {
    tx: UnboundedSender<Event>,
    unsent: Arc<AtomicUsize>,
}

/// The receiving half; taking an event counts it as sent.
#[derive(Debug)]
pub struct EventRx {
    rx: UnboundedReceiver<Event>,
    unsent: Arc<AtomicUsize>,
}

pub fn event_channel() -> (EventTx, EventRx) {
    let (tx, rx) = unbounded_channel();
    let unsent = Arc::new(AtomicUsize::new(0));
    (
        EventTx {
            tx,
            unsent: unsent.clone(),
        },
        EventRx { rx, unsent },
    )
}

impl EventTx {
    /// Queue an event; false if the reader is gone.
    pub fn send(&self, e: Event) -> bool {
        // Counted first, so the reader never takes an event not yet counted.
        self.unsent.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(e).is_ok() {
            true
        } else {
            self.unsent.fetch_sub(1, Ordering::SeqCst);
            false
        }
    }
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
    pub fn unsent(&self) -> usize {
        self.unsent.load(Ordering::SeqCst)
    }
}

impl EventRx {
    pub async fn recv(&mut self) -> Option<Event> {
        let e = self.rx.recv().await;
        if e.is_some() {
            self.unsent.fetch_sub(1, Ordering::SeqCst);
        }
        e
    }

    /// An event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        let e = self.rx.try_recv().ok();
        if e.is_some() {
            self.unsent.fetch_sub(1, Ordering::SeqCst);
        }
        e
    }

    pub fn into_stream(self) -> impl futures_util::Stream<Item = Event> + Send + 'static {
        futures_util::stream::unfold(self, |mut rx| async move {
            let e = rx.recv().await?;
            Some((e, rx))
        })
    }
}

/// One generation request, as the HTTP layer hands it over.
#[derive(Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Verify prompt-lookup drafts (engine/draft.rs) while decoding. The
    /// output is the same either way; it is a question of speed.
    pub speculative: bool,
    /// Seed used when `params.seed` is None.
    pub fallback_seed: u64,
    pub events: EventTx,
    pub arrived: Instant,
    /// The gateway's affinity keys for the request (kv/affinity.rs); boxed,
    /// as few requests carry them and every message carries the request.
    pub affinity: Option<Box<realizar_shared::control::Affinity>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogprobEntry {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// Text released by this token (may be empty while UTF-8 or a possible
    /// stop string is incomplete).
    pub text: String,
    pub logprob: LogprobEntry,
    pub top: Vec<LogprobEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(TokenOut),
    /// Held-back text released at the end, then the reason and the usage.
    Done {
        text: String,
        finish: FinishReason,
        usage: Usage,
    },
    Error(String),
}
