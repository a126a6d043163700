//! The executor: one OS thread per loaded model that owns the compute (the
//! model's thread pool, its paged KV pool and the scheduler) and never runs
//! on tokio's workers. Each step it takes new sequences into the running
//! batch (continuous batching), gives every running sequence its next token
//! or its next prefill chunk under a token budget (chunked prefill), runs one
//! batched forward over all of them, samples, and streams the results to
//! each request's channel.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::blocks::{block_hash, prefix_hashes, BlockManager};
use crate::model::{KvPool, KvType, Logits, Model, SeqStep, Workspace};
use crate::sampling::{Sampler, SamplingParams, StopMatcher, StopOutcome, TokenLogprob};
use crate::tensor::{Simd, ThreadPool};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Limits of one model's executor.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub threads: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub kv_blocks: usize,
    pub kv_type: KvType,
    /// Most sequences in the running batch.
    pub max_batch: usize,
    /// Most tokens one step computes (decodes plus prefill chunks).
    pub max_step_tokens: usize,
    /// Longest sequence (prompt plus generation).
    pub n_ctx: usize,
    /// Events a sequence may have sent and its reader not yet taken before
    /// the sequence is paused (no tokens computed for it).
    pub stream_buffer: usize,
    /// A sequence paused this long is cancelled.
    pub stall: Duration,
}

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
    /// Seed used when `params.seed` is None.
    pub fallback_seed: u64,
    pub events: EventTx,
    pub arrived: Instant,
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

pub enum ExecMsg {
    Submit(Box<GenRequest>),
    /// Finish: fail what is in flight (with this reason) and exit.
    Shutdown(String),
}

/// How an executor thread ended.
pub enum Exit {
    /// Its channel closed or it was told to shut down.
    Clean,
    /// A step panicked. The running sequences were failed; the requests that
    /// had not started are handed back to be run by a new executor.
    Panicked {
        message: String,
        queued: Vec<GenRequest>,
    },
}

struct Seq {
    req: GenRequest,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Positions whose keys and values are in the pool.
    n_computed: usize,
    table: Vec<u32>,
    /// Hashes of the blocks of `table` registered so far (full ones).
    hashes: Vec<u64>,
    cached_tokens: Option<usize>,
    sampler: Sampler,
    stop: StopMatcher,
    dec: StreamDecoder,
    generated: usize,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    admitted: bool,
    /// Since when its reader has left `stream_buffer` events untaken.
    paused_since: Option<Instant>,
}

impl Seq {
    fn new(req: GenRequest) -> Self {
        let sampler = Sampler::new(req.params.clone(), req.fallback_seed).with_history(&req.prompt);
        Seq {
            tokens: req.prompt.clone(),
            n_prompt: req.prompt.len(),
            n_computed: 0,
            table: Vec::new(),
            hashes: Vec::new(),
            cached_tokens: None,
            sampler,
            stop: StopMatcher::new(req.stop.clone()),
            dec: StreamDecoder::default(),
            generated: 0,
            first_token: None,
            last_token: None,
            admitted: false,
            paused_since: None,
            req,
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.n_prompt,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens.unwrap_or(0),
        }
    }
}

pub struct Executor {
    name: String,
    model: Arc<dyn Model>,
    tok: Arc<Tokenizer>,
    cfg: ExecConfig,
    pool: ThreadPool,
    simd: Simd,
    kv: KvPool,
    blocks: BlockManager,
    ws: Workspace,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Test-only fault injection: panic in the next step with work.
    fault: Arc<AtomicBool>,
    reported_hits: u64,
    reported_queries: u64,
}

impl Executor {
    pub fn new(
        name: String,
        model: Arc<dyn Model>,
        tok: Arc<Tokenizer>,
        cfg: ExecConfig,
        fault: Arc<AtomicBool>,
    ) -> Self {
        let kv = model.new_pool(cfg.block_size, cfg.kv_blocks, cfg.kv_type);
        metrics::gauge!("realizar_kv_blocks_capacity", "model" => name.clone())
            .set(cfg.kv_blocks as f64);
        Executor {
            pool: ThreadPool::new(cfg.threads),
            simd: Simd::detect(),
            blocks: BlockManager::new(cfg.kv_blocks),
            kv,
            ws: Workspace::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            name,
            model,
            tok,
            cfg,
            fault,
            reported_hits: 0,
            reported_queries: 0,
        }
    }

    /// Run until the channel closes, a shutdown, or a panic in a step.
    pub fn run(mut self, rx: &mpsc::Receiver<ExecMsg>) -> Exit {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                self.publish();
                match rx.recv() {
                    Ok(m) => {
                        if !self.accept(m) {
                            return Exit::Clean;
                        }
                    }
                    Err(_) => return Exit::Clean,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => {
                        if !self.accept(m) {
                            return Exit::Clean;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.fail_all("the model was unloaded");
                        return Exit::Clean;
                    }
                }
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.step())) {
                Ok(true) => {}
                Ok(false) => {
                    // Nothing could run (every sequence is paused for its
                    // reader): wait a little for a message instead of spinning.
                    match rx.recv_timeout(Duration::from_millis(20)) {
                        Ok(m) => {
                            if !self.accept(m) {
                                return Exit::Clean;
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            self.fail_all("the model was unloaded");
                            return Exit::Clean;
                        }
                    }
                }
                Err(p) => {
                    let message = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "executor panicked".into());
                    let msg = format!("the model's executor failed: {message}");
                    for s in self.running.drain(..) {
                        let _ = s.req.events.send(Event::Error(msg.clone()));
                    }
                    let mut queued = Vec::new();
                    for s in self.waiting.drain(..) {
                        if s.generated == 0 {
                            queued.push(s.req);
                        } else {
                            let _ = s.req.events.send(Event::Error(msg.clone()));
                        }
                    }
                    return Exit::Panicked { message, queued };
                }
            }
        }
    }

    /// Take a message; false means shut down.
    fn accept(&mut self, m: ExecMsg) -> bool {
        match m {
            ExecMsg::Submit(req) => {
                self.waiting.push_back(Seq::new(*req));
                true
            }
            ExecMsg::Shutdown(why) => {
                self.fail_all(&why);
                false
            }
        }
    }

    fn fail_all(&mut self, why: &str) {
        for s in self.running.drain(..).chain(self.waiting.drain(..)) {
            let _ = s.req.events.send(Event::Error(why.into()));
        }
        self.clear_gauges();
    }

    fn publish(&mut self) {
        let m = self.name.clone();
        metrics::gauge!("realizar_running_sequences", "model" => m.clone())
            .set(self.running.len() as f64);
        metrics::gauge!("realizar_waiting_sequences", "model" => m.clone())
            .set(self.waiting.len() as f64);
        metrics::gauge!("realizar_kv_blocks_used", "model" => m.clone())
            .set(self.blocks.n_used() as f64);
        let bs = self.cfg.block_size as u64;
        metrics::counter!("realizar_prefix_cache_hits_total", "model" => m.clone())
            .increment((self.blocks.hits - self.reported_hits) * bs);
        metrics::counter!("realizar_prefix_cache_queries_total", "model" => m)
            .increment((self.blocks.queries - self.reported_queries) * bs);
        self.reported_hits = self.blocks.hits;
        self.reported_queries = self.blocks.queries;
    }

    fn preempt(&mut self, mut s: Seq) {
        self.blocks.release(&s.table);
        s.table.clear();
        s.hashes.clear();
        s.n_computed = 0;
        metrics::counter!("realizar_preemptions_total", "model" => self.name.clone()).increment(1);
        self.waiting.push_front(s);
    }

    /// Drop sequences whose client went away, or stopped reading for longer
    /// than `stall`, freeing their blocks.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let stalled = s
                .paused_since
                .is_some_and(|t| t.elapsed() >= self.cfg.stall);
            if s.req.events.is_closed() {
                let s = self.running.remove(i);
                self.blocks.release(&s.table);
                metrics::counter!("realizar_cancelled_requests_total", "model" => self.name.clone()).increment(1);
            } else if stalled {
                let s = self.running.remove(i);
                self.blocks.release(&s.table);
                tracing::warn!(model = %self.name, generated = s.generated, "a stream's client stopped reading; cancelled");
                metrics::counter!("realizar_stalled_streams_total", "model" => self.name.clone())
                    .increment(1);
                let _ = s.req.events.send(Event::Error(format!(
                    "the stream was cancelled: its client read nothing for {} s",
                    self.cfg.stall.as_secs_f64()
                )));
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|s| !s.req.events.is_closed());
    }

    /// Zero this model's gauges (its executor is going away).
    fn clear_gauges(&self) {
        let m = self.name.clone();
        for g in [
            "realizar_running_sequences",
            "realizar_waiting_sequences",
            "realizar_kv_blocks_used",
            "realizar_kv_blocks_capacity",
        ] {
            metrics::gauge!(g, "model" => m.clone()).set(0.0);
        }
    }

    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.block_size)
    }

    /// Give every running sequence blocks for its next chunk, preempting the
    /// newest sequences when the pool runs out; admit waiting sequences
    /// (reusing cached prefixes) while the budget lasts. Returns (index in
    /// `running`, tokens) per sequence of the step.
    fn plan(&mut self) -> Vec<(usize, usize)> {
        let bs = self.cfg.block_size;
        let mut budget = self.cfg.max_step_tokens;
        let mut plan = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.running[i].req.events.unsent() >= self.cfg.stream_buffer {
                self.running[i]
                    .paused_since
                    .get_or_insert_with(Instant::now);
                i += 1;
                continue;
            }
            self.running[i].paused_since = None;
            let n = (self.running[i].tokens.len() - self.running[i].n_computed).min(budget);
            let need = self.blocks_for(self.running[i].n_computed + n);
            let mut ok = true;
            while self.running[i].table.len() < need {
                if let Some(b) = self.blocks.allocate() {
                    self.running[i].table.push(b);
                } else if self.running.len() - 1 > i {
                    let victim = self.running.pop().expect("non-empty");
                    self.preempt(victim);
                } else {
                    ok = false;
                    break;
                }
            }
            if !ok {
                let s = self.running.remove(i);
                self.preempt(s);
                break;
            }
            plan.push((i, n));
            budget -= n;
            i += 1;
        }
        while budget > 0 && self.running.len() < self.cfg.max_batch {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            if s.table.is_empty() {
                // The last token is always computed, for its logits.
                let hashes = prefix_hashes(&s.tokens[..s.tokens.len() - 1], bs);
                let got = self.blocks.lookup(&hashes);
                s.n_computed = got.len() * bs;
                s.hashes = hashes[..got.len()].to_vec();
                s.table = got;
                s.cached_tokens.get_or_insert(s.n_computed.min(s.n_prompt));
            }
            let n = (s.tokens.len() - s.n_computed).min(budget);
            let need = self.blocks_for(s.n_computed + n) - s.table.len();
            if self.blocks.n_free() < need {
                self.blocks.release(&s.table);
                s.table.clear();
                s.hashes.clear();
                s.n_computed = 0;
                self.waiting.push_front(s);
                break;
            }
            for _ in 0..need {
                let b = self.blocks.allocate().expect("counted free blocks");
                s.table.push(b);
            }
            if !s.admitted {
                s.admitted = true;
                metrics::histogram!("realizar_request_queue_seconds", "model" => self.name.clone())
                    .record(s.req.arrived.elapsed().as_secs_f64());
            }
            self.running.push(s);
            plan.push((self.running.len() - 1, n));
            budget -= n;
        }
        plan
    }

    /// One step; false when nothing could be computed.
    fn step(&mut self) -> bool {
        self.drop_cancelled();
        let plan = self.plan();
        self.publish();
        if plan.is_empty() {
            return false;
        }
        let steps: Vec<SeqStep> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                SeqStep {
                    tokens: &s.tokens[s.n_computed..s.n_computed + n],
                    pos0: s.n_computed,
                    table: &s.table,
                    logits: if s.n_computed + n == s.tokens.len() {
                        Logits::Last
                    } else {
                        Logits::None
                    },
                }
            })
            .collect();
        self.model
            .forward_batch(&self.pool, self.simd, &steps, &mut self.kv, &mut self.ws);
        drop(steps);
        metrics::histogram!("realizar_batch_size", "model" => self.name.clone())
            .record(plan.len() as f64);
        if self.fault.swap(false, Ordering::SeqCst) {
            panic!("injected fault (test only)");
        }
        let n_vocab = self.model.n_vocab();
        let bs = self.cfg.block_size;
        let mut row = 0;
        let mut finished = Vec::new();
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            s.n_computed += n;
            // Register the blocks this step filled.
            while (s.hashes.len() + 1) * bs <= s.n_computed {
                let j = s.hashes.len();
                let h = block_hash(
                    s.hashes.last().copied().unwrap_or(0),
                    &s.tokens[j * bs..(j + 1) * bs],
                );
                self.blocks.register(s.table[j], h);
                s.hashes.push(h);
            }
            if s.n_computed < s.tokens.len() {
                continue;
            }
            let logits = &mut self.ws.logits[row * n_vocab..(row + 1) * n_vocab];
            row += 1;
            if s.req.ignore_eos {
                for &e in self.tok.vocab.special_ids().iter() {
                    if self.tok.vocab.is_end_of_generation(e) {
                        logits[e as usize] = f32::NEG_INFINITY;
                    }
                }
            }
            let sampled = s.sampler.sample(logits);
            let id = sampled.token.id;
            let now = Instant::now();
            match s.last_token {
                None => {
                    s.first_token = Some(now);
                    metrics::histogram!("realizar_time_to_first_token_seconds", "model" => self.name.clone())
                        .record((now - s.req.arrived).as_secs_f64());
                }
                Some(t) => {
                    metrics::histogram!("realizar_inter_token_latency_seconds", "model" => self.name.clone())
                        .record((now - t).as_secs_f64());
                }
            }
            s.last_token = Some(now);
            s.generated += 1;
            s.tokens.push(id);
            let eog = !s.req.ignore_eos && self.tok.vocab.is_end_of_generation(id);
            // (reason, whether held-back text is released at the end)
            let mut finish = None;
            let mut text = String::new();
            if eog {
                finish = Some((FinishReason::Stop, true));
            } else {
                match s.stop.push(&s.dec.push(&self.tok, id)) {
                    StopOutcome::Continue(t) => text = t,
                    StopOutcome::Stop(t) => {
                        text = t;
                        finish = Some((FinishReason::Stop, false));
                    }
                }
            }
            let entry = |t: &TokenLogprob| {
                let mut bytes = Vec::new();
                self.tok.token_bytes(t.id, true, &mut bytes);
                LogprobEntry {
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    bytes,
                    logprob: t.logprob,
                }
            };
            let out = TokenOut {
                id,
                text,
                logprob: entry(&sampled.token),
                top: sampled.top.iter().map(entry).collect(),
            };
            let _ = s.req.events.send(Event::Token(out));
            if finish.is_none()
                && (s.generated >= s.req.max_tokens || s.tokens.len() >= self.cfg.n_ctx)
            {
                finish = Some((FinishReason::Length, true));
            }
            if let Some(f) = finish {
                finished.push((i, f));
            }
        }
        // Remove finished sequences, highest index first.
        finished.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, (f, release)) in finished {
            let mut s = self.running.remove(i);
            let mut text = String::new();
            if release {
                // Text held back for a stop string that never completed, and
                // any incomplete UTF-8.
                let tail = s.dec.finish();
                text = s.stop.finish();
                text.push_str(&tail);
            }
            self.blocks.release(&s.table);
            let name = self.name.clone();
            metrics::counter!("realizar_prompt_tokens_total", "model" => name.clone())
                .increment(s.n_prompt as u64);
            metrics::counter!("realizar_generation_tokens_total", "model" => name.clone())
                .increment(s.generated as u64);
            metrics::histogram!("realizar_e2e_request_latency_seconds", "model" => name)
                .record(s.req.arrived.elapsed().as_secs_f64());
            let usage = s.usage();
            let _ = s.req.events.send(Event::Done {
                text,
                finish: f,
                usage,
            });
        }
        true
    }
}
