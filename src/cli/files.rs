//! `inspect`, `quantize` and `export`: what a model file holds, and writing
//! it in another form.

use std::process::ExitCode;

use clap::ValueEnum;
use realizar_node::format::ModelSummary;

use super::fail;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A .gguf file, a .safetensors file or a Hugging Face model directory.
    pub path: std::path::PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every tensor (name, type, shape, offset, bytes).
    #[arg(long)]
    pub tensors: bool,
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    pub input: std::path::PathBuf,
    pub output: std::path::PathBuf,
    /// Target type: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
    /// Q6_K, or Q4_K_M (the mix).
    #[arg(long = "type", value_parser = parse_recipe)]
    pub dtype: realizar_node::format::convert::Recipe,
}

fn parse_recipe(s: &str) -> Result<realizar_node::format::convert::Recipe, String> {
    realizar_node::format::convert::Recipe::from_name(s).ok_or_else(|| {
        format!("unknown type {s:?}: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K or Q4_K_M")
    })
}

/// Tensor types `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum ExportType {
    F32,
    F16,
    Bf16,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    pub input: std::path::PathBuf,
    /// Output directory (created).
    pub output: std::path::PathBuf,
    /// Tensor type.
    #[arg(long = "type", value_enum, default_value = "F32", ignore_case = true)]
    pub dtype: ExportType,
}

pub fn inspect(a: &InspectArgs) -> ExitCode {
    let (path, json, tensors) = (a.path.as_path(), a.json, a.tensors);
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

pub fn quantize(a: &QuantizeArgs) -> ExitCode {
    let (input, output, t) = (a.input.as_path(), a.output.as_path(), a.dtype);
    use std::io::Write;
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

pub fn export(a: &ExportArgs) -> ExitCode {
    let (input, output) = (a.input.as_path(), a.output.as_path());
    use realizar_node::format::StDtype;
    let t = match a.dtype {
        ExportType::F32 => StDtype::F32,
        ExportType::F16 => StDtype::F16,
        ExportType::Bf16 => StDtype::BF16,
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
