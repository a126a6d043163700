//! Helpers shared by the test binaries: paths of the models and goldens,
//! the derived SmolLM2 files, and for tests that drive a running `realizar`
//! server: start it on a free port, wait for it, speak plain HTTP/1.1 to it,
//! stop it.
#![allow(dead_code)]

pub mod fleet;
pub mod generation;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `realizar <args> --port 0`, waiting until it listens.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// The binary under test: REALIZAR_TEST_BIN (to run these tests against
    /// another build, such as the commit before a fix), else this build's.
    pub fn bin() -> String {
        std::env::var("REALIZAR_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_realizar").to_owned())
    }

    /// `start`, with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = realizar_at(&Self::bin())
            .args(args)
            .args(["--port", "0"])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start realizar");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("realizar: listening on http://") {
                    let _ = tx.send(a.trim().to_owned());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()))
            .parse()
            .expect("address");
        Server { child, addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Wait until /health says 200 (a model is ready).
    pub fn wait_ready(&self, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(r) = try_http(self.addr, "GET", "/health", None) {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "server not ready after {timeout:?}: {:?}",
            self.log.lock().unwrap()
        );
    }

    pub fn get(&self, path: &str) -> Response {
        http(self.addr, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Response {
        http(self.addr, "POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Response {
        http(self.addr, "DELETE", path, None)
    }

    /// Open file descriptors of the server process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Wait up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident set size of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        self.proc_status_kib("VmRSS") * 1024
    }

    /// A `kB` field of /proc/PID/status (VmRSS, RssAnon, RssFile, ...).
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Response {
    try_http(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<Response> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    raw_http(addr, method, path, &[], body.as_bytes())
}

/// One request with extra headers and a raw body, read to the end.
pub fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    raw_http_watched(addr, method, path, headers, body, |_| {})
}

/// `raw_http`, showing `seen` the raw bytes received so far after each
/// read (to act in the middle of a stream).
pub fn raw_http_watched(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    mut seen: impl FnMut(&[u8]),
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        seen(&raw);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `realizar` with the catalog models taken from the checkout's models/
/// (where scripts/fetch-models.sh puts them) unless REALIZAR_MODELS says
/// otherwise.
pub fn realizar() -> Command {
    realizar_at(env!("CARGO_BIN_EXE_realizar"))
}

fn realizar_at(bin: &str) -> Command {
    let mut c = Command::new(bin);
    if std::env::var_os("REALIZAR_MODELS").is_none() {
        c.env("REALIZAR_MODELS", root().join("models"));
    }
    c
}

/// The Python interpreter of the test oracles (openai, tokenizers, numpy):
/// REALIZAR_TEST_PYTHON, else the virtualenv scripts/test.sh makes, else python3.
pub fn python() -> String {
    std::env::var("REALIZAR_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/python");
        if std::path::Path::new(venv).exists() {
            venv.to_owned()
        } else {
            "python3".to_owned()
        }
    })
}

/// The project root.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A golden file from tests/golden.
pub fn golden(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/golden").join(name)).unwrap())
        .unwrap()
}

/// The fetched SmolLM2 Q4_1 file.
pub fn q4_1_path() -> std::path::PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

/// models/derived/SmolLM2-135M-Instruct.<type>.gguf: made once from the Q4_1
/// file by our convert tool (into a partial file, then renamed, so
/// concurrent test binaries never see a half-written one).
pub fn derived(t: realizar_node::tensor::GgmlType) -> std::path::PathBuf {
    use realizar_node::format::{convert::convert, GgufFile};
    static LOCK: std::sync::OnceLock<Mutex<()>> = std::sync::OnceLock::new();
    let _g = LOCK.get_or_init(Default::default).lock().unwrap();
    let dir = root().join("models/derived");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("SmolLM2-135M-Instruct.{}.gguf", t.name()));
    if !out.is_file() {
        let src = GgufFile::open(q4_1_path()).unwrap();
        let tmp = dir.join(format!(".{}.{}.partial", t.name(), std::process::id()));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        convert(&src, t, &mut f, |_, _, _| {}).unwrap();
        drop(f);
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// What tests/openai_client.py needs: a Python with the `openai` package,
/// a scratch directory, and the file holding the independent expectation —
/// the CLI's single-sequence greedy chat answer (24 tokens, f16 KV) to the
/// script's question.
pub fn openai_client_setup() -> (String, tempfile::TempDir, std::path::PathBuf) {
    let py = python();
    let probe = Command::new(&py).args(["-c", "import openai"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "{py} cannot import openai: run scripts/test.sh (it makes target/pyenv) or set REALIZAR_TEST_PYTHON"
    );
    // tests/openai_client.py's QUESTION.
    let question = "Write a short story about a dragon who learns to fly.";
    let out = realizar()
        .args(["run", "--model", "smollm2", "--chat", "--prompt", question])
        .args([
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--kv-type",
            "f16",
        ])
        .output()
        .expect("realizar run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.txt");
    std::fs::write(&expected, &out.stdout).unwrap();
    (py, dir, expected)
}

/// `promtool check metrics` on an exposition (written to `file` first):
/// fails the test with promtool's complaint.
pub fn promtool_check(file: &std::path::Path, text: &str) {
    std::fs::write(file, text).unwrap();
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    assert!(
        check.status.success(),
        "promtool rejected {}:\n{}\n{}",
        file.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// What a node counts against its memory budget for catalog model `id`
/// with a `kv_mib` KV pool (its file, the weights repacked on this CPU, the
/// pool), in MiB: for tests whose budgets must hold one model and not two
/// whether or not this CPU repacks.
pub fn model_need_mib(id: &str, kv_mib: u64) -> u64 {
    let s = Server::start(&["node", "--memory-budget-mib", "100000", "--threads", "1"]);
    let r = s.post(
        "/admin/models",
        &serde_json::json!({"id": id, "path": id, "options": {"kv_memory_mib": kv_mib, "n_ctx": 512}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["bytes"].as_u64().expect("bytes") >> 20
}
