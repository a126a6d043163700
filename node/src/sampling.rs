//! Logits → token: greedy, temperature, top-k, top-p, min-p, repetition /
//! presence / frequency penalties, logit bias, seeded randomness, and
//! logprobs with top-N alternatives. Stop strings are matched by
//! [`StopMatcher`], also across token boundaries.

use std::collections::HashMap;

/// Sampling parameters of one request (OpenAI / llama.cpp names).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    /// 1.0 means no limit.
    pub top_p: f32,
    /// 0.0 means off.
    pub min_p: f32,
    /// 1.0 means off (llama.cpp's repeat_penalty).
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at (0: all).
    pub penalty_last_n: usize,
    pub logit_bias: HashMap<u32, f32>,
    pub seed: Option<u64>,
    /// Alternatives to report with each token's logprob (0: none).
    pub top_logprobs: usize,
    /// Report the chosen token's logprob. Computing it costs a pass of
    /// `exp` over the whole vocabulary per token, so it is off unless asked
    /// for (or implied by `top_logprobs > 0`); when off the logprob is NaN.
    pub logprobs: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: HashMap::new(),
            seed: None,
            top_logprobs: 0,
            logprobs: false,
        }
    }
}

/// A parameter outside its domain: names it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid value for `{param}`: {why}")]
pub struct InvalidParam {
    pub param: &'static str,
    pub why: String,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Check every field; the error names the offending parameter.
    pub fn validate(&self, n_vocab: usize) -> Result<(), InvalidParam> {
        let bad = |param, why: String| Err(InvalidParam { param, why });
        if !(0.0..=2.0).contains(&self.temperature) || self.temperature.is_nan() {
            return bad(
                "temperature",
                format!("{} is not in [0, 2]", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) || self.min_p.is_nan() {
            return bad("min_p", format!("{} is not in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                format!("{} must be a positive number", self.repetition_penalty),
            );
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) || self.presence_penalty.is_nan() {
            return bad(
                "presence_penalty",
                format!("{} is not in [-2, 2]", self.presence_penalty),
            );
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) || self.frequency_penalty.is_nan() {
            return bad(
                "frequency_penalty",
                format!("{} is not in [-2, 2]", self.frequency_penalty),
            );
        }
        if self.top_logprobs > 20 {
            return bad(
                "top_logprobs",
                format!("{} is more than 20", self.top_logprobs),
            );
        }
        for (&id, &b) in &self.logit_bias {
            if id as usize >= n_vocab {
                return bad(
                    "logit_bias",
                    format!("token {id} is outside the vocabulary of {n_vocab}"),
                );
            }
            if !(-100.0..=100.0).contains(&b) || b.is_nan() {
                return bad(
                    "logit_bias",
                    format!("bias {b} for token {id} is not in [-100, 100]"),
                );
            }
        }
        Ok(())
    }
}

/// A token with its log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// The chosen token, its logprob and the top alternatives (from the
/// distribution after penalties and bias, before temperature and truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// SplitMix64: small, fast, and fixed for a given seed.
pub use realizar_shared::hash::SplitMix as Rng;

/// Per-sequence sampler state: the parameters, the RNG and the history the
/// penalties look at.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    seed: u64,
    history: Vec<u32>,
}

impl Sampler {
    /// `fallback_seed` is used when the request gives none (callers pass
    /// something unique per request).
    pub fn new(params: SamplingParams, fallback_seed: u64) -> Self {
        let seed = params.seed.unwrap_or(fallback_seed);
        Sampler {
            params,
            seed,
            history: Vec::new(),
        }
    }

    /// Tokens already in the sequence (the prompt), for the penalties.
    pub fn with_history(mut self, tokens: &[u32]) -> Self {
        self.history.extend_from_slice(tokens);
        self
    }

    /// Record a token chosen outside `sample` (e.g. forced).
    pub fn accept(&mut self, id: u32) {
        self.history.push(id);
    }

    /// Choose the next token from `logits` (modified in place) and record it.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        let p = &self.params;
        // Penalties over the recent window, llama.cpp's order: repetition, then frequency/presence.
        if p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let start = if p.penalty_last_n == 0 {
                0
            } else {
                self.history.len().saturating_sub(p.penalty_last_n)
            };
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in &self.history[start..] {
                *counts.entry(t).or_insert(0) += 1;
            }
            for (&t, &n) in &counts {
                let Some(l) = logits.get_mut(t as usize) else {
                    continue;
                };
                if *l > 0.0 {
                    *l /= p.repetition_penalty;
                } else {
                    *l *= p.repetition_penalty;
                }
                *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        for (&t, &b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        let (want, n_top) = (p.logprobs || p.top_logprobs > 0, p.top_logprobs);
        let id = if p.temperature == 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        self.history.push(id);
        if !want {
            return Sampled {
                token: TokenLogprob {
                    id,
                    logprob: f32::NAN,
                },
                top: Vec::new(),
            };
        }
        let logprobs = log_softmax(logits);
        Sampled {
            token: TokenLogprob {
                id,
                logprob: logprobs[id as usize],
            },
            top: top_n(&logprobs, n_top),
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        // Candidates sorted by logit; top-k, then softmax at temperature, top-p, min-p.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        let k = if p.top_k == 0 {
            cand.len()
        } else {
            p.top_k.min(cand.len())
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            cand.truncate(k);
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| (((l - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        // The token's position in the sequence keys the draw.
        let mut r = Rng::at(self.seed, self.history.len() as u64).next_f64() * total;
        for (i, &q) in probs[..keep].iter().enumerate() {
            if r < q {
                return cand[i].0;
            }
            r -= q;
        }
        cand[keep - 1].0
    }
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural-log softmax in f64 for stability, returned as f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

fn top_n(logprobs: &[f32], n: usize) -> Vec<TokenLogprob> {
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..logprobs.len() as u32).collect();
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n - 1, |&a, &b| {
        logprobs[b as usize]
            .total_cmp(&logprobs[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(n);
    idx.sort_by(|&a, &b| {
        logprobs[b as usize]
            .total_cmp(&logprobs[a as usize])
            .then(a.cmp(&b))
    });
    idx.into_iter()
        .map(|id| TokenLogprob {
            id,
            logprob: logprobs[id as usize],
        })
        .collect()
}

/// Finds stop strings in streamed text, also when a stop string spans
/// several tokens: text that could still become a stop string is held back.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to emit after feeding a piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Emit this text and go on.
    Continue(String),
    /// A stop string matched: emit this text (before the match) and stop.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..pos].to_owned();
            self.held.clear();
            return StopOutcome::Stop(out);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if s.starts_with(suffix) {
                    keep = keep.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Text still held back at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 2.5]
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_logprobs() {
        let mut s = Sampler::new(
            SamplingParams {
                top_logprobs: 3,
                ..SamplingParams::greedy()
            },
            0,
        );
        let r = s.sample(&mut logits());
        assert_eq!(r.token.id, 1);
        assert_eq!(r.top.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 4, 2]);
        let total: f32 = log_softmax(&logits()).iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((r.token.logprob - log_softmax(&logits())[1]).abs() < 1e-7);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let p = SamplingParams {
            temperature: 1.5,
            seed: Some(42),
            ..Default::default()
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone(), 0);
            (0..200)
                .map(|_| s.sample(&mut logits()).token.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&p), run(&p));
        assert_ne!(
            run(&p),
            run(&SamplingParams {
                seed: Some(43),
                ..p.clone()
            })
        );
    }

    #[test]
    fn a_sequence_resumed_from_its_tokens_draws_what_it_would_have() {
        let p = SamplingParams {
            temperature: 1.5,
            seed: Some(7),
            presence_penalty: 0.5,
            ..Default::default()
        };
        let prompt = [1u32, 2, 3];
        let mut first = Sampler::new(p.clone(), 0).with_history(&prompt);
        let all: Vec<u32> = (0..60)
            .map(|_| first.sample(&mut logits()).token.id)
            .collect();
        // Resumed after 25 tokens: prompt and those 25 as its history.
        let mut so_far = prompt.to_vec();
        so_far.extend_from_slice(&all[..25]);
        let mut resumed = Sampler::new(p, 99).with_history(&so_far);
        let rest: Vec<u32> = (0..35)
            .map(|_| resumed.sample(&mut logits()).token.id)
            .collect();
        assert_eq!(rest, all[25..]);
    }

    #[test]
    fn top_k_1_and_tiny_top_p_are_greedy() {
        for p in [
            SamplingParams {
                temperature: 2.0,
                top_k: 1,
                seed: Some(1),
                ..Default::default()
            },
            SamplingParams {
                temperature: 2.0,
                top_p: 1e-6,
                seed: Some(1),
                ..Default::default()
            },
            SamplingParams {
                temperature: 2.0,
                min_p: 0.99,
                seed: Some(1),
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(p, 0);
            for _ in 0..50 {
                assert_eq!(s.sample(&mut logits()).token.id, 1);
            }
        }
    }

    #[test]
    fn top_k_limits_the_candidates() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 5.0,
                top_k: 2,
                seed: Some(9),
                ..Default::default()
            },
            0,
        );
        let seen: std::collections::BTreeSet<u32> =
            (0..500).map(|_| s.sample(&mut logits()).token.id).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 4]);
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                seed: Some(5),
                ..Default::default()
            },
            0,
        );
        let mut counts = [0usize; 5];
        let n = 20000;
        for _ in 0..n {
            counts[s.sample(&mut logits()).token.id as usize] += 1;
        }
        let probs: Vec<f32> = log_softmax(&logits()).iter().map(|l| l.exp()).collect();
        for i in 0..5 {
            let f = counts[i] as f32 / n as f32;
            assert!(
                (f - probs[i]).abs() < 0.015,
                "token {i}: {f} vs {}",
                probs[i]
            );
        }
    }

    #[test]
    fn logit_bias_and_penalties_change_the_choice() {
        let mut bias = HashMap::new();
        bias.insert(3u32, 100.0);
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: bias,
                ..SamplingParams::greedy()
            },
            0,
        );
        assert_eq!(s.sample(&mut logits()).token.id, 3);

        // Token 1 repeated in the history loses to token 4.
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 0.4,
                ..SamplingParams::greedy()
            },
            0,
        )
        .with_history(&[1, 1]);
        assert_eq!(s.sample(&mut logits()).token.id, 4);
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 1.5,
                ..SamplingParams::greedy()
            },
            0,
        )
        .with_history(&[1]);
        assert_eq!(s.sample(&mut logits()).token.id, 4);
        let mut s = Sampler::new(
            SamplingParams {
                presence_penalty: 0.6,
                ..SamplingParams::greedy()
            },
            0,
        )
        .with_history(&[1]);
        assert_eq!(s.sample(&mut logits()).token.id, 4);
    }

    #[test]
    fn invalid_parameters_are_named() {
        let v = |p: SamplingParams| p.validate(10).unwrap_err().param;
        assert_eq!(
            v(SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }),
            "temperature"
        );
        assert_eq!(
            v(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }),
            "top_p"
        );
        assert_eq!(
            v(SamplingParams {
                min_p: 2.0,
                ..Default::default()
            }),
            "min_p"
        );
        assert_eq!(
            v(SamplingParams {
                presence_penalty: 3.0,
                ..Default::default()
            }),
            "presence_penalty"
        );
        assert_eq!(
            v(SamplingParams {
                top_logprobs: 21,
                ..Default::default()
            }),
            "top_logprobs"
        );
        let mut bias = HashMap::new();
        bias.insert(10u32, 1.0);
        assert_eq!(
            v(SamplingParams {
                logit_bias: bias,
                ..Default::default()
            }),
            "logit_bias"
        );
        assert!(SamplingParams::default().validate(10).is_ok());
    }

    #[test]
    fn stop_strings_across_token_boundaries() {
        let mut m = StopMatcher::new(vec!["</end>".into(), "STOP".into()]);
        assert_eq!(m.push("Hello </"), StopOutcome::Continue("Hello ".into()));
        assert_eq!(m.push("en"), StopOutcome::Continue("".into()));
        assert_eq!(m.push("d> tail"), StopOutcome::Stop("".into()));
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("aST"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("x"), StopOutcome::Continue("STx".into()));
        assert_eq!(m.push("wordSTOPmore"), StopOutcome::Stop("word".into()));
        let mut m = StopMatcher::new(vec!["zz".into()]);
        assert_eq!(m.push("abz"), StopOutcome::Continue("ab".into()));
        assert_eq!(m.finish(), "z");
    }
}
