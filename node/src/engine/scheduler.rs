//! The continuous-batching scheduler, apart from any model: which sequences
//! run in the next step and how many of their tokens, which KV blocks they
//! use (reusing cached prefixes), who is preempted when the pool runs out,
//! and who is dropped because its client left. `schedule()` plans a step;
//! `update_from_output()` takes the step's sampled tokens and advances the
//! sequences (as vLLM v1 splits them), so the policy is tested on its own
//! with made-up tokens in place of a model.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::request::{FinishReason, GenRequest, Usage};
use crate::kv::{block_hash, prefix_hashes, BlockManager};
use crate::model::{Logits, SeqStep};
use crate::sampling::{Sampler, StopMatcher};
use crate::tokenizer::StreamDecoder;

/// The scheduler's limits.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub kv_blocks: usize,
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
    /// Most draft tokens verified per step for a decoding sequence that
    /// speculates (draft.rs); 0: no speculation.
    pub draft_max: usize,
}

/// Sequences in the running batch above which none speculates: a step of
/// many sequences already reads each weight once for all of them, and the
/// draft positions would add compute that then goes mostly unused
/// (`schedule()` also leaves guesses out while anyone waits or prefills).
pub const SPECULATE_MAX_BATCH: usize = 4;

/// A sequence: its request, its tokens, its place in the KV pool, and the
/// per-sequence state of sampling and text output.
pub struct Seq {
    pub req: GenRequest,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
    /// Positions whose keys and values are in the pool.
    pub n_computed: usize,
    /// KV blocks, in position order.
    pub table: Vec<u32>,
    /// Hashes of the blocks of `table` registered so far (full ones).
    hashes: Vec<u64>,
    cached_tokens: Option<usize>,
    pub sampler: Sampler,
    pub stop: StopMatcher,
    pub dec: StreamDecoder,
    pub generated: usize,
    pub last_token: Option<Instant>,
    admitted: bool,
    /// Since when its reader has left `stream_buffer` events untaken.
    paused_since: Option<Instant>,
    /// Tokens guessed to follow (draft.rs), verified in this step.
    pub draft: Vec<u32>,
    /// The step's input when it carries a draft: the last token, then it.
    step_tokens: Vec<u32>,
    /// How many to guess next: grows while guesses hold, shrinks to what
    /// held when one fails.
    draft_len: usize,
}

impl Seq {
    pub fn new(req: GenRequest) -> Self {
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
            last_token: None,
            admitted: false,
            paused_since: None,
            draft: Vec::new(),
            step_tokens: Vec::new(),
            draft_len: usize::MAX,
            req,
        }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.n_prompt,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens.unwrap_or(0),
        }
    }

    fn forget_blocks(&mut self) {
        self.table.clear();
        self.hashes.clear();
        self.n_computed = 0;
        self.draft.clear();
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// Index in the running batch.
    pub seq: usize,
    /// Tokens computed for it (a decode is 1; a prefill chunk more).
    pub n_tokens: usize,
    /// Whether this step computes its last token, so it samples.
    pub samples: bool,
}

/// What `schedule()` decided.
#[derive(Default)]
pub struct Schedule {
    pub steps: Vec<Scheduled>,
    /// Time in the queue of each sequence admitted for the first time.
    pub admitted_after: Vec<Duration>,
    /// Sequences sent back to the queue (their blocks freed) for lack of blocks.
    pub preempted: usize,
    /// Sequences dropped because their reader went away.
    pub cancelled: usize,
    /// Sequences dropped because their reader took nothing for `stall`.
    pub stalled: Vec<Seq>,
}

/// What sampling gave a sequence that `samples` in this step: the first
/// `accepted` tokens of its draft (sampling chose each of them), then
/// `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampled {
    pub accepted: usize,
    pub token: u32,
    /// Set when the token ends the sequence (end of generation, stop
    /// string); `release` says whether held-back text is released.
    pub stop: Option<StopKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// An end-of-generation token: the text held back is released.
    EndOfGeneration,
    /// A stop string matched: what follows it is dropped.
    StopString,
}

/// A sequence that ended in this step (its blocks already freed).
pub struct Finished {
    pub seq: Seq,
    pub reason: FinishReason,
    /// Whether text held back (an incomplete stop string or UTF-8) is sent.
    pub release: bool,
}

pub struct Scheduler {
    cfg: SchedConfig,
    blocks: BlockManager,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
}

impl Scheduler {
    pub fn new(cfg: SchedConfig) -> Self {
        Scheduler {
            blocks: BlockManager::new(cfg.kv_blocks),
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn add(&mut self, req: GenRequest) {
        self.waiting.push_back(Seq::new(req));
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    pub fn seq_mut(&mut self, i: usize) -> &mut Seq {
        &mut self.running[i]
    }

    /// Take every sequence out (running first), e.g. to fail them.
    pub fn drain(&mut self) -> (Vec<Seq>, Vec<Seq>) {
        for s in &self.running {
            self.blocks.release(&s.table);
        }
        for s in &self.waiting {
            self.blocks.release(&s.table);
        }
        (
            self.running.drain(..).collect(),
            self.waiting.drain(..).collect(),
        )
    }

    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.block_size)
    }

    fn preempt(&mut self, mut s: Seq, out: &mut Schedule) {
        self.blocks.release(&s.table);
        s.forget_blocks();
        out.preempted += 1;
        self.waiting.push_front(s);
    }

    /// Drop sequences whose client went away, or stopped reading for longer
    /// than `stall`, freeing their blocks.
    fn drop_cancelled(&mut self, out: &mut Schedule) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let stalled = s
                .paused_since
                .is_some_and(|t| t.elapsed() >= self.cfg.stall);
            if s.req.events.is_closed() || stalled {
                let s = self.running.remove(i);
                self.blocks.release(&s.table);
                if stalled && !s.req.events.is_closed() {
                    out.stalled.push(s);
                } else {
                    out.cancelled += 1;
                }
            } else {
                i += 1;
            }
        }
        let before = self.waiting.len();
        let blocks = &mut self.blocks;
        self.waiting.retain(|s| {
            let keep = !s.req.events.is_closed();
            if !keep {
                blocks.release(&s.table);
            }
            keep
        });
        out.cancelled += before - self.waiting.len();
    }

    /// Guess the draft a decoding sequence verifies in this step (none
    /// when it is not decoding, does not speculate, or nothing matches),
    /// within the step's budget, its `max_tokens` and the context.
    fn propose(&mut self, i: usize, budget: usize, speculate: bool) {
        let (draft_max, n_ctx) = (self.cfg.draft_max, self.cfg.n_ctx);
        let s = &mut self.running[i];
        s.draft.clear();
        if !speculate || !s.req.speculative || s.tokens.len() - s.n_computed != 1 {
            return;
        }
        let k = draft_max
            .min(s.draft_len)
            .min(budget.saturating_sub(1))
            .min(s.req.max_tokens.saturating_sub(s.generated + 1))
            .min(n_ctx.saturating_sub(s.tokens.len() + 1));
        super::draft::prompt_lookup(&s.tokens, k, &mut s.draft);
        if !s.draft.is_empty() {
            s.step_tokens.clear();
            s.step_tokens.push(s.tokens[s.tokens.len() - 1]);
            s.step_tokens.extend_from_slice(&s.draft);
        }
    }

    /// Plan the next step: drop cancelled sequences; give every running
    /// sequence blocks for its next chunk under the step's token budget,
    /// preempting the newest sequences when the pool runs out; then admit
    /// waiting sequences (reusing cached prefixes) while budget, batch and
    /// blocks last.
    pub fn schedule(&mut self) -> Schedule {
        let mut out = Schedule::default();
        self.drop_cancelled(&mut out);
        let bs = self.cfg.block_size;
        let mut budget = self.cfg.max_step_tokens;
        // Guesses only in a step of decodes that nobody waits behind: a
        // step that also prefills, or a queue, would wait for the extra
        // positions (time to first token), and a large batch already
        // reads each weight once for all its sequences.
        let speculate = self.running.len() <= SPECULATE_MAX_BATCH
            && self.waiting.is_empty()
            && self
                .running
                .iter()
                .all(|s| s.tokens.len() - s.n_computed <= 1);
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
            self.propose(i, budget, speculate);
            let s = &self.running[i];
            let n = (s.tokens.len() - s.n_computed + s.draft.len()).min(budget);
            let need = self.blocks_for(self.running[i].n_computed + n);
            let mut ok = true;
            while self.running[i].table.len() < need {
                if let Some(b) = self.blocks.allocate() {
                    self.running[i].table.push(b);
                } else if self.running.len() - 1 > i {
                    let victim = self.running.pop().expect("non-empty");
                    // The victim may have been planned already (it cannot:
                    // planning goes in order and the victim is after `i`).
                    self.preempt(victim, &mut out);
                } else {
                    ok = false;
                    break;
                }
            }
            if !ok {
                let s = self.running.remove(i);
                self.preempt(s, &mut out);
                break;
            }
            let s = &self.running[i];
            out.steps.push(Scheduled {
                seq: i,
                n_tokens: n,
                samples: s.n_computed + n >= s.tokens.len(),
            });
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
                s.forget_blocks();
                self.waiting.push_front(s);
                break;
            }
            for _ in 0..need {
                let b = self.blocks.allocate().expect("counted free blocks");
                s.table.push(b);
            }
            if !s.admitted {
                s.admitted = true;
                out.admitted_after.push(s.req.arrived.elapsed());
            }
            let samples = s.n_computed + n == s.tokens.len();
            self.running.push(s);
            out.steps.push(Scheduled {
                seq: self.running.len() - 1,
                n_tokens: n,
                samples,
            });
            budget -= n;
        }
        out
    }

    /// The model's input for a planned step, one entry per scheduled
    /// sequence, in order.
    pub fn inputs(&self, plan: &Schedule) -> Vec<SeqStep<'_>> {
        plan.steps
            .iter()
            .map(|p| {
                let s = &self.running[p.seq];
                let drafted = !s.draft.is_empty();
                SeqStep {
                    tokens: if drafted {
                        &s.step_tokens
                    } else {
                        &s.tokens[s.n_computed..s.n_computed + p.n_tokens]
                    },
                    pos0: s.n_computed,
                    table: &s.table,
                    // A draft's every position is checked against the
                    // token sampling chooses there.
                    logits: match (p.samples, drafted) {
                        (true, true) => Logits::All,
                        (true, false) => Logits::Last,
                        (false, _) => Logits::None,
                    },
                }
            })
            .collect()
    }

    /// Advance the sequences of a computed step: register the blocks it
    /// filled in the prefix cache, append each sampled token (`sampled` has
    /// one entry per scheduled sequence that `samples`, in order), and take
    /// out the sequences that ended (stopped, or at `max_tokens` or the
    /// context's end), freeing their blocks.
    pub fn update_from_output(&mut self, plan: &Schedule, sampled: &[Sampled]) -> Vec<Finished> {
        let bs = self.cfg.block_size;
        let mut next = sampled.iter();
        let mut ended = Vec::new();
        for p in &plan.steps {
            let s = &mut self.running[p.seq];
            let o = if p.samples {
                Some(
                    *next
                        .next()
                        .expect("one sampled token per sequence that samples"),
                )
            } else {
                None
            };
            match o {
                Some(o) if !s.draft.is_empty() => {
                    // The last token and the accepted drafts have their
                    // keys and values in the pool; the rest of the draft's
                    // positions are written over by later steps.
                    let accepted = o.accepted.min(s.draft.len());
                    s.tokens.extend_from_slice(&s.draft[..accepted]);
                    s.generated += accepted;
                    s.n_computed += 1 + accepted;
                    s.draft_len = if accepted == s.draft.len() {
                        s.draft.len().saturating_mul(2)
                    } else {
                        accepted + 1
                    };
                    s.draft.clear();
                }
                _ => s.n_computed += p.n_tokens,
            }
            while (s.hashes.len() + 1) * bs <= s.n_computed {
                let j = s.hashes.len();
                let h = block_hash(
                    s.hashes.last().copied().unwrap_or(0),
                    &s.tokens[j * bs..(j + 1) * bs],
                );
                self.blocks.register(s.table[j], h);
                s.hashes.push(h);
            }
            let Some(o) = o else {
                continue;
            };
            s.tokens.push(o.token);
            s.generated += 1;
            let end = match o.stop {
                Some(StopKind::EndOfGeneration) => Some((FinishReason::Stop, true)),
                Some(StopKind::StopString) => Some((FinishReason::Stop, false)),
                None if s.generated >= s.req.max_tokens || s.tokens.len() >= self.cfg.n_ctx => {
                    Some((FinishReason::Length, true))
                }
                None => None,
            };
            if let Some(e) = end {
                ended.push((p.seq, e));
            }
        }
        // Highest index first, so the others stay valid.
        ended.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        let mut finished = Vec::with_capacity(ended.len());
        for (i, (reason, release)) in ended {
            let seq = self.running.remove(i);
            self.blocks.release(&seq.table);
            finished.push(Finished {
                seq,
                reason,
                release,
            });
        }
        finished.reverse();
        finished
    }
}

#[cfg(test)]
mod tests;
