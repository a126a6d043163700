//! `realizar`: one binary for every role (inspect, serve, node, gateway, ...).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
use realizar_node::format::ModelSummary;

#[derive(Parser)]
#[command(
    name = "realizar",
    version,
    about = "Pure-Rust LLM serving: engine, node and gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what a GGUF file or a safetensors model directory holds.
    Inspect {
        /// A .gguf file, a .safetensors file or a Hugging Face model directory.
        path: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// List every tensor (name, type, shape, offset, bytes).
        #[arg(long)]
        tensors: bool,
    },
    /// Fetch the real models (SmolLM2-135M Q4_1, Gemma3-270M Q4_K_M) into models/.
    Pull {
        /// all | smollm2 | gemma3
        #[arg(default_value = "all")]
        which: String,
    },
    /// Re-encode a GGUF model's weights into another type (F32, F16, BF16, Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) or the Q4_K_M mix; norms stay F32.
    Quantize {
        input: PathBuf,
        output: PathBuf,
        /// Target type, e.g. Q8_0.
        #[arg(long = "type")]
        dtype: String,
    },
    /// Write a GGUF model (llama or qwen2, byte-level BPE tokenizer) as a
    /// Hugging Face safetensors directory: model.safetensors in HF layout,
    /// config.json, tokenizer.json, tokenizer_config.json.
    Export {
        input: PathBuf,
        /// Output directory (created).
        output: PathBuf,
        /// Tensor type: F32, F16 or BF16.
        #[arg(long = "type", default_value = "F32")]
        dtype: String,
    },
    /// Generate text from a prompt, streaming it to stdout; speeds go to stderr.
    Run {
        /// A GGUF file, a Hugging Face safetensors directory, or a known
        /// model name (smollm2, gemma3).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Wrap the prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        #[arg(long, default_value_t = 0.05)]
        min_p: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Compute threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// KV cache element type: f32 or f16.
        #[arg(long, default_value = "f32")]
        kv_type: String,
        /// Arithmetic: native (realizar's kernels) or ggml-avx2 (llama.cpp's
        /// AVX2 build reproduced bit for bit; slower; Q8_0/Q4_1 llama models).
        #[arg(long, default_value = "native")]
        numerics: String,
    },
    /// Perplexity of a text file, computed the way llama-perplexity does.
    Perplexity {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// Arithmetic: native or ggml-avx2 (see `run --help`).
        #[arg(long, default_value = "native")]
        numerics: String,
    },
    /// Serve the OpenAI API on one machine (node and front door in one
    /// process). With no model given, serves SmolLM2 (fetched if missing).
    Serve(NodeArgs),
    /// Run a node: the OpenAI API and admin routes over the models it loads
    /// (from --model, the config file, or later through POST /admin/models).
    Node(NodeArgs),
    /// Load-test an OpenAI-compatible server (realizar, llama-server, ...).
    Bench {
        /// Server base URL, e.g. http://127.0.0.1:8080
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value = "smollm2")]
        model: String,
        /// Concurrency levels, run one after the other.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
        concurrency: Vec<usize>,
        /// Requests per concurrency level.
        #[arg(long, default_value_t = 16)]
        requests: usize,
        /// Length of the synthetic prompt, in tokens.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Prompts, one per line (instead of the synthetic prompt).
        #[arg(long)]
        prompts_file: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Stream the responses (needed for TTFT and inter-token latency).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        stream: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Instead of the load test: time to first token of a request and of
        /// a second one sharing its first N prompt tokens (prefix reuse).
        #[arg(long)]
        prefix_reuse: Option<usize>,
    },
}

#[derive(clap::Args)]
struct NodeArgs {
    /// TOML configuration (see configs/node.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A model to load: a GGUF path or a known name (smollm2, gemma3),
    /// optionally as ID=PATH. Repeatable.
    #[arg(long)]
    model: Vec<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// Compute threads per model (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Context length per sequence.
    #[arg(long)]
    ctx: Option<usize>,
    /// Most sequences per batch.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Memory for each model's KV pool.
    #[arg(long)]
    kv_memory_mib: Option<usize>,
    /// Memory for all loaded models; loading past it evicts the least recently used.
    #[arg(long)]
    memory_budget_mib: Option<u64>,
    /// Requests queued or running per model before 429.
    #[arg(long)]
    max_queue: Option<usize>,
    /// Enable POST /admin/fault/{id} (tests only).
    #[arg(long, hide = true)]
    fault_injection: bool,
    /// Where catalog models (smollm2, gemma3) live and are fetched to
    /// (default: REALIZAR_MODELS, else models/ of the source checkout).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// A directory POST /admin/models may load from (repeatable; default:
    /// the models directory).
    #[arg(long)]
    model_dir: Vec<PathBuf>,
    /// Let POST /admin/models fetch catalog models that are not on disk.
    #[arg(long)]
    allow_downloads: bool,
    /// File holding the token /admin/* requires as `Authorization: Bearer`.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Accept a non-loopback --host without an admin token.
    #[arg(long)]
    allow_open_admin: bool,
    /// Seconds a client may take to send a request head.
    #[arg(long)]
    header_timeout_secs: Option<f64>,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long)]
    idle_timeout_secs: Option<f64>,
    /// Seconds a client may take to send a request body.
    #[arg(long)]
    body_timeout_secs: Option<f64>,
    /// Most open connections; past it new ones get 503.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest request body in MiB; larger ones get 413.
    #[arg(long)]
    max_body_mib: Option<usize>,
    /// After SIGTERM, seconds requests in flight may finish before their
    /// streams end with an error event and the process exits.
    #[arg(long)]
    shutdown_grace_secs: Option<f64>,
    /// Milliseconds one request's tokenization may take before a 400.
    #[arg(long)]
    tokenize_budget_ms: Option<u64>,
    /// Events a stream may leave unread before its sequence pauses.
    #[arg(long)]
    stream_buffer_events: Option<usize>,
    /// Seconds a paused stream's client may read nothing before it is cancelled.
    #[arg(long)]
    stream_stall_secs: Option<f64>,
    /// Socket send buffer per connection in KiB (default: the kernel's autotuning).
    #[arg(long)]
    send_buffer_kib: Option<usize>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where catalog models live: REALIZAR_MODELS, else models/ of the checkout.
fn models_dir() -> PathBuf {
    std::env::var_os("REALIZAR_MODELS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

fn pull(which: &str) -> ExitCode {
    let script = repo_root().join("scripts/fetch-models.sh");
    match std::process::Command::new("bash")
        .arg(&script)
        .arg(which)
        .env("REALIZAR_MODELS_DIR", models_dir())
        .status()
    {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("realizar pull: {} exited with {s}", script.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("realizar pull: cannot run {}: {e}", script.display());
            ExitCode::FAILURE
        }
    }
}

fn inspect(path: &Path, json: bool, tensors: bool) -> ExitCode {
    match ModelSummary::of_path(path, tensors) {
        Ok(s) if json => match serde_json::to_string_pretty(&s) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("realizar inspect: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(s) => {
            print!("{}", s.to_text());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("realizar inspect: {e}");
            ExitCode::FAILURE
        }
    }
}

fn node(args: NodeArgs, default_model: bool) -> ExitCode {
    use realizar_node::server::config::{ModelEntry, NodeConfig};
    let mut cfg = match &args.config {
        Some(p) => match NodeConfig::from_file(p) {
            Ok(c) => c,
            Err(e) => return fail("serve", e),
        },
        None => NodeConfig::default(),
    };
    if let Some(h) = args.host {
        cfg.host = h;
    }
    if let Some(p) = args.port {
        cfg.port = p;
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if let Some(b) = args.memory_budget_mib {
        cfg.memory_budget_mib = b;
    }
    cfg.fault_injection |= args.fault_injection;
    if let Some(d) = &args.models_dir {
        std::env::set_var("REALIZAR_MODELS", d);
    }
    cfg.model_dirs.extend(args.model_dir.iter().cloned());
    if cfg.model_dirs.is_empty() {
        cfg.model_dirs.push(models_dir());
    }
    cfg.allow_downloads |= args.allow_downloads;
    cfg.allow_open_admin |= args.allow_open_admin;
    if let Some(f) = args.admin_token_file {
        cfg.admin_token_file = Some(f);
    }
    for (dst, v) in [
        (&mut cfg.header_timeout_secs, args.header_timeout_secs),
        (&mut cfg.idle_timeout_secs, args.idle_timeout_secs),
        (&mut cfg.body_timeout_secs, args.body_timeout_secs),
        (&mut cfg.shutdown_grace_secs, args.shutdown_grace_secs),
        (&mut cfg.stream_stall_secs, args.stream_stall_secs),
    ] {
        if let Some(v) = v {
            *dst = v;
        }
    }
    if let Some(n) = args.max_connections {
        cfg.max_connections = n;
    }
    if let Some(n) = args.max_body_mib {
        cfg.max_body_mib = n;
    }
    if let Some(n) = args.tokenize_budget_ms {
        cfg.tokenize_budget_ms = n;
    }
    if let Some(n) = args.stream_buffer_events {
        cfg.stream_buffer_events = n;
    }
    if let Some(n) = args.send_buffer_kib {
        cfg.send_buffer_kib = n;
    }
    if let Err(e) = cfg.check("command line") {
        return fail("serve", e);
    }
    if let Some(q) = args.max_queue {
        cfg.max_queue = q;
    }
    let o = &mut cfg.model_defaults;
    if let Some(c) = args.ctx {
        o.n_ctx = c;
    }
    if let Some(b) = args.max_batch {
        o.max_batch = b;
    }
    if let Some(m) = args.kv_memory_mib {
        o.kv_memory_mib = m;
    }
    if let Err(e) = o.check("command line", "flags") {
        return fail("serve", e);
    }
    for m in &args.model {
        let (id, path) = match m.split_once('=') {
            Some((id, path)) => (id.to_owned(), path.to_owned()),
            None => {
                let p = Path::new(m);
                let id = if p.exists() {
                    p.file_stem()
                        .map_or(m.clone(), |s| s.to_string_lossy().into_owned())
                } else {
                    m.clone()
                };
                (id, m.clone())
            }
        };
        if let Err(e) = realizar_node::server::http::check_model_id(&id) {
            return fail("serve", format!("--model {m}: {e}"));
        }
        // What the operator names on the command line is pinned: never
        // evicted, and unloaded only with `force`.
        cfg.models.push(ModelEntry {
            id,
            path,
            pinned: true,
            options: None,
        });
    }
    if default_model && cfg.models.is_empty() {
        cfg.models.push(ModelEntry {
            id: "smollm2".into(),
            path: "smollm2".into(),
            pinned: true,
            options: None,
        });
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail("serve", e),
    };
    let resolver: realizar_node::server::registry::Resolver =
        std::sync::Arc::new(|m: &str, fetch: bool| resolve_model_with(Path::new(m), fetch));
    let r = rt.block_on(realizar_node::server::run(
        cfg,
        resolver,
        |addr| eprintln!("realizar: listening on http://{addr}"),
        async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        },
    ));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("serve", e),
    }
}

fn fail(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("realizar {cmd}: {e}");
    ExitCode::FAILURE
}

fn quantize(input: &Path, output: &Path, dtype: &str) -> ExitCode {
    use std::io::Write;
    let Some(t) = realizar_node::format::convert::Recipe::from_name(dtype) else {
        return fail("quantize", format!("unknown type {dtype:?}"));
    };
    let src = match realizar_node::format::GgufFile::open(input) {
        Ok(f) => f,
        Err(e) => return fail("quantize", e),
    };
    let tmp = output.with_extension("partial");
    let file = match std::fs::File::create(&tmp) {
        Ok(f) => f,
        Err(e) => return fail("quantize", format!("{}: {e}", tmp.display())),
    };
    let mut w = std::io::BufWriter::new(file);
    let started = std::time::Instant::now();
    let r = realizar_node::format::convert::convert_with(&src, t, &mut w, |i, n, name| {
        eprint!("\r[{:>3}/{n}] {name:<40}", i + 1);
    });
    eprintln!();
    if let Err(e) = r
        .map_err(|e| e.to_string())
        .and_then(|_| w.flush().map_err(|e| e.to_string()))
    {
        let _ = std::fs::remove_file(&tmp);
        return fail("quantize", e);
    }
    if let Err(e) = std::fs::rename(&tmp, output) {
        return fail("quantize", e);
    }
    eprintln!(
        "wrote {} in {:.1} s",
        output.display(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn export(input: &Path, output: &Path, dtype: &str) -> ExitCode {
    use realizar_node::format::StDtype;
    let t = match dtype.to_ascii_uppercase().as_str() {
        "F32" => StDtype::F32,
        "F16" => StDtype::F16,
        "BF16" => StDtype::BF16,
        _ => return fail("export", format!("--type {dtype:?}: F32, F16 or BF16")),
    };
    let src = match realizar_node::format::GgufFile::open(input) {
        Ok(f) => f,
        Err(e) => return fail("export", e),
    };
    let started = std::time::Instant::now();
    match realizar_node::format::hf_convert::export_hf(&src, output, t) {
        Ok(s) => {
            eprintln!(
                "wrote {} ({} tensors, {:.1} MiB) in {:.1} s",
                output.display(),
                s.tensors,
                s.bytes as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("export", e),
    }
}

/// A model argument: a path, or a known name whose file lives in models/
/// (fetched with scripts/fetch-models.sh when missing).
fn resolve_model(arg: &Path) -> Result<PathBuf, String> {
    if !arg.exists() && catalog(arg).is_none() {
        return Err(format!(
            "{}: no such file, and not a known model name (smollm2, gemma3)",
            arg.display()
        ));
    }
    resolve_model_with(arg, true)
}

/// The node's resolver: a catalog name is its file in the models directory
/// (fetched when missing and `fetch`); anything else is the path it names.
fn resolve_model_with(arg: &Path, fetch: bool) -> Result<PathBuf, String> {
    if let Some((file, which)) = catalog(arg) {
        let path = models_dir().join(file);
        if path.is_file() {
            return Ok(path);
        }
        if !fetch {
            return Err(format!("{which} is not in {}", models_dir().display()));
        }
        if pull(which) != ExitCode::SUCCESS {
            return Err(format!("could not fetch {which}"));
        }
        return Ok(path);
    }
    Ok(arg.to_path_buf())
}

/// A catalog name's file and fetch-models.sh argument, unless `arg` names an
/// existing path.
fn catalog(arg: &Path) -> Option<(&'static str, &'static str)> {
    if arg.exists() {
        return None;
    }
    match arg.to_string_lossy().to_ascii_lowercase().as_str() {
        "smollm2" | "smollm2-135m" | "smollm2-135m-instruct" => {
            Some(("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"))
        }
        "gemma3" | "gemma-3-270m" | "gemma3-270m" => Some(("gemma-3-270m-q4_k_m.gguf", "gemma3")),
        _ => None,
    }
}

type Loaded = (
    Box<dyn realizar_node::model::Model>,
    realizar_node::tokenizer::Tokenizer,
    Option<String>,
);

fn load_model(arg: &Path, numerics: realizar_node::model::Numerics) -> Result<Loaded, String> {
    let path = &resolve_model(arg)?;
    let f = std::sync::Arc::new(
        realizar_node::format::hf_convert::open_model_file(path).map_err(|e| e.to_string())?,
    );
    let tok = realizar_node::tokenizer::Tokenizer::from_gguf(f.metadata())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let template = f
        .metadata()
        .get_str("tokenizer.chat_template")
        .map(str::to_owned);
    let model = realizar_node::model::load_with(f, numerics).map_err(|e| e.to_string())?;
    Ok((model, tok, template))
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
) -> ExitCode {
    use realizar_node::model::{Logits, Workspace};
    use realizar_node::sampling::Sampler;
    use realizar_node::tokenizer::StreamDecoder;
    use std::io::Write;
    let (m, tok, template) = match load_model(model, numerics) {
        Ok(x) => x,
        Err(e) => return fail("run", e),
    };
    if let Err(e) = params.validate(m.n_vocab()) {
        return fail("run", e);
    }
    let ids = if chat {
        use realizar_node::tokenizer::{ChatMessage, ChatTemplate};
        let rendered = ChatTemplate::for_model(template.as_deref(), &tok)
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
    while generated < ctx - ids.len() {
        let next = sampler.sample(&mut ws.logits).token.id;
        generated += 1;
        if tok.vocab.is_end_of_generation(next) {
            break;
        }
        let _ = out.write_all(dec.push(&tok, next).as_bytes());
        let _ = out.flush();
        if generated == ctx - ids.len() {
            break;
        }
        m.forward(&pool, simd, &[next], &mut cache, &mut ws, Logits::Last);
    }
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
    ExitCode::SUCCESS
}

fn perplexity(
    model: &Path,
    file: &Path,
    ctx: usize,
    n_threads: usize,
    numerics: realizar_node::model::Numerics,
) -> ExitCode {
    let (m, tok, _) = match load_model(model, numerics) {
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
        m.as_ref(),
        &tok,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect {
            path,
            json,
            tensors,
        } => inspect(&path, json, tensors),
        Command::Pull { which } => pull(&which),
        Command::Serve(a) => node(a, true),
        Command::Node(a) => node(a, false),
        Command::Bench {
            url,
            model,
            concurrency,
            requests,
            prompt_tokens,
            prompts_file,
            max_tokens,
            stream,
            json,
            quiet,
            prefix_reuse,
        } => {
            let args = bench::BenchArgs {
                url,
                model,
                concurrency,
                requests,
                prompt_tokens,
                prompts_file,
                max_tokens,
                stream,
                progress: !quiet,
            };
            if let Some(n) = prefix_reuse {
                return match bench::prefix_reuse(args, n, 5) {
                    Ok(trials) => {
                        println!("| trial | first TTFT ms | second TTFT ms | second / first |\n|---:|---:|---:|---:|");
                        for (i, t) in trials.iter().enumerate() {
                            println!(
                                "| {i} | {:.1} | {:.1} | {:.1}% |",
                                t.first_ttft_ms,
                                t.second_ttft_ms,
                                t.ratio * 100.0
                            );
                        }
                        let mut r: Vec<f64> = trials.iter().map(|t| t.ratio).collect();
                        r.sort_by(|a, b| a.total_cmp(b));
                        println!("\nmedian second/first: {:.1}%", r[r.len() / 2] * 100.0);
                        if let Some(p) = json {
                            let _ = std::fs::write(
                                &p,
                                serde_json::to_string_pretty(&trials).unwrap_or_default(),
                            );
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail("bench", e),
                };
            }
            match bench::run(args) {
                Ok(r) => {
                    print!("{}", bench::markdown(&r));
                    if let Some(p) = json {
                        let v = serde_json::to_string_pretty(&r).unwrap_or_default();
                        if let Err(e) = std::fs::write(&p, v) {
                            return fail("bench", format!("{}: {e}", p.display()));
                        }
                    }
                    if r.iter().all(|l| l.errors == 0) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => fail("bench", e),
            }
        }
        Command::Quantize {
            input,
            output,
            dtype,
        } => quantize(&input, &output, &dtype),
        Command::Export {
            input,
            output,
            dtype,
        } => export(&input, &output, &dtype),
        Command::Run {
            model,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            threads: t,
            kv_type,
            numerics,
        } => {
            let Some(kv) = realizar_node::model::KvType::from_name(&kv_type) else {
                return fail("run", format!("--kv-type {kv_type:?}: expected f32 or f16"));
            };
            let Some(numerics) = realizar_node::model::Numerics::from_name(&numerics) else {
                return fail(
                    "run",
                    format!("--numerics {numerics:?}: expected native or ggml-avx2"),
                );
            };
            let params = realizar_node::sampling::SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                seed,
                ..Default::default()
            };
            run(
                &model,
                &prompt,
                chat,
                max_tokens,
                params,
                threads(t),
                kv,
                numerics,
            )
        }
        Command::Perplexity {
            model,
            file,
            ctx,
            threads: t,
            numerics,
        } => {
            let Some(numerics) = realizar_node::model::Numerics::from_name(&numerics) else {
                return fail(
                    "perplexity",
                    format!("--numerics {numerics:?}: expected native or ggml-avx2"),
                );
            };
            perplexity(&model, &file, ctx, threads(t), numerics)
        }
    }
}
