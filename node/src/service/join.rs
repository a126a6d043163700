//! `--join GATEWAY`: the node announces itself to a gateway by sending its
//! load report every second; the gateway adds it to its membership on the
//! first one and treats silence as it does a failed poll. While the gateway
//! does not take it (restarting, say), every quarter second: a gateway
//! started again hears from every node within that.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::facade::Node;

pub async fn heartbeat(node: Arc<Node>, gateway: String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}/admin/nodes/join", gateway.trim_end_matches('/'));
    let mut warned = false;
    loop {
        let at = node.now_ms();
        let body = serde_json::to_vec(&node.report()).unwrap_or_default();
        let mut req = hyper::Request::post(&url).header("content-type", "application/json");
        if let Some(t) = &node.admin_token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let sent = match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => tokio::time::timeout(Duration::from_secs(2), client.request(r)).await,
            Err(e) => {
                tracing::error!(error = %e, "join: bad gateway URL");
                return;
            }
        };
        match sent {
            Ok(Ok(r)) if r.status().is_success() => {
                node.gateway_seen(at);
                if warned {
                    tracing::info!(gateway = %gateway, "joined");
                }
                warned = false;
            }
            other => {
                if !warned {
                    let why = match other {
                        Ok(Ok(r)) => format!("HTTP {}", r.status()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timed out".into(),
                    };
                    tracing::warn!(gateway = %gateway, error = %why, "join: the gateway did not take the report; retrying");
                    warned = true;
                }
            }
        }
        let pause = if warned {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(pause).await;
    }
}
