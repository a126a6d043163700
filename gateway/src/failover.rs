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

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use hyper::body::{Frame, Incoming};
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

impl Seen {
    /// The complete events in `data` (with what was buffered), token-id
    /// comments taken out and noted, appended to `out` for the client.
    fn feed(&mut self, data: &[u8], out: &mut BytesMut) {
        // The usual case, a chunk of whole events, is read where it lies;
        // the buffer is taken out meanwhile (its allocation kept).
        let mut buf = std::mem::take(&mut self.buf);
        let input: &[u8] = if buf.is_empty() {
            data
        } else {
            buf.extend_from_slice(data);
            &buf
        };
        out.reserve(input.len());
        let mut start = 0;
        while let Some(end) = find(&input[start..], b"\n\n").map(|i| start + i) {
            let event = &input[start..end];
            let at = out.len();
            let mut kept_any = false;
            for line in event.split(|b| *b == b'\n') {
                if let Some(c) = line.strip_prefix(b": ") {
                    if let Some(rest) = c.strip_prefix(PROMPT_IDS_COMMENT.as_bytes()) {
                        let mut prompt = Vec::new();
                        ids(rest, &mut prompt);
                        self.prompt = Some(prompt);
                        continue;
                    }
                    if let Some(rest) = c.strip_prefix(TOKEN_IDS_COMMENT.as_bytes()) {
                        ids(rest, &mut self.sent);
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
                kept_any |= !line.is_empty();
                out.extend_from_slice(line);
                out.extend_from_slice(b"\n");
            }
            if kept_any {
                out.extend_from_slice(b"\n");
            } else {
                out.truncate(at);
            }
            start = end + 2;
        }
        if buf.is_empty() {
            buf.extend_from_slice(&data[start..]);
        } else {
            buf.drain(..start);
        }
        self.buf = buf;
    }
}

/// The token ids of a comment's rest (numbers separated by spaces), onto `to`.
fn ids(s: &[u8], to: &mut Vec<u32>) {
    to.extend(
        s.split(|b| *b == b' ')
            .filter_map(|x| std::str::from_utf8(x).ok()?.trim().parse::<u32>().ok()),
    );
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    memchr::memmem::find(h, n)
}

/// A continuation being sent for: (its node, its stream, its in-flight
/// count, the owners tried so far), or why none could be had.
type Continuing =
    Pin<Box<dyn Future<Output = Result<(String, Incoming, InFlight, Vec<String>), String>> + Send>>;

/// The client's body: the node's stream relayed (ids stripped), continued
/// elsewhere if it breaks. The client's connection polls it directly (no
/// task and no channel in between: an event costs one wake-up, not three),
/// and a client that goes away drops it with the upstream response, so the
/// node cancels the sequence.
pub(crate) fn relay(first: Incoming, count: InFlight, origin: Origin) -> Body {
    Body::new(Resumable {
        upstream: Some(first),
        count: Some(count),
        tried: vec![origin.node.clone()],
        origin,
        seen: Seen::default(),
        resumes: 0,
        continuing: None,
        finished: false,
        gathered: BytesMut::new(),
        yielded: 0,
    })
}

struct Resumable {
    upstream: Option<Incoming>,
    /// The serving node's in-flight count, held while its stream is read.
    count: Option<InFlight>,
    origin: Origin,
    seen: Seen,
    resumes: usize,
    tried: Vec<String>,
    continuing: Option<Continuing>,
    finished: bool,
    /// Events for the client not yet handed to hyper (`poll_frame`); a
    /// frame is split off it, so its allocation is reused once hyper has
    /// written the frame.
    gathered: BytesMut,
    yielded: u8,
}

/// Bytes gathered into one frame at most.
const GATHER_MAX: usize = 64 * 1024;
/// Turns yielded for a next event before what is gathered goes out.
const YIELDS: u8 = 3;

impl Resumable {
    /// The stream from `origin.node` ended (`why`, unless at `[DONE]`):
    /// send for a continuation, or end with an error event (returned).
    fn broken(&mut self, why: String) -> Option<Bytes> {
        self.upstream = None;
        self.count = None;
        if self.seen.done {
            self.finished = true;
            return None;
        }
        let o = &self.origin;
        tracing::warn!(node = %o.node, error = %why, sent = self.seen.sent.len(), "stream broken; resuming on another owner");
        let body = if self.resumes >= MAX_RESUMES {
            Err(format!("resumed {MAX_RESUMES} times already"))
        } else {
            continuation(o, &self.seen)
        };
        match body {
            Ok((body, resuming)) => {
                let fut = resume(
                    o.gw.clone(),
                    o.model.clone(),
                    o.path.clone(),
                    o.keys,
                    body,
                    resuming,
                    self.tried.clone(),
                );
                self.continuing = Some(Box::pin(async move {
                    fut.await.map_err(|e| {
                        format!("the stream broke and could not be resumed: {why}; {e}")
                    })
                }));
                None
            }
            Err(e) => {
                self.finished = true;
                Some(error_event(format!(
                    "the stream broke and could not be resumed: {why}; {e}"
                )))
            }
        }
    }
}

fn error_event(msg: String) -> Bytes {
    let body = ErrorBody::new("server_error", msg, None, Some("stream_failed"));
    Bytes::from(format!(
        "data: {}\n\n",
        serde_json::to_string(&body).unwrap_or_default()
    ))
}

impl Resumable {
    /// The next bytes for the client appended to `out` (`Some`), or the end.
    fn poll_events(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<Option<()>> {
        let this = self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(fut) = this.continuing.as_mut() {
                let next = ready!(fut.as_mut().poll(cx));
                this.continuing = None;
                match next {
                    Ok((node, stream, count, tried)) => {
                        this.resumes += 1;
                        metrics::counter!(names::GATEWAY_RESUMES, names::MODEL => this.origin.model.clone())
                            .increment(1);
                        this.tried = tried;
                        this.origin.node = node;
                        this.upstream = Some(stream);
                        this.count = Some(count);
                        this.seen.buf.clear();
                        this.seen.failed = None;
                        continue;
                    }
                    Err(msg) => {
                        this.finished = true;
                        out.extend_from_slice(&error_event(msg));
                        return Poll::Ready(Some(()));
                    }
                }
            }
            let Some(up) = this.upstream.as_mut() else {
                this.finished = true;
                continue;
            };
            let why = match ready!(hyper::body::Body::poll_frame(Pin::new(up), cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let before = out.len();
                    this.seen.feed(&data, out);
                    if let Some(why) = this.seen.failed.clone() {
                        // What came before the error event goes out now;
                        // the continuation is sent for first.
                        if let Some(end) = this.broken(why) {
                            out.extend_from_slice(&end);
                        }
                    }
                    if out.len() == before {
                        continue;
                    }
                    return Poll::Ready(Some(()));
                }
                Some(Err(e)) => e.to_string(),
                None if this.seen.done => {
                    this.finished = true;
                    this.upstream = None;
                    this.count = None;
                    continue;
                }
                None => "the stream ended before [DONE]".to_owned(),
            };
            if let Some(ev) = this.broken(why) {
                out.extend_from_slice(&ev);
                return Poll::Ready(Some(()));
            }
        }
    }
}

impl hyper::body::Body for Resumable {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    /// What `poll_events` has ready, gathered: hyper decodes one chunk of
    /// the node's response per turn of its connection task and writes each
    /// frame it is given with its own syscall, so events that arrived
    /// together (a speculative step's, a loaded node's) would go out one
    /// write each. After an event, up to `YIELDS` turns are yielded for the
    /// next one to be decoded (it takes two); what is there then goes out
    /// in one write. Events 65 to a stream back to back: 1,150 → 600 µs of
    /// gateway CPU per stream; arriving apart, the turns cost ~3% (BENCHMARKS.md).
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let mut gathered = std::mem::take(&mut this.gathered);
            let polled = this.poll_events(cx, &mut gathered);
            this.gathered = gathered;
            match polled {
                Poll::Ready(Some(())) => {
                    this.yielded = 0;
                    if this.gathered.len() >= GATHER_MAX {
                        break;
                    }
                }
                Poll::Ready(None) if this.gathered.is_empty() => return Poll::Ready(None),
                Poll::Ready(None) => break,
                Poll::Pending if this.gathered.is_empty() => return Poll::Pending,
                Poll::Pending if this.yielded < YIELDS => {
                    this.yielded += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => break,
            }
        }
        this.yielded = 0;
        Poll::Ready(Some(Ok(Frame::data(this.gathered.split().freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

/// The request that continues the stream elsewhere: the original with the
/// prompt and the tokens sent so far (true), or, when the node died before
/// its first chunk, the original as it was (false).
fn continuation(o: &Origin, seen: &Seen) -> Result<(Bytes, bool), String> {
    match (&seen.prompt, &seen.id, seen.created) {
        (Some(prompt), Some(id), Some(created)) => {
            let mut tokens = prompt.clone();
            tokens.extend_from_slice(&seen.sent);
            let r = Resume {
                tokens,
                generated: seen.sent.len(),
                id: id.clone(),
                created,
            };
            Ok((with_field(&o.body, RESUME_FIELD, &r)?, true))
        }
        // The client has seen nothing but the head: the request starts
        // again elsewhere as it was.
        (_, None, _) if seen.sent.is_empty() => Ok((o.body.clone(), false)),
        _ => Err("the node sent no token ids".into()),
    }
}

/// Send the continuation to the best owner not tried yet: (its id, its
/// stream, its in-flight count, the owners tried now).
async fn resume(
    gw: Gw,
    model: String,
    path: String,
    keys: crate::routing::Keys,
    body: Bytes,
    resuming: bool,
    mut tried: Vec<String>,
) -> Result<(String, Incoming, InFlight, Vec<String>), String> {
    let mut last = String::from("no other ready owner");
    let table = gw.shared.table.load_full();
    let sample = gw.shared.policy == crate::routing::Policy::Affinity;
    let affinity = keys.affinity();
    let headers: &[(&str, &str)] = if resuming {
        &[ASK_IDS, (RESUME_HEADER, "1")]
    } else {
        &[ASK_IDS]
    };
    loop {
        let (left, cands) =
            table.candidates(&model, &keys, sample, &|x| tried.contains(&x.node_id));
        if left.is_empty() {
            break;
        }
        let turn = gw
            .shared
            .turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((i, _)) = choose_by(
            gw.shared.policy,
            keys.rank,
            false,
            turn,
            &cands,
            gw.shared.bound,
        ) else {
            break;
        };
        let owner = left[i];
        tried.push(owner.node_id.clone());
        let count = InFlight::new(&owner.inflight);
        match gw
            .client
            .forward_with(&owner.url, &path, body.clone(), &affinity, headers)
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                return Ok((owner.node_id.clone(), resp.into_body(), count, tried));
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
        let feed = |s: &mut Seen, d: &[u8]| {
            let mut out = BytesMut::new();
            s.feed(d, &mut out);
            out.to_vec()
        };
        let out = feed(&mut s, a);
        assert_eq!(
            out,
            b"data: {\"id\":\"cmpl-1\",\"created\":5,\"choices\":[]}\n\n".to_vec()
        );
        assert_eq!(s.prompt.as_deref(), Some(&[1, 2, 3][..]));
        assert_eq!(s.sent, [7, 8]);
        assert_eq!((s.id.as_deref(), s.created), (Some("cmpl-1"), Some(5)));
        // The rest of the split event, then an error event kept back.
        let out = feed(
            &mut s,
            b":1}\n: realizar-ids 9\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n",
        );
        assert_eq!(out, b"data: {\"x\":1}\n\n".to_vec());
        assert_eq!(s.sent, [7, 8, 9]);
        assert!(s.failed.is_some() && !s.done);
        let out = feed(&mut s, b"data: [DONE]\n\n");
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
