//! The floor under any proxy's cost on this machine: a TCP relay that
//! copies bytes between a client and one upstream, one connection for one,
//! with no HTTP, routing or metrics — on the gateway's runtime (tokio,
//! one thread). `scripts/bench_gateway.py` measures its CPU per request
//! beside the gateway's, in the same run, so the gateway's own share can
//! be told from what the kernel and the runtime charge for moving the
//! bytes at all.
//!
//!     relay_floor LISTEN_PORT UPSTREAM_HOST:PORT

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(port), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: relay_floor LISTEN_PORT UPSTREAM_HOST:PORT");
        std::process::exit(2);
    };
    let listen = format!("127.0.0.1:{port}");
    let upstream = upstream.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let l = TcpListener::bind(&listen).await?;
            loop {
                let (mut client, _) = l.accept().await?;
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut node) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = node.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                });
            }
        })
}
