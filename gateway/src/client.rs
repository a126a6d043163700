//! The gateway's HTTP client to its nodes: one pooled hyper client for
//! polls, control calls and proxied requests, presenting the cluster token
//! on `/admin/*`.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use realizar_shared::control::{
    Affinity, LoadReport, LoadRequest, AFFINITY_HEADER, CONVERSATION_HEADER,
};

type Inner = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone)]
pub struct NodeClient {
    inner: Inner,
    token: Option<String>,
    poll_timeout: Duration,
}

impl NodeClient {
    pub fn new(token: Option<String>) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        NodeClient {
            inner,
            token,
            poll_timeout: Duration::from_secs(1),
        }
    }

    fn admin(&self, b: hyper::http::request::Builder) -> hyper::http::request::Builder {
        match &self.token {
            Some(t) => b.header("authorization", format!("Bearer {t}")),
            None => b,
        }
    }

    /// Send a request and read the whole answer within `limit`.
    async fn fetch(
        &self,
        req: hyper::Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    /// `GET /admin/report`, within the poll timeout.
    pub async fn report(&self, base: &str) -> Result<LoadReport, String> {
        let req = self
            .admin(hyper::Request::get(format!("{base}/admin/report")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.fetch(req, self.poll_timeout).await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("report: {e}"))
    }

    /// `POST /admin/models`; waits for the load to finish.
    pub async fn load(&self, base: &str, r: &LoadRequest) -> Result<(), String> {
        let body = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        let req = self
            .admin(hyper::Request::post(format!("{base}/admin/models")))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
    }

    /// `DELETE /admin/models/{id}?force=true`: the node fails what is still
    /// in flight on it (the coordinator asks only once the replica is
    /// idle). Forced, as placement decides over a node's own pins (the
    /// models `realizar serve` and `realizar node --model` start with).
    pub async fn unload(&self, base: &str, id: &str) -> Result<(), String> {
        let req = self
            .admin(hyper::Request::delete(format!(
                "{base}/admin/models/{}?force=true",
                path_segment(id)
            )))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.fetch(req, Duration::from_secs(30)).await?;
        // Already gone counts as done.
        if status.is_success() || status == hyper::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
    }

    /// Send a client's request on to a node; the response streams.
    pub async fn forward(
        &self,
        base: &str,
        path_and_query: &str,
        body: Bytes,
        affinity: &Affinity,
    ) -> Result<hyper::Response<Incoming>, String> {
        self.forward_with(base, path_and_query, body, affinity, &[])
            .await
    }

    /// `forward`, with more headers (failover.rs's).
    pub async fn forward_with(
        &self,
        base: &str,
        path_and_query: &str,
        body: Bytes,
        affinity: &Affinity,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>, String> {
        // A node's URL comes from its report or the command line: a bad one
        // is this request's failure on that node, not a panic.
        let mut req = hyper::Request::post(format!("{base}{path_and_query}"))
            .header("content-type", "application/json");
        let (start, conversation) = affinity.to_headers();
        if let Some(v) = start {
            req = req.header(AFFINITY_HEADER, v);
        }
        if let Some(v) = conversation {
            req = req.header(CONVERSATION_HEADER, v);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("{base}: {e}"))?;
        self.inner.request(req).await.map_err(|e| e.to_string())
    }

    /// A node's `/metrics` text.
    pub async fn metrics(&self, base: &str) -> Result<String, String> {
        let req = hyper::Request::get(format!("{base}/metrics"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.fetch(req, Duration::from_secs(2)).await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    }
}

/// A model id as one URL path segment: everything but RFC 3986's
/// unreserved characters percent-encoded (ids may hold `/`, `@`, spaces).
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_become_one_path_segment() {
        assert_eq!(
            super::path_segment("org/model q4@2"),
            "org%2Fmodel%20q4%402"
        );
        assert_eq!(
            super::path_segment("smollm2-135M_v1.0~x"),
            "smollm2-135M_v1.0~x"
        );
    }
}
