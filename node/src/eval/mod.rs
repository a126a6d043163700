//! Perplexity the way llama-perplexity computes it: the text is tokenized
//! once, cut into non-overlapping chunks of `n_ctx` tokens, each chunk run
//! from an empty cache (its first token replaced by BOS when the model adds
//! one), and only the second half of each chunk's predictions scored.
//! [`kl_divergence`] runs a second model (the base a quantized one was made
//! from) over the same chunks and compares their distributions at every
//! scored position, as llama-perplexity's `--kl-divergence` does.

pub mod kld;

use crate::model::{Logits, Model, Workspace};
use crate::sampling::log_softmax;
use crate::tensor::{Simd, ThreadPool};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of the perplexity (llama-perplexity's estimate).
    pub stderr: f64,
    pub chunks: usize,
    pub scored_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PerplexityError {
    #[error("the text has {tokens} tokens, fewer than 2 × ctx ({ctx})")]
    TooShort { tokens: usize, ctx: usize },
    #[error("ctx must be at least 4 (got {0})")]
    BadCtx(usize),
    #[error("the base model has a vocabulary of {base}, the model {model}: not the same model")]
    VocabMismatch { model: usize, base: usize },
    #[error("{0}")]
    BaseFile(String),
}

/// How far a model's next-token distributions are from its base's over
/// the same text: KL(base ‖ model) per scored position, and how often the
/// two agree on the most likely token.
#[derive(Debug, Clone, PartialEq)]
pub struct KlDivergence {
    pub mean: f64,
    /// Standard error of the mean.
    pub stderr: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
    /// Positions where both put the same token first.
    pub top1_agreement: f64,
    pub ppl: f64,
    pub base_ppl: f64,
    pub scored_tokens: usize,
}

/// The chunks llama-perplexity scores: `n_ctx` tokens each, the first
/// replaced by BOS when the model adds one.
fn chunks(tok: &Tokenizer, text: &str, n_ctx: usize) -> Result<Vec<Vec<u32>>, PerplexityError> {
    if n_ctx < 4 {
        return Err(PerplexityError::BadCtx(n_ctx));
    }
    let tokens = tok.encode(text, true, false);
    if tokens.len() < 2 * n_ctx {
        return Err(PerplexityError::TooShort {
            tokens: tokens.len(),
            ctx: n_ctx,
        });
    }
    Ok(tokens
        .chunks_exact(n_ctx)
        .map(|c| {
            let mut c = c.to_vec();
            if tok.vocab.add_bos {
                if let Some(bos) = tok.vocab.bos {
                    c[0] = bos;
                }
            }
            c
        })
        .collect())
}

/// KL(base ‖ model) at every position `perplexity` scores, both models
/// run over the same chunks. `progress(done, total, running_mean_kl)`.
#[allow(clippy::too_many_arguments)]
pub fn kl_divergence(
    model: &dyn Model,
    base: &dyn Model,
    tok: &Tokenizer,
    pool: &ThreadPool,
    simd: Simd,
    text: &str,
    n_ctx: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<KlDivergence, PerplexityError> {
    let n_vocab = model.n_vocab();
    if base.n_vocab() != n_vocab {
        return Err(PerplexityError::VocabMismatch {
            model: n_vocab,
            base: base.n_vocab(),
        });
    }
    let chunks = chunks(tok, text, n_ctx)?;
    let first = n_ctx / 2;
    let (mut cache, mut base_cache) = (model.new_cache(n_ctx), base.new_cache(n_ctx));
    let (mut ws, mut base_ws) = (Workspace::default(), Workspace::default());
    let mut kls = Vec::new();
    let (mut agree, mut nll, mut base_nll) = (0usize, 0f64, 0f64);
    for (c, chunk) in chunks.iter().enumerate() {
        cache.clear();
        base_cache.clear();
        model.forward(pool, simd, chunk, &mut cache, &mut ws, Logits::All);
        base.forward(
            pool,
            simd,
            chunk,
            &mut base_cache,
            &mut base_ws,
            Logits::All,
        );
        for j in first..n_ctx - 1 {
            let row = j * n_vocab..(j + 1) * n_vocab;
            let q = log_softmax(&ws.logits[row.clone()]);
            let p = log_softmax(&base_ws.logits[row]);
            let kl: f64 = p
                .iter()
                .zip(&q)
                .filter(|(lp, _)| lp.is_finite())
                .map(|(&lp, &lq)| (lp as f64).exp() * (lp as f64 - lq as f64))
                .sum();
            kls.push(kl.max(0.0));
            if crate::sampling::argmax(&p) == crate::sampling::argmax(&q) {
                agree += 1;
            }
            // Position j + 1 ≥ 1 holds the text's own token (only 0 may be BOS).
            let t = chunk[j + 1] as usize;
            nll -= q[t] as f64;
            base_nll -= p[t] as f64;
        }
        progress(
            c + 1,
            chunks.len(),
            kls.iter().sum::<f64>() / kls.len() as f64,
        );
    }
    Ok(summarize(kls, agree, nll, base_nll))
}

/// The same figures against a base llama-perplexity saved (`kld::KldBase`):
/// its chunks (the first token of each replaced by `bos` when the model
/// adds one), its 16-bit base log-probs, and its definitions — KL summed
/// over the tokens whose base log-prob is above −16, the base's top token
/// the first of its highest stored values, the model's the first of its
/// highest logits.
#[allow(clippy::too_many_arguments)]
pub fn kl_divergence_from_file(
    model: &dyn Model,
    base: &mut kld::KldBase,
    bos: Option<u32>,
    pool: &ThreadPool,
    simd: Simd,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<KlDivergence, PerplexityError> {
    let n_vocab = model.n_vocab();
    if base.n_vocab != n_vocab {
        return Err(PerplexityError::VocabMismatch {
            model: n_vocab,
            base: base.n_vocab,
        });
    }
    let (n_ctx, first) = (base.n_ctx, base.n_ctx / 2);
    let chunks = std::mem::take(&mut base.chunks);
    let mut cache = model.new_cache(n_ctx);
    let mut ws = Workspace::default();
    let mut v = Vec::new();
    let mut kls = Vec::new();
    let (mut agree, mut nll, mut base_nll) = (0usize, 0f64, 0f64);
    for (c, chunk) in chunks.iter().enumerate() {
        let mut chunk = chunk.clone();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        cache.clear();
        model.forward(pool, simd, &chunk, &mut cache, &mut ws, Logits::All);
        for j in first..n_ctx - 1 {
            let logits = &ws.logits[j * n_vocab..(j + 1) * n_vocab];
            let q = log_softmax(logits);
            let (scale, min_log_prob) = base.next(&mut v).map_err(PerplexityError::BaseFile)?;
            let p = kld::BasePosition {
                scale,
                min_log_prob,
                v: &v,
            };
            let mut kl = 0f64;
            for (i, &lq) in q.iter().enumerate() {
                let lp = p.log_prob(i);
                if lp > -16.0 {
                    kl += (lp as f64).exp() * (lp as f64 - lq as f64);
                }
            }
            kls.push(kl);
            if p.argmax() == crate::sampling::argmax(logits) as usize {
                agree += 1;
            }
            let t = chunk[j + 1] as usize;
            nll -= q[t] as f64;
            base_nll -= p.log_prob(t) as f64;
        }
        progress(
            c + 1,
            chunks.len(),
            kls.iter().sum::<f64>() / kls.len() as f64,
        );
    }
    Ok(summarize(kls, agree, nll, base_nll))
}

/// The statistics of per-position KL divergences.
fn summarize(kls: Vec<f64>, agree: usize, nll: f64, base_nll: f64) -> KlDivergence {
    let n = kls.len();
    let mean = kls.iter().sum::<f64>() / n as f64;
    let var = kls.iter().map(|k| (k - mean) * (k - mean)).sum::<f64>() / (n as f64 - 1.0).max(1.0);
    let mut sorted = kls;
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((n - 1) as f64 * q).round() as usize];
    KlDivergence {
        mean,
        stderr: (var / n as f64).sqrt(),
        median: at(0.5),
        p99: at(0.99),
        max: sorted[n - 1],
        top1_agreement: agree as f64 / n as f64,
        ppl: (nll / n as f64).exp(),
        base_ppl: (base_nll / n as f64).exp(),
        scored_tokens: n,
    }
}

/// `progress(done, total, running_ppl)` is called after each chunk.
pub fn perplexity(
    model: &dyn Model,
    tok: &Tokenizer,
    pool: &ThreadPool,
    simd: Simd,
    text: &str,
    n_ctx: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity, PerplexityError> {
    let chunks = chunks(tok, text, n_ctx)?;
    let n_chunks = chunks.len();
    let first = n_ctx / 2;
    let mut cache = model.new_cache(n_ctx);
    let mut ws = Workspace::default();
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let n_vocab = model.n_vocab();
    for (c, chunk) in chunks.iter().enumerate() {
        cache.clear();
        model.forward(pool, simd, chunk, &mut cache, &mut ws, Logits::All);
        for j in first..n_ctx - 1 {
            let lp = log_softmax(&ws.logits[j * n_vocab..(j + 1) * n_vocab]);
            let v = -(lp[chunk[j + 1] as usize] as f64);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        progress(c + 1, n_chunks, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    Ok(Perplexity {
        ppl,
        stderr: ppl * (var / (count as f64 - 1.0)).sqrt(),
        chunks: n_chunks,
        scored_tokens: count,
    })
}
