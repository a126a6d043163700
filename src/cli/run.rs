//! `realizar run` and `realizar perplexity`: one sequence through the engine,
//! no server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;

use super::{fail, models};

/// KV cache element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvTypeArg {
    F32,
    F16,
}

impl KvTypeArg {
    fn kv(self) -> realizar_node::model::KvType {
        match self {
            KvTypeArg::F32 => realizar_node::model::KvType::F32,
            KvTypeArg::F16 => realizar_node::model::KvType::F16,
        }
    }
}

/// Arithmetic of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NumericsArg {
    /// realizar's kernels.
    Native,
    /// llama.cpp's AVX2 build reproduced bit for bit (slower; llama and
    /// Gemma 3 with Q8_0/Q4_1/Q5_0/Q4_K/Q6_K weights).
    GgmlAvx2,
}

impl NumericsArg {
    fn numerics(self) -> realizar_node::model::Numerics {
        match self {
            NumericsArg::Native => realizar_node::model::Numerics::Native,
            NumericsArg::GgmlAvx2 => realizar_node::model::Numerics::GgmlAvx2,
        }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A GGUF file, a Hugging Face safetensors directory, or a catalog
    /// model name (smollm2, gemma3).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value = "f32")]
    pub kv_type: KvTypeArg,
    #[arg(long, value_enum, default_value = "native")]
    pub numerics: NumericsArg,
    /// Prompt-lookup speculative decoding when greedy: verify up to this
    /// many guessed tokens per step (0: off). The output is the same.
    #[arg(long, default_value_t = realizar_shared::control::DRAFT_MAX)]
    pub draft_max: usize,
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// The text to score (not needed with a llama-perplexity base file,
    /// which holds its tokens).
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value = "native")]
    pub numerics: NumericsArg,
    /// The model `--model` was quantized from (F32 or F16): report the KL
    /// divergence of `--model`'s next-token distributions from it (mean,
    /// median, 99th percentile, maximum) and how often both rank the same
    /// token first, as llama-perplexity's --kl-divergence does. Or the
    /// file llama-perplexity saved with its own `--kl-divergence-base`: then
    /// against llama.cpp's base distributions, over its tokens and chunks.
    #[arg(long)]
    pub kl_divergence_base: Option<PathBuf>,
}

pub fn run_cmd(a: RunArgs) -> ExitCode {
    let params = realizar_node::sampling::SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        seed: a.seed,
        ..Default::default()
    };
    // Speculation pays for greedy decoding (sampling would reject most
    // guesses), as in the node's default.
    let draft_max = if params.temperature == 0.0 {
        a.draft_max
    } else {
        0
    };
    run(
        &a.model,
        &a.prompt,
        a.chat,
        a.max_tokens,
        params,
        threads(a.threads),
        a.kv_type.kv(),
        a.numerics.numerics(),
        draft_max,
    )
}

pub fn perplexity_cmd(a: PerplexityArgs) -> ExitCode {
    if let Some(base) = &a.kl_divergence_base {
        if is_llama_base(base) {
            return kl_divergence_from_file(
                &a.model,
                base,
                threads(a.threads),
                a.numerics.numerics(),
            );
        }
    }
    let Some(file) = &a.file else {
        return fail(
            "perplexity",
            "--file: the text to score is needed (only a llama-perplexity base file holds its own)",
        );
    };
    if let Some(base) = &a.kl_divergence_base {
        return kl_divergence(
            &a.model,
            base,
            file,
            a.ctx,
            threads(a.threads),
            a.numerics.numerics(),
        );
    }
    perplexity(
        &a.model,
        file,
        a.ctx,
        threads(a.threads),
        a.numerics.numerics(),
    )
}

/// Whether `path` starts as llama-perplexity's saved base does.
fn is_llama_base(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"_logits_"
}

fn load_model(
    arg: &Path,
    numerics: realizar_node::model::Numerics,
) -> Result<realizar_node::model::LoadedModel, String> {
    let path = &models::resolve(arg)?;
    realizar_node::model::LoadedModel::open_with(path, numerics).map_err(|e| e.to_string())
}

fn threads(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &Path,
    prompt: &str,
    chat: bool,
    max_tokens: usize,
    params: realizar_node::sampling::SamplingParams,
    n_threads: usize,
    kv: realizar_node::model::KvType,
    numerics: realizar_node::model::Numerics,
    draft_max: usize,
) -> ExitCode {
    use realizar_node::model::{Logits, Workspace};
    use realizar_node::sampling::Sampler;
    use realizar_node::tokenizer::StreamDecoder;
    use std::io::Write;
    let loaded = match load_model(model, numerics) {
        Ok(x) => x,
        Err(e) => return fail("run", e),
    };
    let (m, tok) = (&loaded.model, &loaded.tok);
    if let Err(e) = params.validate(m.n_vocab()) {
        return fail("run", e);
    }
    let ids = if chat {
        use realizar_node::tokenizer::ChatMessage;
        let rendered = loaded
            .chat_template()
            .and_then(|t| Ok((t.render(&[ChatMessage::new("user", prompt)], true)?, t)));
        match rendered {
            // A template that writes the BOS token itself gets no second one.
            Ok((text, t)) => tok.encode(
                &text,
                t.bos_token().is_empty() || !text.starts_with(t.bos_token()),
                true,
            ),
            Err(e) => return fail("run", e),
        }
    } else {
        tok.encode(prompt, true, true)
    };
    if ids.is_empty() {
        return fail("run", "the prompt is empty");
    }
    let ctx = (ids.len() + max_tokens).min(m.n_ctx_train());
    if ids.len() >= ctx {
        return fail(
            "run",
            format!(
                "the prompt has {} tokens; the model's context is {}",
                ids.len(),
                m.n_ctx_train()
            ),
        );
    }
    let pool = realizar_node::tensor::ThreadPool::new(n_threads);
    let simd = realizar_node::tensor::Simd::detect();
    let mut cache = m.new_cache_typed(ctx, kv);
    let mut ws = Workspace::default();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut sampler = Sampler::new(params, seed).with_history(&ids);
    let mut dec = StreamDecoder::default();
    let t0 = std::time::Instant::now();
    m.forward(&pool, simd, &ids, &mut cache, &mut ws, Logits::Last);
    let prefill = t0.elapsed();
    let t1 = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let mut generated = 0;
    let limit = ctx - ids.len();
    let n_vocab = m.n_vocab();
    let mut tokens = ids.clone();
    // Each step leaves a row of logits per position it ran: the last token
    // and the guess verified with it (engine/draft.rs); rows are sampled
    // in order while each choice is the guess's next token.
    let (mut draft, mut input) = (Vec::new(), Vec::new());
    let (mut rows, mut drafted, mut accepted_total) = (1, 0, 0);
    // Synchronisation per decode step: the pool's counters over the steps
    // and the steps' own time (what is not in a parallel job is serial).
    let (sync0, mut steps, mut fwd) = (pool.stats(), 0u32, std::time::Duration::ZERO);
    'decode: while generated < limit {
        let mut accepted = 0;
        for j in 0..rows {
            let next = sampler
                .sample(&mut ws.logits[j * n_vocab..(j + 1) * n_vocab])
                .token
                .id;
            generated += 1;
            if tok.vocab.is_end_of_generation(next) {
                break 'decode;
            }
            let _ = out.write_all(dec.push(tok, next).as_bytes());
            tokens.push(next);
            if generated == limit {
                break 'decode;
            }
            // Past the guess's end (the last row) there is nothing to match.
            if draft.get(j) != Some(&next) {
                break;
            }
            accepted += 1;
        }
        let _ = out.flush();
        accepted_total += accepted;
        // The positions of the guess that did not hold are written over.
        cache.len -= rows - 1 - accepted;
        let k = draft_max.min(limit - generated - 1);
        realizar_node::engine::draft::prompt_lookup(&tokens, k, &mut draft);
        drafted += draft.len();
        input.clear();
        input.push(tokens[tokens.len() - 1]);
        input.extend_from_slice(&draft);
        rows = input.len();
        let which = if rows > 1 { Logits::All } else { Logits::Last };
        let t = std::time::Instant::now();
        m.forward(&pool, simd, &input, &mut cache, &mut ws, which);
        fwd += t.elapsed();
        steps += 1;
    }
    let sync = pool.stats() - sync0;
    let _ = writeln!(out, "{}", dec.finish());
    let decode = t1.elapsed();
    eprintln!(
        "prefill: {} tokens in {:.1} ms ({:.1} tokens/s); decode: {} tokens in {:.1} ms ({:.1} tokens/s); {} threads, {}",
        ids.len(),
        prefill.as_secs_f64() * 1e3,
        ids.len() as f64 / prefill.as_secs_f64(),
        generated,
        decode.as_secs_f64() * 1e3,
        generated as f64 / decode.as_secs_f64(),
        n_threads,
        match numerics {
            realizar_node::model::Numerics::Native => simd.name(),
            realizar_node::model::Numerics::GgmlAvx2 => "ggml-avx2 numerics",
        }
    );
    if drafted > 0 {
        eprintln!("speculative: {accepted_total} of {drafted} draft tokens accepted");
    }
    if steps > 0 && n_threads > 1 {
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / steps as f64;
        eprintln!(
            "decode sync per step ({steps} steps): {:.0} dispatches, {:.0} µs forward = {:.0} µs in parallel jobs (of which {:.0} µs waiting at their barriers) + {:.0} µs serial",
            sync.dispatches as f64 / steps as f64,
            us(fwd),
            us(sync.busy),
            us(sync.barrier_wait),
            us(fwd.saturating_sub(sync.busy)),
        );
    }
    ExitCode::SUCCESS
}

fn perplexity(
    model: &Path,
    file: &Path,
    ctx: usize,
    n_threads: usize,
    numerics: realizar_node::model::Numerics,
) -> ExitCode {
    let loaded = match load_model(model, numerics) {
        Ok(x) => x,
        Err(e) => return fail("perplexity", e),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail("perplexity", format!("{}: {e}", file.display())),
    };
    let pool = realizar_node::tensor::ThreadPool::new(n_threads);
    let t0 = std::time::Instant::now();
    let r = realizar_node::eval::perplexity(
        loaded.model.as_ref(),
        &loaded.tok,
        &pool,
        realizar_node::tensor::Simd::detect(),
        &text,
        ctx,
        |i, n, p| {
            eprint!("[{i}]{p:.4},");
            if i == n {
                eprintln!();
            }
        },
    );
    match r {
        Ok(p) => {
            println!(
                "Final estimate: PPL = {:.4} +/- {:.5}  ({} chunks of {ctx}, {} tokens scored, {:.1} s)",
                p.ppl,
                p.stderr,
                p.chunks,
                p.scored_tokens,
                t0.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("perplexity", e),
    }
}

fn kl_divergence(
    model: &Path,
    base: &Path,
    file: &Path,
    ctx: usize,
    n_threads: usize,
    numerics: realizar_node::model::Numerics,
) -> ExitCode {
    let what = "perplexity --kl-divergence-base";
    let loaded = match load_model(model, numerics) {
        Ok(x) => x,
        Err(e) => return fail(what, e),
    };
    let base_loaded = match load_model(base, numerics) {
        Ok(x) => x,
        Err(e) => return fail(what, e),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(what, format!("{}: {e}", file.display())),
    };
    let pool = realizar_node::tensor::ThreadPool::new(n_threads);
    let t0 = std::time::Instant::now();
    let r = realizar_node::eval::kl_divergence(
        loaded.model.as_ref(),
        base_loaded.model.as_ref(),
        &loaded.tok,
        &pool,
        realizar_node::tensor::Simd::detect(),
        &text,
        ctx,
        kl_progress,
    );
    report_kl(r, t0, what)
}

/// A chunk done: its number and the running mean KL divergence, as
/// llama-perplexity prints them.
fn kl_progress(i: usize, n: usize, kl: f64) {
    eprint!("[{i}]{kl:.6},");
    if i == n {
        eprintln!();
    }
}

fn report_kl(
    r: Result<realizar_node::eval::KlDivergence, realizar_node::eval::PerplexityError>,
    t0: std::time::Instant,
    what: &str,
) -> ExitCode {
    match r {
        Ok(k) => {
            println!(
                "Mean PPL(Q): {:.4}   Mean PPL(base): {:.4}",
                k.ppl, k.base_ppl
            );
            println!("Mean    KLD: {:.6} ± {:.6}", k.mean, k.stderr);
            println!("Maximum KLD: {:.6}", k.max);
            println!("99.0%   KLD: {:.6}", k.p99);
            println!("Median  KLD: {:.6}", k.median);
            println!(
                "Same top p: {:.3} %   ({} tokens scored, {:.1} s)",
                100.0 * k.top1_agreement,
                k.scored_tokens,
                t0.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(what, e),
    }
}

/// Against a base llama-perplexity saved: its tokens, chunks and 16-bit
/// log-probs.
fn kl_divergence_from_file(
    model: &Path,
    base: &Path,
    n_threads: usize,
    numerics: realizar_node::model::Numerics,
) -> ExitCode {
    let what = "perplexity --kl-divergence-base";
    let loaded = match load_model(model, numerics) {
        Ok(x) => x,
        Err(e) => return fail(what, e),
    };
    let mut file = match realizar_node::eval::kld::KldBase::open(base) {
        Ok(f) => f,
        Err(e) => return fail(what, e),
    };
    let v = &loaded.tok.vocab;
    let bos = if v.add_bos { v.bos } else { None };
    let pool = realizar_node::tensor::ThreadPool::new(n_threads);
    let t0 = std::time::Instant::now();
    let r = realizar_node::eval::kl_divergence_from_file(
        loaded.model.as_ref(),
        &mut file,
        bos,
        &pool,
        realizar_node::tensor::Simd::detect(),
        kl_progress,
    );
    report_kl(r, t0, what)
}
