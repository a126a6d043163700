//! The executor: one OS thread per loaded model that owns the compute (the
//! model's thread pool, its paged KV pool and the scheduler) and never runs
//! on tokio's workers. Each step is schedule → forward → sample → update:
//! the scheduler plans which sequences run and how many tokens each
//! (continuous batching, chunked prefill), one batched forward computes
//! them, each sequence that reached its last token samples, and the
//! scheduler advances the sequences; the tokens go out on each request's
//! channel.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use realizar_shared::metrics as names;

use super::request::{Event, GenRequest, LogprobEntry, TokenOut};
use super::scheduler::{Finished, Sampled, SchedConfig, Schedule, Scheduler, Seq, StopKind};
use crate::kv::affinity::AffinityKeys;
use crate::kv::{KvPool, KvType};
use crate::model::{Model, Workspace};
use crate::sampling::{StopOutcome, TokenLogprob};
use crate::tensor::{Simd, ThreadPool};
use crate::tokenizer::Tokenizer;

/// Limits of one model's executor.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub threads: usize,
    pub kv_type: KvType,
    pub sched: SchedConfig,
}

/// What an executor shows the rest of the node (its model's load, for the
/// load report), and the supervision tests' fault switch.
#[derive(Debug, Default)]
pub struct ExecShared {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_capacity: AtomicUsize,
    pub block_size: AtomicUsize,
    /// Hashes of cached prompt blocks, busiest first (at most
    /// `PREFIX_SUMMARY`), refreshed when the executor goes idle and at most
    /// every `PREFIX_REFRESH` while busy.
    pub prefix_hashes: Mutex<Vec<u64>>,
    /// Gateway affinity keys whose prompt start is cached (kv/affinity.rs),
    /// most recent first, refreshed with `prefix_hashes`.
    pub affinity_keys: Mutex<Vec<u64>>,
    /// Gateway conversation keys whose prompt is cached nearly to its end,
    /// refreshed with `prefix_hashes`.
    pub conversation_keys: Mutex<Vec<u64>>,
    /// (returning starts, of them lost) as `AffinityKeys::returns` counts
    /// them, refreshed with `prefix_hashes`.
    pub start_returns: Mutex<(u32, u32)>,
    /// Panic in the next step with work (only with fault injection on).
    pub fault: AtomicBool,
}

const PREFIX_SUMMARY: usize = 256;
const PREFIX_REFRESH: Duration = Duration::from_millis(200);

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

pub struct Executor {
    name: String,
    model: Arc<dyn Model>,
    tok: Arc<Tokenizer>,
    pool: ThreadPool,
    simd: Simd,
    kv: KvPool,
    sched: Scheduler,
    ws: Workspace,
    stall: Duration,
    shared: Arc<ExecShared>,
    prefix_refreshed: Option<Instant>,
    reported_hits: u64,
    reported_queries: u64,
    affinity: AffinityKeys,
    conversations: AffinityKeys,
}

impl Executor {
    pub fn new(
        name: String,
        model: Arc<dyn Model>,
        tok: Arc<Tokenizer>,
        cfg: ExecConfig,
        shared: Arc<ExecShared>,
    ) -> Self {
        let kv = model.new_pool(cfg.sched.block_size, cfg.sched.kv_blocks, cfg.kv_type);
        metrics::gauge!(names::KV_BLOCKS_CAPACITY, names::MODEL => name.clone())
            .set(cfg.sched.kv_blocks as f64);
        shared
            .kv_blocks_capacity
            .store(cfg.sched.kv_blocks, Ordering::Relaxed);
        shared
            .block_size
            .store(cfg.sched.block_size, Ordering::Relaxed);
        Executor {
            pool: ThreadPool::new(cfg.threads),
            simd: Simd::detect(),
            kv,
            ws: Workspace::default(),
            stall: cfg.sched.stall,
            sched: Scheduler::new(cfg.sched),
            name,
            model,
            tok,
            shared,
            prefix_refreshed: None,
            reported_hits: 0,
            reported_queries: 0,
            affinity: AffinityKeys::default(),
            conversations: AffinityKeys::default(),
        }
    }

    /// Run until the channel closes, a shutdown, or a panic in a step.
    pub fn run(mut self, rx: &mpsc::Receiver<ExecMsg>) -> Exit {
        loop {
            if self.sched.is_idle() {
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
                    let (running, waiting) = self.sched.drain();
                    for s in running {
                        let _ = s.req.events.send(Event::Error(msg.clone()));
                    }
                    let mut queued = Vec::new();
                    for s in waiting {
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
                if let Some(a) = &req.affinity {
                    let (bs, now) = (self.kv.block_size(), Instant::now());
                    let blocks = self.sched.blocks();
                    for &k in &a.start {
                        self.affinity
                            .record(k, &req.prompt, bs, now, |h| blocks.is_cached(h));
                    }
                    if let Some(k) = a.conversation {
                        self.conversations.record_end(k, &req.prompt, bs, now);
                    }
                }
                self.sched.add(*req);
                true
            }
            ExecMsg::Shutdown(why) => {
                self.fail_all(&why);
                false
            }
        }
    }

    fn fail_all(&mut self, why: &str) {
        let (running, waiting) = self.sched.drain();
        for s in running.into_iter().chain(waiting) {
            let _ = s.req.events.send(Event::Error(why.into()));
        }
        self.clear_gauges();
    }

    fn publish(&mut self) {
        let m = self.name.clone();
        metrics::gauge!(names::RUNNING_SEQUENCES, names::MODEL => m.clone())
            .set(self.sched.n_running() as f64);
        metrics::gauge!(names::WAITING_SEQUENCES, names::MODEL => m.clone())
            .set(self.sched.n_waiting() as f64);
        let blocks = self.sched.blocks();
        metrics::gauge!(names::KV_BLOCKS_USED, names::MODEL => m.clone())
            .set(blocks.n_used() as f64);
        let (hits, queries) = (blocks.hits, blocks.queries);
        let bs = self.kv.block_size() as u64;
        metrics::counter!(names::PREFIX_CACHE_HITS, names::MODEL => m.clone())
            .increment((hits - self.reported_hits) * bs);
        metrics::counter!(names::PREFIX_CACHE_QUERIES, names::MODEL => m)
            .increment((queries - self.reported_queries) * bs);
        self.reported_hits = hits;
        self.reported_queries = queries;
        let sh = &self.shared;
        sh.running.store(self.sched.n_running(), Ordering::Relaxed);
        sh.waiting.store(self.sched.n_waiting(), Ordering::Relaxed);
        sh.kv_blocks_used.store(blocks.n_used(), Ordering::Relaxed);
        if self.sched.is_idle()
            || self
                .prefix_refreshed
                .is_none_or(|t| t.elapsed() >= PREFIX_REFRESH)
        {
            let hashes = blocks.cached_hashes(PREFIX_SUMMARY);
            *sh.prefix_hashes.lock().unwrap_or_else(|e| e.into_inner()) = hashes;
            let keys =
                self.affinity
                    .cached(|h| blocks.is_cached(h), Instant::now(), PREFIX_SUMMARY);
            *sh.affinity_keys.lock().unwrap_or_else(|e| e.into_inner()) = keys;
            *sh.start_returns.lock().unwrap_or_else(|e| e.into_inner()) = self.affinity.returns();
            let conversations =
                self.conversations
                    .cached(|h| blocks.is_cached(h), Instant::now(), PREFIX_SUMMARY);
            *sh.conversation_keys
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = conversations;
            self.prefix_refreshed = Some(Instant::now());
        }
    }

    /// Zero this model's gauges (its executor is going away).
    fn clear_gauges(&self) {
        for g in [
            names::RUNNING_SEQUENCES,
            names::WAITING_SEQUENCES,
            names::KV_BLOCKS_USED,
            names::KV_BLOCKS_CAPACITY,
        ] {
            metrics::gauge!(g, names::MODEL => self.name.clone()).set(0.0);
        }
        for a in [
            &self.shared.running,
            &self.shared.waiting,
            &self.shared.kv_blocks_used,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// Record what the scheduler decided and tell dropped streams why.
    fn note_schedule(&self, plan: &mut Schedule) {
        let m = || self.name.clone();
        for wait in &plan.admitted_after {
            metrics::histogram!(names::REQUEST_QUEUE_SECONDS, names::MODEL => m())
                .record(wait.as_secs_f64());
        }
        if plan.preempted > 0 {
            metrics::counter!(names::PREEMPTIONS, names::MODEL => m())
                .increment(plan.preempted as u64);
        }
        if plan.cancelled > 0 {
            metrics::counter!(names::CANCELLED_REQUESTS, names::MODEL => m())
                .increment(plan.cancelled as u64);
        }
        for s in plan.stalled.drain(..) {
            tracing::warn!(model = %self.name, generated = s.generated, "a stream's client stopped reading; cancelled");
            metrics::counter!(names::STALLED_STREAMS, names::MODEL => m()).increment(1);
            let _ = s.req.events.send(Event::Error(format!(
                "the stream was cancelled: its client read nothing for {} s",
                self.stall.as_secs_f64()
            )));
        }
    }

    /// One step; false when nothing could be computed.
    fn step(&mut self) -> bool {
        let mut plan = self.sched.schedule();
        self.note_schedule(&mut plan);
        self.publish();
        if plan.steps.is_empty() {
            return false;
        }
        self.forward(&plan);
        #[cfg(feature = "fault-injection")]
        if self.shared.fault.swap(false, Ordering::SeqCst) {
            panic!("injected fault (test only)");
        }
        let sampled = self.sample(&plan);
        let finished = self.sched.update_from_output(&plan, &sampled);
        // Published before the requests hear they are done, so a client
        // that asks for the node's load next sees them gone.
        self.publish();
        for f in finished {
            self.finish(f);
        }
        true
    }

    fn forward(&mut self, plan: &Schedule) {
        let inputs = self.sched.inputs(plan);
        self.model
            .forward_batch(&self.pool, self.simd, &inputs, &mut self.kv, &mut self.ws);
        metrics::histogram!(names::BATCH_SIZE, names::MODEL => self.name.clone())
            .record(plan.steps.len() as f64);
    }

    /// Sample each sequence that computed its last token from its row of
    /// logits, and send the token (its text, once a stop string can no
    /// longer swallow it) to the request. A sequence that verified a draft
    /// has a row for each of its positions: it samples them in order, as
    /// plain decoding would one step at a time, and goes on to the next
    /// row only while what it chose is the draft's next token. Every row
    /// it samples saw the context plain decoding gives it, and sampling
    /// (its penalties' history, its random draws, keyed by position)
    /// advances once per token chosen: each token comes from the model's
    /// distribution as in plain decoding. The logits of a step of several
    /// positions differ from a one-position step's in the last bits (as a
    /// batch's do), so greedy output is plain decoding's but for exact
    /// near-ties, and a sampled token can differ where the draw falls
    /// within that difference of a boundary.
    fn sample(&mut self, plan: &Schedule) -> Vec<Sampled> {
        let n_vocab = self.model.n_vocab();
        let tok = &self.tok;
        let mut out = Vec::new();
        let mut row = 0;
        for p in plan.steps.iter().filter(|p| p.samples) {
            let s = self.sched.seq_mut(p.seq);
            let rows = 1 + s.draft.len();
            let mut chosen = None;
            for j in 0..rows {
                let logits = &mut self.ws.logits[(row + j) * n_vocab..(row + j + 1) * n_vocab];
                let (id, stop) = emit(s, tok, &self.name, logits);
                if stop.is_some() || j + 1 == rows || s.draft[j] != id {
                    chosen = Some(Sampled {
                        accepted: j,
                        token: id,
                        stop,
                    });
                    break;
                }
            }
            if rows > 1 {
                let m = || self.name.clone();
                let accepted = chosen.map_or(0, |c| c.accepted);
                metrics::counter!(names::SPEC_DRAFT_TOKENS, names::MODEL => m())
                    .increment(s.draft.len() as u64);
                metrics::counter!(names::SPEC_ACCEPTED_TOKENS, names::MODEL => m())
                    .increment(accepted as u64);
                metrics::histogram!(names::SPEC_TOKENS_PER_STEP, names::MODEL => m())
                    .record((accepted + 1) as f64);
            }
            row += rows;
            out.push(chosen.expect("at least one row per sequence that samples"));
        }
        out
    }

    fn finish(&self, f: Finished) {
        let Finished {
            mut seq,
            reason,
            release,
        } = f;
        let mut text = String::new();
        if release {
            // Text held back for a stop string that never completed, and
            // any incomplete UTF-8.
            let tail = seq.dec.finish();
            text = seq.stop.finish();
            text.push_str(&tail);
        }
        let m = || self.name.clone();
        metrics::counter!(names::PROMPT_TOKENS, names::MODEL => m()).increment(seq.n_prompt as u64);
        metrics::counter!(names::GENERATION_TOKENS, names::MODEL => m())
            .increment(seq.generated as u64);
        metrics::histogram!(names::E2E_REQUEST_LATENCY, names::MODEL => m())
            .record(seq.req.arrived.elapsed().as_secs_f64());
        let usage = seq.usage();
        let _ = seq.req.events.send(Event::Done {
            text,
            finish: reason,
            usage,
        });
    }
}

/// Sample one token for `s` from `logits` and send it to the request;
/// returns it and whether it ends the sequence.
fn emit(s: &mut Seq, tok: &Tokenizer, model: &str, logits: &mut [f32]) -> (u32, Option<StopKind>) {
    if s.req.ignore_eos {
        for &e in tok.end_of_generation_ids() {
            logits[e as usize] = f32::NEG_INFINITY;
        }
    }
    let sampled = s.sampler.sample(logits);
    let id = sampled.token.id;
    let now = Instant::now();
    match s.last_token {
        None => {
            metrics::histogram!(names::TIME_TO_FIRST_TOKEN, names::MODEL => model.to_owned())
                .record((now - s.req.arrived).as_secs_f64());
        }
        Some(t) => {
            metrics::histogram!(names::INTER_TOKEN_LATENCY, names::MODEL => model.to_owned())
                .record((now - t).as_secs_f64());
        }
    }
    s.last_token = Some(now);
    let mut stop = None;
    let mut text = String::new();
    if !s.req.ignore_eos && tok.vocab.is_end_of_generation(id) {
        stop = Some(StopKind::EndOfGeneration);
    } else {
        match s.stop.push(&s.dec.push(tok, id)) {
            StopOutcome::Continue(t) => text = t,
            StopOutcome::Stop(t) => {
                text = t;
                stop = Some(StopKind::StopString);
            }
        }
    }
    let entry = |t: &TokenLogprob| {
        let mut bytes = Vec::new();
        tok.token_bytes(t.id, true, &mut bytes);
        LogprobEntry {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob: t.logprob,
        }
    };
    let _ = s.req.events.send(Event::Token(TokenOut {
        id,
        text,
        logprob: entry(&sampled.token),
        top: sampled.top.iter().map(entry).collect(),
    }));
    (id, stop)
}
