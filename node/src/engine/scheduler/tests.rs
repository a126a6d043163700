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
    let plan = s.schedule();
    let sampled: Vec<Sampled> = plan
        .steps
        .iter()
        .filter(|p| p.samples)
        .map(|p| Sampled {
            token: s.running[p.seq].tokens.last().copied().unwrap_or(0) + 1,
            stop: None,
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
                Sampled { token: 50, stop }
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
