//! The scheduler on a fake model: no weights, no forward pass. A "step" is
//! `schedule()`, then a made-up token for each sequence that samples, then
//! `update_from_output()`; the tests read the plans and the events.

use std::time::{Duration, Instant};

use super::*;
use crate::engine::request::{event_channel, Event, EventRx};
use crate::sampling::SamplingParams;

fn cfg(kv_blocks: usize) -> SchedConfig {
    SchedConfig {
        block_size: 4,
        kv_blocks,
        max_batch: 8,
        max_step_tokens: 64,
        n_ctx: 1024,
        stream_buffer: 1024,
        stall: Duration::from_secs(30),
        draft_max: 0,
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> (GenRequest, EventRx) {
    let (events, rx) = event_channel();
    (
        GenRequest {
            prompt,
            params: SamplingParams::greedy(),
            max_tokens,
            stop: Vec::new(),
            ignore_eos: false,
            speculative: false,
            fallback_seed: 0,
            events,
            arrived: Instant::now(),
            affinity: None,
        },
        rx,
    )
}

/// The fake model: the next token is the last one plus one.
fn fake_step(s: &mut Scheduler) -> (Schedule, Vec<Finished>) {
    fake_step_with(s, |t| t + 1)
}

/// A fake model whose next token is `next(previous token)`. A sequence
/// that verifies a draft samples its rows in order while they agree with
/// the draft, as the executor does.
fn fake_step_with(s: &mut Scheduler, next: impl Fn(u32) -> u32) -> (Schedule, Vec<Finished>) {
    let plan = s.schedule();
    let sampled: Vec<Sampled> = plan
        .steps
        .iter()
        .filter(|p| p.samples)
        .map(|p| {
            let q = &s.running[p.seq];
            let mut prev = q.tokens.last().copied().unwrap_or(0);
            let mut accepted = 0;
            while accepted < q.draft.len() && next(prev) == q.draft[accepted] {
                prev = q.draft[accepted];
                accepted += 1;
            }
            Sampled {
                accepted,
                token: next(prev),
                stop: None,
            }
        })
        .collect();
    let done = s.update_from_output(&plan, &sampled);
    (plan, done)
}

fn tokens_per_step(plan: &Schedule) -> Vec<usize> {
    plan.steps.iter().map(|p| p.n_tokens).collect()
}

#[test]
fn admission_is_first_come_and_bounded_by_the_batch() {
    let mut s = Scheduler::new(SchedConfig {
        max_batch: 2,
        ..cfg(64)
    });
    let mut rxs = Vec::new();
    for i in 0..3 {
        let (r, rx) = request(vec![10 * i + 1, 10 * i + 2], 4);
        s.add(r);
        rxs.push(rx);
    }
    let (plan, _) = fake_step(&mut s);
    assert_eq!(plan.steps.len(), 2, "two fit the batch");
    assert_eq!(plan.admitted_after.len(), 2);
    assert_eq!((s.n_running(), s.n_waiting()), (2, 1));
    // The first two are the first two submitted.
    assert_eq!(s.running[0].tokens[..2], [1, 2]);
    assert_eq!(s.running[1].tokens[..2], [11, 12]);
    // When they finish, the third gets in.
    let mut steps = 1;
    while s.n_waiting() > 0 && steps < 10 {
        fake_step(&mut s);
        steps += 1;
    }
    assert_eq!(s.n_waiting(), 0);
    assert_eq!(s.running[0].tokens[..2], [21, 22]);
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_beside_decodes() {
    let mut s = Scheduler::new(SchedConfig {
        max_step_tokens: 16,
        ..cfg(64)
    });
    let (short, _rx1) = request(vec![1, 2, 3], 8);
    s.add(short);
    let (plan, _) = fake_step(&mut s);
    assert_eq!(tokens_per_step(&plan), [3]);
    let (long, _rx2) = request((100..140).collect(), 4);
    s.add(long);
    // Each step: one decode for the short one, the budget's rest for the long one.
    let mut chunks = Vec::new();
    loop {
        let (plan, _) = fake_step(&mut s);
        assert!(plan.steps.iter().map(|p| p.n_tokens).sum::<usize>() <= 16);
        assert_eq!(plan.steps[0].n_tokens, 1, "the decode is never starved");
        let long = plan.steps[1];
        chunks.push(long.n_tokens);
        if long.samples {
            break;
        }
    }
    assert_eq!(chunks, [15, 15, 10]);
    assert_eq!(s.running[1].n_computed, 40);
    assert_eq!(s.running[1].generated, 1);
}

#[test]
fn when_blocks_run_out_the_newest_is_preempted_and_recomputed() {
    // 6 blocks of 4 positions: two sequences of 9 prompt tokens need 3
    // blocks each to start, and a fourth block each once they pass 12.
    let mut s = Scheduler::new(cfg(6));
    let (a, _ra) = request((1..=9).collect(), 8);
    let (b, _rb) = request((101..=109).collect(), 8);
    s.add(a);
    s.add(b);
    let (plan, _) = fake_step(&mut s);
    assert_eq!(tokens_per_step(&plan), [9, 9]);
    assert_eq!(s.blocks().n_free(), 0);
    let mut preempted = 0;
    for _ in 0..4 {
        preempted += fake_step(&mut s).0.preempted;
    }
    assert_eq!(preempted, 1, "b gave its blocks to a");
    assert_eq!(s.running[0].tokens[0], 1);
    // b waits with its generated tokens and starts over from position 0.
    let b = &s.waiting[0];
    assert_eq!((b.tokens[0], b.n_computed, b.table.len()), (101, 0, 0));
    assert!(b.generated > 0);
    // a finishes; b is readmitted and recomputes its prompt and its tokens.
    let mut finished = Vec::new();
    for _ in 0..40 {
        let (_, done) = fake_step(&mut s);
        finished.extend(done.into_iter().map(|f| f.seq.tokens[0]));
        if s.is_idle() {
            break;
        }
    }
    assert_eq!(finished, [1, 101]);
    assert_eq!(s.blocks().n_used(), 0, "every block came back");
}

#[test]
fn a_cancelled_sequence_is_dropped_and_its_blocks_freed() {
    let mut s = Scheduler::new(cfg(16));
    let (a, ra) = request((1..=8).collect(), 100);
    let (b, _rb) = request((11..=18).collect(), 100);
    let (c, rc) = request((21..=28).collect(), 100);
    s.add(a);
    s.add(b);
    fake_step(&mut s);
    s.add(c);
    let used = s.blocks().n_used();
    drop(ra); // the client of a goes away
    drop(rc); // c's leaves before it is admitted
    let (plan, _) = fake_step(&mut s);
    assert_eq!(plan.cancelled, 2);
    assert_eq!(s.n_running(), 1);
    assert_eq!(s.running[0].tokens[0], 11);
    assert!(s.blocks().n_used() < used);
}

#[test]
fn a_reader_that_stops_reading_pauses_its_sequence_then_cancels_it() {
    let mut s = Scheduler::new(SchedConfig {
        stream_buffer: 3,
        stall: Duration::from_millis(50),
        ..cfg(16)
    });
    let (a, mut ra) = request(vec![1, 2], 100);
    s.add(a);
    // The fake executor sends one event per token; nobody reads them.
    for _ in 0..6 {
        let (plan, _) = fake_step(&mut s);
        for p in plan.steps.iter().filter(|p| p.samples) {
            s.running[p.seq]
                .req
                .events
                .send(Event::Error(String::new()));
        }
    }
    assert_eq!(
        s.running[0].generated, 3,
        "paused after three unread events"
    );
    let (plan, _) = fake_step(&mut s);
    assert!(plan.steps.is_empty() && plan.stalled.is_empty());
    // Reading lets it go on.
    while ra.try_recv().is_some() {}
    let (plan, _) = fake_step(&mut s);
    assert_eq!(plan.steps.len(), 1);
    s.running[0].req.events.send(Event::Error(String::new()));
    s.running[0].req.events.send(Event::Error(String::new()));
    s.running[0].req.events.send(Event::Error(String::new()));
    fake_step(&mut s);
    std::thread::sleep(Duration::from_millis(60));
    let (plan, _) = fake_step(&mut s);
    assert_eq!(plan.stalled.len(), 1, "cancelled after `stall` unread");
    assert!(s.is_idle());
    assert_eq!(s.blocks().n_used(), 0);
}

#[test]
fn a_repeated_prefix_comes_from_the_cache() {
    let mut s = Scheduler::new(cfg(32));
    let prompt: Vec<u32> = (1..=13).collect(); // 3 full blocks + 1
    let (a, _ra) = request(prompt.clone(), 1);
    s.add(a);
    let (_, done) = fake_step(&mut s);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].seq.usage().cached_tokens, 0);
    // Same first 12 tokens, another ending: the 3 full blocks are reused.
    let mut p2 = prompt[..12].to_vec();
    p2.extend([99, 98]);
    let (b, _rb) = request(p2, 1);
    s.add(b);
    let (plan, done) = fake_step(&mut s);
    assert_eq!(tokens_per_step(&plan), [2], "only the new tail is computed");
    assert_eq!(done[0].seq.usage().cached_tokens, 12);
    // A prompt that differs in the first block shares nothing.
    let mut p3 = prompt.clone();
    p3[0] = 77;
    let (c, _rc) = request(p3, 1);
    s.add(c);
    let (plan, _) = fake_step(&mut s);
    assert_eq!(tokens_per_step(&plan), [13]);
}

#[test]
fn sequences_end_at_max_tokens_at_the_context_and_on_a_stop() {
    let mut s = Scheduler::new(SchedConfig {
        n_ctx: 8,
        ..cfg(16)
    });
    let (a, _ra) = request(vec![1, 2], 3);
    let (b, _rb) = request(vec![1, 2, 3, 4, 5], 100);
    let (c, _rc) = request(vec![9], 100);
    s.add(a);
    s.add(b);
    s.add(c);
    let mut ended = Vec::new();
    for step in 0..10 {
        let plan = s.schedule();
        let sampled: Vec<Sampled> = plan
            .steps
            .iter()
            .filter(|p| p.samples)
            .map(|p| {
                let q = &s.running[p.seq];
                let stop = (q.tokens[0] == 9 && step == 1).then_some(StopKind::StopString);
                Sampled {
                    accepted: 0,
                    token: 50,
                    stop,
                }
            })
            .collect();
        for f in s.update_from_output(&plan, &sampled) {
            ended.push((f.seq.tokens[0], f.seq.generated, f.reason, f.release));
        }
    }
    ended.sort_by_key(|e| e.0);
    assert_eq!(
        ended,
        [
            (1, 3, FinishReason::Length, true), // max_tokens
            (1, 3, FinishReason::Length, true), // 5 + 3 = n_ctx
            (9, 2, FinishReason::Stop, false),  // stop string, text dropped
        ]
    );
    assert!(s.is_idle());
}

/// Run `prompt` to its end with speculation on or off; the tokens it
/// generated and the tokens each step computed for it.
fn run_speculating(
    prompt: Vec<u32>,
    max_tokens: usize,
    draft_max: usize,
    next: impl Fn(u32) -> u32 + Copy,
) -> (Vec<u32>, Vec<usize>) {
    let mut s = Scheduler::new(SchedConfig {
        draft_max,
        ..cfg(64)
    });
    let (mut r, _rx) = request(prompt, max_tokens);
    r.speculative = true;
    s.add(r);
    let mut steps = Vec::new();
    for _ in 0..100 {
        let (plan, done) = fake_step_with(&mut s, next);
        steps.extend(tokens_per_step(&plan));
        if let Some(f) = done.into_iter().next() {
            assert_eq!(f.seq.generated, max_tokens);
            return (f.seq.tokens[f.seq.n_prompt..].to_vec(), steps);
        }
        let q = &s.running[0];
        // Every position but the last token's has its keys and values.
        assert_eq!(q.n_computed + 1, q.tokens.len());
        assert_eq!(q.hashes.len(), q.n_computed / 4);
    }
    panic!("did not finish");
}

#[test]
fn a_sequence_that_repeats_itself_takes_several_tokens_a_step_and_the_same_ones() {
    // A cycle of five: once the prompt holds it, every draft is right.
    let cycle = |t: u32| t % 5 + 1;
    let prompt = vec![1, 2, 3, 4, 5, 1, 2];
    let (plain, plain_steps) = run_speculating(prompt.clone(), 20, 0, cycle);
    let (fast, fast_steps) = run_speculating(prompt, 20, 8, cycle);
    assert_eq!(fast, plain);
    assert_eq!(plain_steps.len(), 20, "one token a step");
    // The prompt, then drafts as long as there is text to copy from
    // (5, then 8 and 8 a step at most), within `max_tokens`.
    assert!(fast_steps.len() <= 6, "{fast_steps:?}");
    assert!(fast_steps[1..].iter().any(|&n| n > 5), "{fast_steps:?}");
}

#[test]
fn a_wrong_guess_keeps_what_held_and_recomputes_the_rest() {
    // The text counts up; the prompt once went 1 2 3 4 9, so once 1 2 3
    // is out the guess is 4 9 10 1 (four: `max_tokens` leaves room for
    // five more): 4 holds, 9 does not (5 comes).
    let up = |t: u32| t + 1;
    let prompt = vec![1, 2, 3, 4, 9, 10, 1, 2];
    let (plain, _) = run_speculating(prompt.clone(), 6, 0, up);
    let (fast, steps) = run_speculating(prompt, 6, 8, up);
    assert_eq!(fast, plain);
    assert_eq!(fast, [3, 4, 5, 6, 7, 8]);
    // The prompt (3 comes out); 3 and the draft (4 and 5 come out, and
    // the positions of 3 and 4 are kept); then plain steps, as nothing
    // more matches.
    assert_eq!(steps, [8, 5, 1, 1, 1]);
}

#[test]
fn no_drafts_when_off_for_the_request_or_the_batch_is_large() {
    let cycle = |t: u32| t % 5 + 1;
    let mut s = Scheduler::new(SchedConfig {
        draft_max: 8,
        ..cfg(64)
    });
    let mut rxs = Vec::new();
    for i in 0..=SPECULATE_MAX_BATCH {
        let (mut r, rx) = request(vec![1, 2, 3, 4, 5, 1, 2], 10);
        r.speculative = i != 0;
        s.add(r);
        rxs.push(rx);
    }
    // Prompts being prefilled: nobody speculates in that step.
    let (plan, _) = fake_step_with(&mut s, cycle);
    assert!(plan.steps.iter().all(|p| p.n_tokens == 7));
    // Five running: nobody speculates.
    let (plan, _) = fake_step_with(&mut s, cycle);
    assert!(plan.steps.iter().all(|p| p.n_tokens == 1));
    drop(rxs.pop());
    drop(rxs.pop());
    // Three running: the two that asked for it do, the first does not.
    let (plan, _) = fake_step_with(&mut s, cycle);
    assert_eq!(plan.steps.len(), 3);
    assert_eq!(plan.steps[0].n_tokens, 1);
    assert!(plan.steps[1..].iter().all(|p| p.n_tokens > 1));
}

#[test]
fn drafts_on_a_model_that_reads_its_whole_context_change_nothing() {
    // The fake model's next token depends on every position's token as
    // the "pool" holds it (written by each step at its positions), over a
    // vocabulary of three, so guesses are often made and often wrong.
    fn next(ctx: &[u32]) -> u32 {
        let h = ctx.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
            (h ^ t as u64).wrapping_mul(0x100_0000_01b3)
        });
        (h >> 33) as u32 % 3 + 1
    }
    let run = |draft_max: usize, seed: u32| {
        let mut s = Scheduler::new(SchedConfig {
            draft_max,
            ..cfg(64)
        });
        let (mut r, _rx) = request(vec![1, 2, 3, 1, 2, seed], 60);
        r.speculative = true;
        s.add(r);
        let mut kv: Vec<u32> = Vec::new();
        for _ in 0..200 {
            let plan = s.schedule();
            let sampled: Vec<Sampled> = {
                let inputs = s.inputs(&plan);
                let step = &inputs[0];
                kv.resize(step.pos0, 0);
                kv.extend_from_slice(step.tokens);
                let q = &s.running[0];
                if !plan.steps[0].samples {
                    Vec::new()
                } else {
                    // Row j is the position pos0 + j.
                    let first = step.pos0 + step.tokens.len() - 1 - q.draft.len();
                    let mut accepted = 0;
                    loop {
                        let id = next(&kv[..=first + accepted]);
                        if accepted == q.draft.len() || q.draft[accepted] != id {
                            break vec![Sampled {
                                accepted,
                                token: id,
                                stop: None,
                            }];
                        }
                        accepted += 1;
                    }
                }
            };
            let done = s.update_from_output(&plan, &sampled);
            if let Some(f) = done.into_iter().next() {
                return f.seq.tokens;
            }
            let q = &s.running[0];
            assert_eq!(kv[..q.n_computed], q.tokens[..q.n_computed]);
        }
        panic!("did not finish");
    };
    let mut drafted = 0;
    for seed in 1..=3 {
        let plain = run(0, seed);
        assert_eq!(run(8, seed), plain, "seed {seed}");
        drafted += plain.len();
    }
    assert!(drafted > 0);
}

#[test]
fn no_drafts_while_a_request_waits_or_a_prompt_is_prefilled() {
    let cycle = |t: u32| t % 5 + 1;
    let mut s = Scheduler::new(SchedConfig {
        draft_max: 8,
        max_step_tokens: 12,
        ..cfg(64)
    });
    let (mut r, _ra) = request(vec![1, 2, 3, 4, 5, 1, 2], 30);
    r.speculative = true;
    s.add(r);
    fake_step_with(&mut s, cycle);
    // A long prompt arrives: while it is prefilled in chunks, the decode
    // beside it takes one token a step.
    let (long, _rb) = request((100..130).collect(), 4);
    s.add(long);
    let mut steps = Vec::new();
    loop {
        let (plan, _) = fake_step_with(&mut s, cycle);
        steps.push(tokens_per_step(&plan));
        if plan.steps.len() == 2 && plan.steps[1].samples {
            break;
        }
    }
    assert!(steps.iter().all(|p| p[0] == 1), "{steps:?}");
    // Then both decode, and the first guesses again.
    let (plan, _) = fake_step_with(&mut s, cycle);
    assert!(plan.steps[0].n_tokens > 1, "{:?}", tokens_per_step(&plan));
}
