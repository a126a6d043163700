//! `realizar bench`: a load generator for any OpenAI-compatible server
//! (realizar, llama.cpp's llama-server, vLLM ...). For each concurrency level
//! it keeps that many requests in flight until `--requests` have finished,
//! and reports time to first token, inter-token latency and end-to-end
//! latency (p50/p90/p99), request and token throughput, and errors, as a
//! markdown table and optionally JSON. Given several URLs it sends request
//! `i` to URL `i mod n`, so the targets are measured interleaved, under the
//! same conditions, and reported apart (how the gateway's overhead over
//! its node is measured: BENCHMARKS.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use realizar_shared::error::ErrorBody;
use realizar_shared::openai::{
    AnyChunk, Completion, CompletionRequest, GenParams, Prompt, StreamOptions, TokenizeRequest,
    Tokenized,
};
use realizar_shared::sse::{SseEvent, SseReader};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// One or more targets; requests alternate between them.
    pub urls: Vec<String>,
    pub model: String,
    pub concurrency: Vec<usize>,
    pub requests: usize,
    pub prompt_tokens: usize,
    pub prompts_file: Option<std::path::PathBuf>,
    pub max_tokens: usize,
    pub stream: bool,
    pub progress: bool,
    /// Part of every prompt's first line, different for every run.
    pub run_tag: String,
}

/// A tag unlikely to repeat between runs: the clock's nanoseconds and the
/// process id, in base 36.
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 40);
    let mut s = Vec::new();
    for _ in 0..6 {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(x % 36) as usize]);
        x /= 36;
    }
    String::from_utf8(s).unwrap_or_default()
}

#[derive(Debug, Clone, Default)]
struct Sample {
    ok: bool,
    error: Option<String>,
    ttft: f64,
    itl: Vec<f64>,
    e2e: f64,
    prompt_tokens: usize,
    completion_tokens: usize,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (p / 100.0 * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// Results of one concurrency level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LevelReport {
    /// The target (its base URL).
    pub url: String,
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub wall_s: f64,
    pub request_throughput: f64,
    pub output_tokens_per_s: f64,
    pub prompt_tokens_per_s: f64,
    pub mean_prompt_tokens: f64,
    pub mean_output_tokens: f64,
    pub ttft_ms: [f64; 3],
    pub itl_ms: [f64; 3],
    pub e2e_ms: [f64; 3],
    /// Output tokens/s of one request while it generates (1 / mean ITL).
    pub decode_tokens_per_s_per_request: f64,
}

fn split_url(url: &str) -> String {
    url.trim_end_matches('/').trim_end_matches("/v1").to_owned()
}

async fn post<T: serde::Serialize>(
    client: &HttpClient,
    url: &str,
    body: &T,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    client.request(req).await.map_err(|e| format!("{url}: {e}"))
}

/// A prompt of about `n` tokens: calibrated with the server's /tokenize when
/// it has one (realizar and llama-server both do), else ~1 token per word.
async fn synthetic_prompt(client: &HttpClient, base: &str, model: &str, n: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "history",
        "of",
        "science",
        "shows",
        "that",
        "careful",
        "measurement",
        "and",
        "open",
        "debate",
        "move",
        "knowledge",
        "forward",
        "while",
        "every",
        "new",
        "instrument",
        "reveals",
        "questions",
    ];
    let make = |k: usize| -> String {
        (0..k)
            .map(|i| WORDS[(i * 7 + i / 20) % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut k = n.max(1);
    for _ in 0..4 {
        let text = make(k);
        let body = TokenizeRequest {
            model: Some(model.to_owned()),
            content: text.clone(),
            add_special: false,
            with_pieces: false,
        };
        let Ok(resp) = post(client, &format!("{base}/tokenize"), &body).await else {
            break;
        };
        if !resp.status().is_success() {
            break;
        }
        let Ok(bytes) = resp.into_body().collect().await.map(|b| b.to_bytes()) else {
            break;
        };
        let got = match serde_json::from_slice::<Tokenized>(&bytes) {
            Ok(Tokenized::Ids { tokens }) => tokens.len(),
            Ok(Tokenized::Pieces { tokens }) => tokens.len(),
            Err(_) => break,
        };
        if got == n || got == 0 {
            break;
        }
        k = ((k as f64) * n as f64 / got as f64).round().max(1.0) as usize;
    }
    make(k)
}

async fn one_request(client: &HttpClient, base: &str, a: &BenchArgs, prompt: String) -> Sample {
    let mut s = Sample::default();
    let body = CompletionRequest {
        model: Some(a.model.clone()),
        prompt: Prompt::Text(prompt),
        logprobs: None,
        params: GenParams {
            max_tokens: Some(a.max_tokens as u64),
            temperature: Some(0.0),
            ignore_eos: true,
            stream: a.stream,
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            ..Default::default()
        },
    };
    let t0 = Instant::now();
    let resp = match post(client, &format!("{base}/v1/completions"), &body).await {
        Ok(r) => r,
        Err(e) => {
            s.error = Some(e);
            return s;
        }
    };
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        s.error = Some(format!("HTTP {status}: {}", String::from_utf8_lossy(&text)));
        return s;
    }
    if !a.stream {
        let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
            s.error = Some("reading the body failed".into());
            return s;
        };
        s.e2e = t0.elapsed().as_secs_f64();
        s.ttft = s.e2e;
        let Ok(v) = serde_json::from_slice::<Completion>(&bytes) else {
            s.error = Some("the response is not a completion".into());
            return s;
        };
        if let Some(Some(u)) = v.usage {
            s.prompt_tokens = u.prompt_tokens;
            s.completion_tokens = u.completion_tokens;
        }
        if s.completion_tokens > 1 {
            let per = (s.e2e) / s.completion_tokens as f64;
            s.itl = vec![per; s.completion_tokens - 1];
        }
        s.ok = true;
        return s;
    }
    let mut reader = SseReader::default();
    let mut last: Option<Instant> = None;
    let mut chunks = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            s.error = Some("the stream broke".into());
            return s;
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let events = match reader.push(data) {
            Ok(e) => e,
            Err(e) => {
                s.error = Some(e.to_string());
                return s;
            }
        };
        for event in events {
            let SseEvent::Data(payload) = event else {
                continue;
            };
            if let Ok(e) = serde_json::from_str::<ErrorBody>(&payload) {
                s.error = Some(e.error.message);
                return s;
            }
            let Ok(chunk) = serde_json::from_str::<AnyChunk>(&payload) else {
                s.error = Some(format!("not a chunk: {payload}"));
                return s;
            };
            if let Some(Some(u)) = chunk.usage {
                s.prompt_tokens = u.prompt_tokens;
                s.completion_tokens = u.completion_tokens;
            }
            if chunk.choices.iter().any(|c| !c.text().is_empty()) {
                let now = Instant::now();
                match last {
                    None => s.ttft = (now - t0).as_secs_f64(),
                    Some(l) => s.itl.push((now - l).as_secs_f64()),
                }
                last = Some(now);
                chunks += 1;
            }
        }
    }
    s.e2e = t0.elapsed().as_secs_f64();
    if s.completion_tokens == 0 {
        s.completion_tokens = chunks;
    }
    s.ok = last.is_some();
    if !s.ok {
        s.error = Some("no tokens in the stream".into());
    }
    s
}

/// One concurrency level: a report per target, in the order of `bases`.
async fn level(
    client: &HttpClient,
    bases: &[String],
    a: &BenchArgs,
    prompts: &[String],
    conc: usize,
) -> Vec<LevelReport> {
    let next = Arc::new(AtomicUsize::new(0));
    let bar = if a.progress {
        let b = indicatif::ProgressBar::new((a.requests * bases.len()) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "concurrency {msg:>3} [{bar:40}] {pos}/{len} {elapsed_precise}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(conc.to_string());
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let prompts: Arc<[String]> = prompts.into();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, bases, a, next, bar) = (
            client.clone(),
            bases.to_vec(),
            a.clone(),
            next.clone(),
            bar.clone(),
        );
        let prompts = prompts.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= a.requests * bases.len() {
                    break;
                }
                // A distinct first line per request, level and run keeps
                // prefix caches from turning the benchmark into a cache test
                // (a second level or run, or a second target over the same
                // node, would otherwise find the first one's prompts cached;
                // llama-server picks the slot whose cached prompt matches).
                let k = bases.len();
                let prompt = format!(
                    "Request {}-c{conc}-{i}.\n{}",
                    a.run_tag,
                    prompts[(i / k) % prompts.len()]
                );
                out.push((i % k, one_request(&client, &bases[i % k], &a, prompt).await));
                bar.inc(1);
            }
            out
        }));
    }
    let mut by_target: Vec<Vec<Sample>> = vec![Vec::new(); bases.len()];
    for t in tasks {
        for (k, s) in t.await.unwrap_or_default() {
            by_target[k].push(s);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    bases
        .iter()
        .zip(&by_target)
        .map(|(base, mine)| report(base, conc, wall, mine))
        .collect()
}

/// A target's figures from its samples; throughput over `wall`, the whole
/// level's time (shared with the other targets, if any).
fn report(url: &str, conc: usize, wall: f64, samples: &[Sample]) -> LevelReport {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let mut ttft: Vec<f64> = ok.iter().map(|s| s.ttft * 1e3).collect();
    let mut itl: Vec<f64> = ok
        .iter()
        .flat_map(|s| s.itl.iter().map(|x| x * 1e3))
        .collect();
    let mut e2e: Vec<f64> = ok.iter().map(|s| s.e2e * 1e3).collect();
    let out_tokens: usize = ok.iter().map(|s| s.completion_tokens).sum();
    let in_tokens: usize = ok.iter().map(|s| s.prompt_tokens).sum();
    let mean_itl = if itl.is_empty() {
        f64::NAN
    } else {
        itl.iter().sum::<f64>() / itl.len() as f64
    };
    let n_ok = ok.len().max(1) as f64;
    LevelReport {
        url: url.to_owned(),
        concurrency: conc,
        requests: samples.len(),
        errors: samples.len() - ok.len(),
        first_error: samples.iter().find_map(|s| s.error.clone()),
        wall_s: wall,
        request_throughput: ok.len() as f64 / wall,
        output_tokens_per_s: out_tokens as f64 / wall,
        prompt_tokens_per_s: in_tokens as f64 / wall,
        mean_prompt_tokens: in_tokens as f64 / n_ok,
        mean_output_tokens: out_tokens as f64 / n_ok,
        ttft_ms: [
            percentile(&mut ttft, 50.0),
            percentile(&mut ttft, 90.0),
            percentile(&mut ttft, 99.0),
        ],
        itl_ms: [
            percentile(&mut itl, 50.0),
            percentile(&mut itl, 90.0),
            percentile(&mut itl, 99.0),
        ],
        e2e_ms: [
            percentile(&mut e2e, 50.0),
            percentile(&mut e2e, 90.0),
            percentile(&mut e2e, 99.0),
        ],
        decode_tokens_per_s_per_request: 1e3 / mean_itl,
    }
}

/// The reports as a markdown table; a target column when there are several.
pub fn markdown(reports: &[LevelReport]) -> String {
    let several = reports.iter().any(|r| r.url != reports[0].url);
    let (head, rule) = if several {
        ("| target ", "|---")
    } else {
        ("", "")
    };
    let mut s = format!(
        "{head}| concurrency | requests | errors | req/s | output tok/s | prompt tok/s | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms | E2E p50/p90/p99 ms |\n\
         {rule}|---:|---:|---:|---:|---:|---:|---|---|---|\n",
    );
    for r in reports {
        let f = |v: [f64; 3]| format!("{:.1} / {:.1} / {:.1}", v[0], v[1], v[2]);
        if several {
            s.push_str(&format!("| {} ", r.url));
        }
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {} | {} | {} |\n",
            r.concurrency,
            r.requests,
            r.errors,
            r.request_throughput,
            r.output_tokens_per_s,
            r.prompt_tokens_per_s,
            f(r.ttft_ms),
            f(r.itl_ms),
            f(r.e2e_ms)
        ));
    }
    s
}

pub fn run(a: BenchArgs) -> Result<Vec<LevelReport>, String> {
    let rt = super::io_runtime(2).map_err(|e| e.to_string())?;
    rt.block_on(async move {
        // A fresh connection per request: some servers (llama-server) close
        // idle keep-alive connections in ways a pooled client trips over.
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let bases: Vec<String> = a.urls.iter().map(|u| split_url(u)).collect();
        let Some(first) = bases.first() else {
            return Err("no --url".into());
        };
        let prompts = match &a.prompts_file {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let v: Vec<String> = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect();
                if v.is_empty() {
                    return Err(format!("{}: no prompts", p.display()));
                }
                v
            }
            None => vec![synthetic_prompt(&client, first, &a.model, a.prompt_tokens).await],
        };
        let mut reports = Vec::new();
        for &c in &a.concurrency {
            reports.extend(level(&client, &bases, &a, &prompts, c.max(1)).await);
        }
        Ok(reports)
    })
}

/// Time to first token of two requests that share a system prompt of about
/// `n` tokens (the second should reuse the first's KV blocks), over several
/// trials with a different shared prompt each time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrefixTrial {
    pub first_ttft_ms: f64,
    pub second_ttft_ms: f64,
    pub ratio: f64,
}

pub fn prefix_reuse(a: BenchArgs, n: usize, trials: usize) -> Result<Vec<PrefixTrial>, String> {
    let rt = super::io_runtime(2).map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let Some(base) = a.urls.first().map(|u| split_url(u)) else {
            return Err("no --url".into());
        };
        let shared = synthetic_prompt(&client, &base, &a.model, n).await;
        let mut out = Vec::new();
        let one = BenchArgs {
            max_tokens: 1,
            stream: true,
            ..a.clone()
        };
        for t in 0..trials {
            let system = format!("Trial {}-{t} {}.", a.run_tag, shared);
            let first = one_request(
                &client,
                &base,
                &one,
                format!("{system}\nQuestion: what is measured first?"),
            )
            .await;
            let second = one_request(
                &client,
                &base,
                &one,
                format!("{system}\nQuestion: why does it matter?"),
            )
            .await;
            if let Some(e) = first.error.or(second.error) {
                return Err(e);
            }
            out.push(PrefixTrial {
                first_ttft_ms: first.ttft * 1e3,
                second_ttft_ms: second.ttft * 1e3,
                ratio: second.ttft / first.ttft,
            });
        }
        Ok(out)
    })
}

/// `realizar bench`'s flags.
#[derive(clap::Args)]
pub struct BenchCli {
    /// Server base URL, e.g. http://127.0.0.1:8080. Repeat it to compare
    /// servers: requests alternate between them and each gets its own row.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Concurrency levels, run one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub concurrency: Vec<usize>,
    /// Requests per concurrency level (per target, with several URLs).
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    /// Length of the synthetic prompt, in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Prompts, one per line (instead of the synthetic prompt).
    #[arg(long)]
    pub prompts_file: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Stream the responses (needed for TTFT and inter-token latency).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub stream: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Instead of the load test: time to first token of a request and of
    /// a second one sharing its first N prompt tokens (prefix reuse).
    #[arg(long)]
    pub prefix_reuse: Option<usize>,
}

/// Run `realizar bench`: a load test, or the prefix-reuse trials.
pub fn command(a: BenchCli) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fail = super::fail;
    let BenchCli {
        urls,
        model,
        concurrency,
        requests,
        prompt_tokens,
        prompts_file,
        max_tokens,
        stream,
        json,
        quiet,
        prefix_reuse: reuse,
    } = a;
    let args = BenchArgs {
        urls,
        model,
        concurrency,
        requests,
        prompt_tokens,
        prompts_file,
        max_tokens,
        stream,
        progress: !quiet,
        run_tag: run_tag(),
    };
    if let Some(n) = reuse {
        return match prefix_reuse(args, n, 5) {
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
    match run(args) {
        Ok(r) => {
            print!("{}", markdown(&r));
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
