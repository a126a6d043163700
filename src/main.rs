//! `realizar`: one binary for every role (inspect, serve, node, gateway, ...).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Serve the OpenAI API on one machine (node and front door in one process).
    Serve {
        /// Model file to serve; the default model is fetched when absent.
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pull(which: &str) -> ExitCode {
    let script = repo_root().join("scripts/fetch-models.sh");
    match std::process::Command::new("bash")
        .arg(&script)
        .arg(which)
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

fn serve(model: Option<PathBuf>) -> ExitCode {
    let model = match model {
        Some(m) => m,
        None => {
            let default = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
            if !default.is_file() && pull("smollm2") != ExitCode::SUCCESS {
                return ExitCode::FAILURE;
            }
            default
        }
    };
    match ModelSummary::of_path(&model, false) {
        Ok(s) => {
            eprintln!(
                "realizar serve: {} ({}, {} parameters) opens fine, but serving is not yet implemented: \
                 the node and its OpenAI API arrive with the node issue.",
                model.display(),
                s.architecture.as_deref().unwrap_or("unknown architecture"),
                s.parameter_count
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("realizar serve: {e}");
            ExitCode::FAILURE
        }
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
        Command::Serve { model } => serve(model),
    }
}
