//! The `realizar` command line: one args struct per subcommand, each in the
//! module that runs it.

pub mod bench;
mod cluster;
mod files;
mod gateway;
pub mod models;
mod node;
mod probe;
mod run;
mod sched;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "realizar",
    version,
    about = "Pure-Rust LLM serving: engine, node and gateway"
)]
pub struct Cli {
    /// Where catalog models (smollm2, gemma3) live and are fetched to.
    /// Default: REALIZAR_MODELS, else the per-user cache
    /// ($XDG_CACHE_HOME or ~/.cache)/realizar/models.
    #[arg(long, global = true)]
    pub models_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Report what a GGUF file or a safetensors model directory holds.
    Inspect(files::InspectArgs),
    /// Fetch catalog models into the models directory.
    Pull(PullArgs),
    /// Re-encode a GGUF model's weights into another type or the Q4_K_M
    /// mix; norms stay F32.
    Quantize(files::QuantizeArgs),
    /// Write a GGUF model (llama or qwen2, byte-level BPE tokenizer) as a
    /// Hugging Face safetensors directory: model.safetensors in HF layout,
    /// config.json, tokenizer.json, tokenizer_config.json.
    Export(files::ExportArgs),
    /// Generate text from a prompt, streaming it to stdout; speeds go to stderr.
    Run(run::RunArgs),
    /// Perplexity of a text file, computed the way llama-perplexity does.
    Perplexity(run::PerplexityArgs),
    /// Serve the OpenAI API on one machine: the gateway over a node in the
    /// same process (the cluster's code path). With no model given, serves
    /// SmolLM2 (fetched if missing).
    Serve(serve::ServeArgs),
    /// Run a node: the OpenAI API and admin routes over the models it loads
    /// (from --model, the config file, or later through POST /admin/models).
    Node(node::NodeArgs),
    /// The OpenAI front door over a fleet of nodes: membership, placement
    /// of models by consistent hashing, affinity routing, streaming proxy.
    Gateway(gateway::GatewayArgs),
    /// A local cluster: N node processes on loopback ports behind a
    /// gateway; dead nodes are restarted; Ctrl-C stops them all.
    Cluster(cluster::ClusterArgs),
    /// Load-test an OpenAI-compatible server (realizar, llama-server, ...).
    Bench(bench::BenchCli),
    /// Exit 0 when a URL (default: this machine's port 8080 /health)
    /// answers 2xx: the container image's health check.
    Probe(probe::ProbeArgs),
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// One catalog model, or all of them.
    #[arg(value_enum)]
    pub which: Option<models::Catalog>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    models::set_models_dir(cli.models_dir.as_deref());
    match cli.command {
        Command::Inspect(a) => files::inspect(&a),
        Command::Pull(a) => models::pull(a.which),
        Command::Quantize(a) => files::quantize(&a),
        Command::Export(a) => files::export(&a),
        Command::Run(a) => run::run_cmd(a),
        Command::Perplexity(a) => run::perplexity_cmd(a),
        Command::Serve(a) => serve::serve(a),
        Command::Node(a) => node::node(a),
        Command::Gateway(a) => gateway::gateway(a),
        Command::Cluster(a) => cluster::cluster(a),
        Command::Bench(a) => bench::command(a),
        Command::Probe(a) => probe::probe(&a),
    }
}

/// Logging to stderr (RUST_LOG, default info) and the async runtime the
/// servers run on: two workers, as the compute has threads of its own.
fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime(2)
}

/// Logging, and a runtime with `workers` threads; one is a current-thread
/// runtime, whose tasks wake each other without waking another thread.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal; plain text for a log collector (a
        // container's, a service manager's).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    io_runtime(workers)
}

/// A runtime with `workers` threads (one: a current-thread runtime on the
/// calling thread), each asking for the short I/O slice ([`sched`]).
pub(crate) fn io_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let us = sched::io_slice_us();
    let slice = move || {
        if let Err(e) = sched::short_slice(us) {
            tracing::debug!("no {us} µs scheduler slice for an I/O thread: {e}");
        }
    };
    if workers <= 1 {
        slice();
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_start(slice)
        .enable_all()
        .build()
}

pub fn fail(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("realizar {cmd}: {e}");
    ExitCode::FAILURE
}
