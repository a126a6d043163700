//! For tests that run several `realizar` processes (nodes, gateways): a
//! process killed (SIGKILL) when dropped, free loopback ports, polling, a
//! gateway and its fleet view.

use std::net::SocketAddr;
use std::process::{Child, Stdio};

use serde_json::Value;
use std::time::{Duration, Instant};

/// A child process, killed with SIGKILL when dropped (a `kill -9`).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free now and not handed out before in this test process.
/// The port is only bound later, by the process given it; until then the
/// kernel may offer it again, and two processes of one fleet (or of two tests
/// running side by side) on one port leave one of them unable to listen — a
/// node that took its gateway's port answered the gateway's routes with 404.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A `realizar cluster` process, stopped when dropped as an operator would:
/// SIGTERM (it stops its nodes), SIGKILL if still running 20 s later.
pub struct Cluster(pub Child);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cluster's node process named `id`, if running (found through
/// /proc: its children and their command lines).
pub fn node_pid(cluster: u32, id: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{cluster}/task")).ok()?;
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let named = args
                .windows(2)
                .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            if named && !zombie {
                return Some(pid);
            }
        }
    }
    None
}

/// `realizar cluster` of `nodes` node processes with these `--model`
/// specs and further flags.
pub fn cluster(nodes: usize, models: &[&str], extra: &[&str]) -> (Cluster, Gateway) {
    let port = free_port();
    let mut cmd = super::realizar();
    cmd.args([
        "cluster",
        "--nodes",
        &nodes.to_string(),
        "--port",
        &port.to_string(),
    ]);
    cmd.args(["--threads", "1"]).args(extra);
    for m in models {
        cmd.args(["--model", m]);
    }
    let c = Cluster(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gw = Gateway {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: Vec::new(),
    };
    (c, gw)
}

/// `realizar ARGS…`, its output discarded.
pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Proc {
    Proc(
        super::realizar()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A node on `port` named `id`, with one compute thread and `extra` flags.
pub fn node(port: u16, id: &str, extra: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = vec!["node", "--port", &port, "--id", id, "--threads", "1"];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Each result (status, stream ended with `[DONE]` or not a stream) a 200
/// that was whole.
pub fn assert_all_served(results: &[Result<(u16, bool), String>]) {
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok((200, true))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {}: {failed:?}",
        failed.len(),
        results.len()
    );
}

/// Poll `f` until it holds (then how long that took), at most `limit`.
pub fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A gateway process's address and the admin header it needs, with
/// readers of its fleet view.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: Vec<(&'static str, String)>,
}

impl Gateway {
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> super::Response {
        let h: Vec<(&str, &str)> = self.admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let b = body.map(|b| b.to_string()).unwrap_or_default();
        super::raw_http(self.addr, method, path, &h, b.as_bytes()).unwrap()
    }

    /// The fleet view (null while the gateway is not answering yet).
    pub fn cluster(&self) -> Value {
        let h: Vec<(&str, &str)> = self.admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
        super::raw_http(self.addr, "GET", "/admin/cluster", &h, b"")
            .ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(Value::Null)
    }

    pub fn model(&self, id: &str) -> Value {
        self.cluster()["models"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The nodes serving `id`, sorted.
    pub fn ready(&self, id: &str) -> Vec<String> {
        let mut v: Vec<String> = self.model(id)["ready"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The nodes whose own report lists `id` in any state, sorted.
    pub fn holders(&self, id: &str) -> Vec<String> {
        let c = self.cluster();
        let mut v: Vec<String> = c["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| {
                n["last_report"]["models"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["id"] == id))
            })
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    pub fn node_state(&self, id: &str) -> String {
        self.cluster()["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["id"] == id))
            .map(|n| n["state"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Value> {
        self.cluster()["events"].as_array().unwrap().clone()
    }
}

/// `realizar gateway` over `nodes` (loopback ports) serving `model`.
pub fn gateway(nodes: &[u16], model: &str, admin_key: Option<&std::path::Path>) -> (Proc, Gateway) {
    let port = free_port();
    let mut args: Vec<String> = ["gateway", "--port", &port.to_string(), "--model", model]
        .map(String::from)
        .to_vec();
    for p in nodes {
        args.extend(["--node".into(), format!("http://127.0.0.1:{p}")]);
    }
    let mut admin = Vec::new();
    if let Some(k) = admin_key {
        args.extend(["--admin-key-file".into(), k.display().to_string()]);
        let key = std::fs::read_to_string(k).unwrap().trim().to_owned();
        admin.push(("Authorization", format!("Bearer {key}")));
    }
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    (spawn(&args), Gateway { addr, admin })
}

/// `n` calls of `f(i)`, `workers` at a time. Once `after` of them have
/// finished (within `limit`), `meanwhile` runs (a kill, a join) while the
/// rest go on. The results, by `i`.
pub fn load<T: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> T + Sync,
    after: usize,
    limit: Duration,
    meanwhile: impl FnOnce(),
) -> Vec<T> {
    let next = std::sync::Mutex::new(0usize);
    let done = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = {
                    let mut k = next.lock().unwrap();
                    *k += 1;
                    *k - 1
                };
                if i >= n {
                    return;
                }
                let r = f(i);
                done.lock().unwrap().push((i, r));
            });
        }
        assert!(
            wait(limit, || done.lock().unwrap().len() >= after).is_some(),
            "fewer than {after} of {n} requests done in {limit:?}"
        );
        meanwhile();
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}
