//! For tests that run several `realizar` processes (nodes, gateways): a
//! process killed (SIGKILL) when dropped, free loopback ports, polling.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed with SIGKILL when dropped (a `kill -9`).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
