//! `realizar probe [URL]`: a health check for images that have no curl (the
//! container image is the binary and its libraries). One GET over plain
//! HTTP/1.1; exit 0 when it answers 2xx in time, 1 otherwise, saying why.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// What to GET (http only).
    #[arg(default_value = "http://127.0.0.1:8080/health")]
    pub url: String,
    /// Seconds to wait for the whole answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout_secs: f64,
}

pub fn probe(a: &ProbeArgs) -> ExitCode {
    match get(
        &a.url,
        Duration::from_secs_f64(a.timeout_secs.clamp(0.1, 600.0)),
    ) {
        Ok(200..=299) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("probe: {} answered {status}", a.url);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("probe: {}: {e}", a.url);
            ExitCode::FAILURE
        }
    }
}

/// The status code `url` answers a GET with.
fn get(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs can be probed")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // The status line is all that matters: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]).map_err(|e| e.to_string())? {
            0 => break,
            k => n += k,
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}
