//! The simulator's workload: many tenants, each with a system prompt its
//! users share, multi-turn conversations whose every turn resends the
//! history, and models whose popularity follows Zipf's law. Prompts are
//! lists of chained block hashes (16 tokens a block, as the node's prefix
//! cache keys them), so two prompts share a cached prefix exactly when
//! their leading blocks are equal.

use crate::hash;

/// Tokens per KV block.
pub const BLOCK: u32 = 16;

/// A small, seedable generator (SplitMix64): the trace is a pure function
/// of its seed.
#[derive(Debug, Clone)]
pub struct Rng(hash::SplitMix);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(hash::SplitMix::new(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }
    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }
    /// Exponential with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// A distribution over `n` items given their weights; `zipf` gives item k
/// (from 0) the weight 1/(k+1)^s.
#[derive(Debug, Clone)]
pub struct Weighted {
    cdf: Vec<f64>,
}

impl Weighted {
    pub fn zipf(n: usize, s: f64) -> Self {
        let w: Vec<f64> = (0..n).map(|k| 1.0 / ((k + 1) as f64).powf(s)).collect();
        Weighted::new(&w)
    }

    pub fn new(weights: &[f64]) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Weighted { cdf }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }
    pub fn share(&self, k: usize) -> f64 {
        self.cdf[k] - if k == 0 { 0.0 } else { self.cdf[k - 1] }
    }
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// The shape of a workload (model popularity is given apart).
#[derive(Debug, Clone)]
pub struct Shape {
    /// Tenants across all models (each model gets its popularity's share,
    /// at least one).
    pub tenants: usize,
    /// System prompt length per tenant, in blocks (uniform).
    pub system_blocks: (u32, u32),
    /// Turns per conversation (uniform).
    pub turns: (u32, u32),
    /// A turn's user message, in blocks (uniform).
    pub message_blocks: (u32, u32),
    /// A turn's answer, in tokens (uniform).
    pub output_tokens: (u32, u32),
    /// Mean seconds between a conversation's turns (exponential).
    pub think_seconds: f64,
    /// Seconds during which conversations start.
    pub seconds: f64,
}

impl Shape {
    /// The default workload for a cluster of `nodes`: four tenants per
    /// node.
    pub fn for_nodes(nodes: usize) -> Self {
        Shape {
            tenants: 4 * nodes,
            system_blocks: (16, 64),
            turns: (1, 6),
            message_blocks: (2, 10),
            output_tokens: (32, 256),
            think_seconds: 15.0,
            seconds: 120.0,
        }
    }
}

/// One request as the gateway receives it.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: f64,
    pub model: u32,
    /// The OpenAI `user` field: the conversation, for tenants whose apps
    /// send it (half of them); None for the rest.
    pub user: Option<u64>,
    pub tenant: u32,
    /// The prompt's chained block hashes.
    pub prompt: Vec<u64>,
    /// Blocks of it that were the conversation's previous prompt (0 on
    /// its first turn): a chat request's messages up to its last
    /// assistant turn.
    pub previous: usize,
    pub output_tokens: u32,
    /// The answer's blocks, chained on from the prompt (what the next turn
    /// of the conversation resends).
    pub output: Vec<u64>,
}

/// Chain `n` new blocks onto `from` (its last hash), content from `salt`.
fn extend(v: &mut Vec<u64>, salt: u64, n: u32) {
    for i in 0..n {
        let prev = v.last().copied().unwrap_or(0x5eed);
        v.push(hash::pair(prev, hash::mix(salt ^ (u64::from(i) << 40))));
    }
}

/// The trace, sorted by arrival: conversations start as a Poisson process
/// at `conversations_per_second`, each for a model drawn from `popularity`.
pub fn generate(
    shape: &Shape,
    popularity: &Weighted,
    conversations_per_second: f64,
    seed: u64,
) -> Vec<Request> {
    let mut rng = Rng::new(seed);
    let zipf = popularity;
    // Tenants per model, by popularity; each with its system prompt.
    let mut tenants: Vec<Vec<(u32, Vec<u64>)>> = Vec::with_capacity(zipf.len());
    let mut next_tenant = 0u32;
    for m in 0..zipf.len() {
        let n = ((zipf.share(m) * shape.tenants as f64).round() as usize).max(1);
        let mut ts = Vec::with_capacity(n);
        for _ in 0..n {
            let mut sys = Vec::new();
            let len = rng.range(shape.system_blocks.0, shape.system_blocks.1);
            extend(
                &mut sys,
                hash::mix(0x7e4a_0000 ^ u64::from(next_tenant)),
                len,
            );
            ts.push((next_tenant, sys));
            next_tenant += 1;
        }
        tenants.push(ts);
    }
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut conv = 0u64;
    loop {
        t += rng.exp(1.0 / conversations_per_second);
        if t >= shape.seconds {
            break;
        }
        conv += 1;
        let model = zipf.sample(&mut rng);
        let ts = &tenants[model];
        let (tenant, sys) = &ts[(rng.next_u64() % ts.len() as u64) as usize];
        let user = (tenant % 2 == 0).then_some(conv);
        let mut history = sys.clone();
        let mut at = t;
        let mut previous = 0;
        for turn in 0..rng.range(shape.turns.0, shape.turns.1) {
            let msg = rng.range(shape.message_blocks.0, shape.message_blocks.1);
            extend(&mut history, hash::mix(conv ^ (u64::from(turn) << 48)), msg);
            let output_tokens = rng.range(shape.output_tokens.0, shape.output_tokens.1);
            let mut answer = history.clone();
            extend(
                &mut answer,
                hash::mix(!conv ^ (u64::from(turn) << 48)),
                output_tokens / BLOCK,
            );
            let output = answer[history.len()..].to_vec();
            out.push(Request {
                at,
                model: model as u32,
                user,
                tenant: *tenant,
                prompt: history.clone(),
                previous,
                output_tokens,
                output: output.clone(),
            });
            previous = history.len();
            history = answer;
            at += rng.exp(shape.think_seconds);
        }
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_resend_the_history_and_tenants_share_their_system_prompt() {
        let mut shape = Shape::for_nodes(10);
        shape.seconds = 30.0;
        let popularity = Weighted::zipf(3, 1.0);
        let trace = generate(&shape, &popularity, 2.0, 7);
        assert!(trace.len() > 100, "{}", trace.len());
        assert!(trace.windows(2).all(|w| w[0].at <= w[1].at));
        // A later turn starts with the earlier turn's prompt and answer.
        let mut checked = 0;
        for (i, a) in trace.iter().enumerate() {
            let Some(u) = a.user else { continue };
            if let Some(b) = trace[i + 1..].iter().find(|b| b.user == Some(u)) {
                let sent: Vec<u64> = a.prompt.iter().chain(&a.output).copied().collect();
                assert_eq!(&b.prompt[..sent.len()], &sent[..]);
                checked += 1;
            }
        }
        assert!(checked > 10);
        // Two conversations of one tenant share the system prompt, not more.
        let t0 = trace[0].tenant;
        let same: Vec<&Request> = trace.iter().filter(|r| r.tenant == t0).collect();
        let other = same
            .iter()
            .find(|r| r.user != same[0].user || r.user.is_none());
        if let Some(b) = other {
            assert_eq!(b.prompt[..16], same[0].prompt[..16]);
        }
        // Popularity: model 0 is the most requested.
        let mut per = vec![0; 3];
        for r in &trace {
            per[r.model as usize] += 1;
        }
        assert!(per[0] > per[1], "{per:?}");
    }

    #[test]
    fn zipf_shares_sum_to_one_and_fall() {
        let z = Weighted::zipf(100, 1.0);
        let total: f64 = (0..100).map(|k| z.share(k)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(z.share(0) > z.share(1) && z.share(1) > z.share(50));
        let mut rng = Rng::new(1);
        let hits = (0..20_000).filter(|_| z.sample(&mut rng) == 0).count();
        let want = z.share(0) * 20_000.0;
        assert!((hits as f64 - want).abs() < 0.1 * want, "{hits} vs {want}");
    }
}
