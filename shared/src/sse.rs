//! Server-sent events as the OpenAI streaming API uses them: each event is
//! `data: <json>` and a blank line; the stream ends with `data: [DONE]`
//! (not sent after an error event). The writer makes the frames; the reader
//! takes bytes as they arrive, in any split, and gives back whole events.

use serde::Serialize;

/// The last frame of a successful stream.
pub const DONE_FRAME: &str = "data: [DONE]\n\n";

/// A `data:` frame holding `json`.
pub fn data_frame<T: Serialize>(json: &T) -> String {
    let mut s = String::from("data: ");
    // Serializing our own wire types cannot fail (no maps with non-string
    // keys); an empty object is the safe answer if it ever did.
    s.push_str(&serde_json::to_string(json).unwrap_or_else(|_| "{}".into()));
    s.push_str("\n\n");
    s
}

/// A comment frame, to keep an idle connection open.
pub const KEEPALIVE_FRAME: &str = ": keep-alive\n\n";

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The event's data (its `data:` lines joined by newlines).
    Data(String),
    /// `data: [DONE]`.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE event is longer than {0} bytes")]
    TooLong(usize),
    #[error("an SSE event is not UTF-8")]
    NotUtf8,
}

/// Incremental reader: `push` the bytes of each body frame.
#[derive(Debug)]
pub struct SseReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for an event's end.
    scanned: usize,
    max_event: usize,
}

impl Default for SseReader {
    fn default() -> Self {
        Self::new(1 << 20)
    }
}

impl SseReader {
    /// Events longer than `max_event` bytes are an error (a stream that
    /// never ends an event cannot make the reader grow without bound).
    pub fn new(max_event: usize) -> Self {
        SseReader {
            buf: Vec::new(),
            scanned: 0,
            max_event,
        }
    }

    /// Take more bytes; returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let from = self.scanned.saturating_sub(3);
            let Some((end, sep)) = find_blank_line(&self.buf[from..]).map(|(e, s)| (e + from, s))
            else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_event {
                    return Err(SseError::TooLong(self.max_event));
                }
                return Ok(out);
            };
            let raw: Vec<u8> = self.buf.drain(..end + sep).collect();
            self.scanned = 0;
            let text = std::str::from_utf8(&raw[..end]).map_err(|_| SseError::NotUtf8)?;
            if let Some(e) = parse_event(text) {
                out.push(e);
            }
        }
    }
}

/// The end of the first event: (index of the blank line's start, length of
/// the separator), for `\n\n`, `\r\n\r\n` and `\r\r`.
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else if b[i..].starts_with(b"\n\n") || b[i..].starts_with(b"\r\r") {
            Some((i, 2))
        } else {
            None
        }
    })
}

fn parse_event(text: &str) -> Option<SseEvent> {
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(v) = line.strip_prefix("data:") else {
            continue; // comments, `event:`, `id:`, `retry:`
        };
        let v = v.strip_prefix(' ').unwrap_or(v);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(v);
            }
            None => data = Some(v.to_owned()),
        }
    }
    let d = data?;
    Some(if d.trim() == "[DONE]" {
        SseEvent::Done
    } else {
        SseEvent::Data(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_whatever_the_split() {
        let stream = format!(
            "{}: keep-alive\n\n{}{}",
            data_frame(&serde_json::json!({"a": 1})),
            "data: {\"b\":\r\ndata: 2}\r\n\r\n",
            DONE_FRAME
        );
        let want = vec![
            SseEvent::Data("{\"a\":1}".into()),
            SseEvent::Data("{\"b\":\n2}".into()),
            SseEvent::Done,
        ];
        for step in [1, 2, 3, 7, stream.len()] {
            let mut r = SseReader::default();
            let mut got = Vec::new();
            for c in stream.as_bytes().chunks(step) {
                got.extend(r.push(c).unwrap());
            }
            assert_eq!(got, want, "chunks of {step}");
        }
    }

    #[test]
    fn an_endless_event_is_an_error() {
        let mut r = SseReader::new(64);
        assert_eq!(r.push(&[b'x'; 40]).unwrap(), vec![]);
        assert_eq!(r.push(&[b'x'; 40]), Err(SseError::TooLong(64)));
        let mut r = SseReader::default();
        assert_eq!(r.push(b"data: \xff\n\n"), Err(SseError::NotUtf8));
    }
}
