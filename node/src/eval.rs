//! Perplexity the way llama-perplexity computes it: the text is tokenized
//! once, cut into non-overlapping chunks of `n_ctx` tokens, each chunk run
//! from an empty cache (its first token replaced by BOS when the model adds
//! one), and only the second half of each chunk's predictions scored.

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
    if n_ctx < 4 {
        return Err(PerplexityError::BadCtx(n_ctx));
    }
    let tokens = tok.encode(text, true, false);
    let n_chunks = tokens.len() / n_ctx;
    if n_chunks < 1 || tokens.len() < 2 * n_ctx {
        return Err(PerplexityError::TooShort {
            tokens: tokens.len(),
            ctx: n_ctx,
        });
    }
    let first = n_ctx / 2;
    let mut cache = model.new_cache(n_ctx);
    let mut ws = Workspace::default();
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let n_vocab = model.n_vocab();
    for c in 0..n_chunks {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if tok.vocab.add_bos {
            if let Some(bos) = tok.vocab.bos {
                chunk[0] = bos;
            }
        }
        cache.clear();
        model.forward(pool, simd, &chunk, &mut cache, &mut ws, Logits::All);
        for j in first..n_ctx - 1 {
            let lp = log_softmax(&ws.logits[j * n_vocab..(j + 1) * n_vocab]);
            let v = -(lp[tokens[c * n_ctx + j + 1] as usize] as f64);
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
