//! Token-exact stream failover. A streamed request (one prompt, one
//! choice) asks its node for token ids (`TOKEN_IDS_HEADER`): the prompt as
//! the model saw it, and with each chunk the tokens whose text it carries,
//! as SSE comments this relay strips before the client sees them. When the
//! node's stream breaks before `[DONE]` (its connection drops, or it ends
//! with an error event), the relay asks another owner to continue from
//! the prompt and the tokens sent so far under the same response id
//! (`RESUME_HEADER`), and goes on relaying that stream: the client sees one
//! stream. At most `MAX_RESUMES` times; then an OpenAI-shaped error event,
//! never a silent end.
//!
//! For greedy decoding the continuation is what the first node would have
//! sent (up to numerical near-ties between the nodes' batches); seeded
//! sampling draws by position, so it holds there too.

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use realizar_shared::control::{
    Resume, PROMPT_IDS_COMMENT, RESUME_FIELD, RESUME_HEADER, TOKEN_IDS_COMMENT, TOKEN_IDS_HEADER,
};
use realizar_shared::error::ErrorBody;
use realizar_shared::metrics as names;

use crate::http::{Gw, InFlight};
use crate::routing::choose_by;

/// Continuations per request.
pub const MAX_RESUMES: usize = 2;

/// Headers a failover-ready stream is sent with.
pub const ASK_IDS: (&str, &str) = (TOKEN_IDS_HEADER, "1");

/// What a continuation needs of the original request.
pub struct Origin {
    pub gw: Gw,
    pub model: String,
    pub path: String,
    pub body: Bytes,
    pub keys: crate::routing::Keys,
    /// The node serving the stream now.
    pub node: String,
}

/// The SSE stream so far, as far as failover cares.
#[derive(Default)]
struct Seen {
    /// Bytes of an event not yet complete.
    buf: Vec<u8>,
    prompt: Option<Vec<u32>>,
    sent: Vec<u32>,
    id: Option<String>,
    created: Option<u64>,
    done: bool,
    /// The node ended the stream with an error event (kept from the client).
    failed: Option<String>,
}

#[derive(serde::Deserialize)]
struct Head {
    id: String,
    created: u64,
}

fn ids(s: &str) -> Vec<u32> {
    s.split_ascii_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

impl Seen {
    /// The complete events in `data` (with what was buffered), token-id
    /// comments taken out and noted, ready for the client.
    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::with_capacity(self.buf.len());
        let mut start = 0;
        while let Some(end) = find(&self.buf[start..], b"\n\n").map(|i| start + i) {
            let event = &self.buf[start..end];
            let mut kept: Vec<&[u8]> = Vec::new();
            for line in event.split(|b| *b == b'\n') {
                if let Some(c) = line.strip_prefix(b": ") {
                    let c = String::from_utf8_lossy(c);
                    if let Some(rest) = c.strip_prefix(PROMPT_IDS_COMMENT) {
                        self.prompt = Some(ids(rest));
                        continue;
                    }
                    if let Some(rest) = c.strip_prefix(TOKEN_IDS_COMMENT) {
                        self.sent.extend(ids(rest));
                        continue;
                    }
                }
                if let Some(d) = line.strip_prefix(b"data: ") {
                    if d == b"[DONE]" {
                        self.done = true;
                    } else if d.starts_with(b"{\"error\"") {
                        self.failed = Some(String::from_utf8_lossy(d).into_owned());
                        continue;
                    } else if self.id.is_none() {
                        if let Ok(h) = serde_json::from_slice::<Head>(d) {
                            self.id = Some(h.id);
                            self.created = Some(h.created);
                        }
                    }
                }
                kept.push(line);
            }
            if kept.iter().any(|l| !l.is_empty()) {
                for l in kept {
                    out.extend_from_slice(l);
                    out.push(b'\n');
                }
                out.push(b'\n');
            }
            start = end + 2;
        }
        self.buf.drain(..start);
        out
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// The client's body: the node's stream relayed (ids stripped), continued
/// elsewhere if it breaks. A task moves the bytes, so a continuation can
/// be sent for while the client waits; a client that goes away ends the
/// task, which drops the upstream request (the node cancels).
pub(crate) fn relay(first: Incoming, count: InFlight, origin: Origin) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(pump(first, count, origin, tx));
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Body::from_stream(stream)
}

async fn pump(
    mut upstream: Incoming,
    mut count: InFlight,
    mut o: Origin,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut seen = Seen::default();
    let mut resumes = 0;
    let mut tried = vec![o.node.clone()];
    loop {
        let why = match upstream.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let out = seen.feed(&data);
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return; // the client left
                }
                if seen.failed.is_none() {
                    continue;
                }
                seen.failed.clone().unwrap_or_default()
            }
            Some(Err(e)) => e.to_string(),
            None if seen.done => return,
            None => "the stream ended before [DONE]".to_owned(),
        };
        drop(count);
        if seen.done {
            return;
        }
        tracing::warn!(node = %o.node, error = %why, sent = seen.sent.len(), "stream broken; resuming on another owner");
        let next = if resumes < MAX_RESUMES {
            resume(&o, &seen, &tried).await
        } else {
            Err(format!("resumed {MAX_RESUMES} times already"))
        };
        match next {
            Ok((node, resp, c)) => {
                resumes += 1;
                metrics::counter!(names::GATEWAY_RESUMES, names::MODEL => o.model.clone())
                    .increment(1);
                tried.push(node.clone());
                o.node = node;
                upstream = resp;
                count = c;
                seen.buf.clear();
                seen.failed = None;
            }
            Err(e) => {
                let msg = format!("the stream broke and could not be resumed: {why}; {e}");
                let body = ErrorBody::new("server_error", msg, None, Some("stream_failed"));
                let ev = format!(
                    "data: {}\n\n",
                    serde_json::to_string(&body).unwrap_or_default()
                );
                let _ = tx.send(Ok(Bytes::from(ev))).await;
                return;
            }
        }
    }
}

/// Send the continuation to the best owner not tried yet: (its id, its
/// stream, its in-flight count).
async fn resume(
    o: &Origin,
    seen: &Seen,
    tried: &[String],
) -> Result<(String, Incoming, InFlight), String> {
    let (body, resuming) = match (&seen.prompt, &seen.id, seen.created) {
        (Some(prompt), Some(id), Some(created)) => {
            let mut tokens = prompt.clone();
            tokens.extend_from_slice(&seen.sent);
            let r = Resume {
                tokens,
                generated: seen.sent.len(),
                id: id.clone(),
                created,
            };
            (with_field(&o.body, RESUME_FIELD, &r)?, true)
        }
        // The node died before its first chunk: the client has seen nothing
        // but the head, so the request starts again elsewhere as it was.
        (_, None, _) if seen.sent.is_empty() => (o.body.clone(), false),
        _ => return Err("the node sent no token ids".into()),
    };
    let mut last = String::from("no other ready owner");
    let table = o.gw.shared.table.load_full();
    let sample = o.gw.shared.policy == crate::routing::Policy::Affinity;
    let mut tried: Vec<String> = tried.to_vec();
    loop {
        let (left, cands) =
            table.candidates(&o.model, &o.keys, sample, &|x| tried.contains(&x.node_id));
        if left.is_empty() {
            break;
        }
        let turn =
            o.gw.shared
                .turn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((i, _)) = choose_by(
            o.gw.shared.policy,
            o.keys.rank,
            false,
            turn,
            &cands,
            o.gw.shared.bound,
        ) else {
            break;
        };
        let owner = left[i];
        tried.push(owner.node_id.clone());
        let count = InFlight::new(&owner.inflight);
        let headers: &[(&str, &str)] = if resuming {
            &[ASK_IDS, (RESUME_HEADER, "1")]
        } else {
            &[ASK_IDS]
        };
        match o
            .gw
            .client
            .forward_with(
                &owner.url,
                &o.path,
                body.clone(),
                &o.keys.affinity(),
                headers,
            )
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                return Ok((owner.node_id.clone(), resp.into_body(), count));
            }
            Ok(resp) => last = format!("{} answered {}", owner.node_id, resp.status()),
            Err(e) => last = format!("{}: {e}", owner.node_id),
        }
    }
    Err(last)
}

/// The JSON object `body` with `"field": value` put first.
fn with_field<T: serde::Serialize>(body: &[u8], field: &str, value: &T) -> Result<Bytes, String> {
    let at = body
        .iter()
        .position(|b| *b == b'{')
        .ok_or("the body is not a JSON object")?;
    let v = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let rest = &body[at + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + v.len() + field.len() + 8);
    out.extend_from_slice(&body[..=at]);
    out.extend_from_slice(format!("\"{field}\":").as_bytes());
    out.extend_from_slice(&v);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_taken_out_and_events_pass_whole() {
        let mut s = Seen::default();
        let a = b": realizar-prompt 1 2 3\n\ndata: {\"id\":\"cmpl-1\",\"created\":5,\"choices\":[]}\n: realizar-ids 7 8\n\ndata: {\"x\"";
        let out = s.feed(a);
        assert_eq!(
            out,
            b"data: {\"id\":\"cmpl-1\",\"created\":5,\"choices\":[]}\n\n".to_vec()
        );
        assert_eq!(s.prompt.as_deref(), Some(&[1, 2, 3][..]));
        assert_eq!(s.sent, [7, 8]);
        assert_eq!((s.id.as_deref(), s.created), (Some("cmpl-1"), Some(5)));
        // The rest of the split event, then an error event kept back.
        let out = s.feed(b":1}\n: realizar-ids 9\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n");
        assert_eq!(out, b"data: {\"x\":1}\n\n".to_vec());
        assert_eq!(s.sent, [7, 8, 9]);
        assert!(s.failed.is_some() && !s.done);
        let out = s.feed(b"data: [DONE]\n\n");
        assert_eq!(out, b"data: [DONE]\n\n".to_vec());
        assert!(s.done);
    }

    #[test]
    fn the_resume_field_goes_first() {
        let b = with_field(b" {\"model\":\"m\"}", "r", &1).unwrap();
        assert_eq!(&b[..], b" {\"r\":1,\"model\":\"m\"}");
        let b = with_field(b"{ }", "r", &[1, 2]).unwrap();
        assert_eq!(&b[..], b"{\"r\":[1,2] }");
    }
}
