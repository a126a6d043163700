//! What the gateway reads of a request it forwards: the model, whether it
//! streams, the user, and the start of the prompt (for prefix affinity) —
//! without building the request, and without touching the bytes it passes
//! on. Lenient: a field of the wrong type is read as absent (the node that
//! serves the request will refuse it with the precise error).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::hash;

/// Bytes of the prompt kept for affinity.
pub const AFFINITY_BYTES: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub model: Option<String>,
    pub stream: bool,
    pub user: Option<String>,
    /// The first `AFFINITY_BYTES` of the prompt as sent: the JSON of
    /// `messages` or `prompt`. Requests that share a prompt prefix share a
    /// prefix of this (up to JSON escaping), which is what routing needs.
    pub prompt_head: Vec<u8>,
    /// Choices asked for (`n`, default 1).
    pub n: u64,
    /// Several prompts (`prompt` as a list of texts or of id lists).
    pub many_prompts: bool,
    /// The request as a turn of a conversation (None without `messages`
    /// or `prompt`).
    pub conversation: Option<Conversation>,
}

/// Hashes naming a request's place in a conversation, so a gateway can
/// send a turn where the previous turn's prompt is cached without a
/// session id: a chat client resends the earlier messages as it sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversation {
    /// The request's whole prompt (`messages`, each as sent; or `prompt`).
    pub own: u64,
    /// The messages before its last assistant message: the previous
    /// turn's `own` (None when there is no assistant message).
    pub previous: Option<u64>,
}

impl Conversation {
    fn of_messages(raw: &RawValue) -> Option<Conversation> {
        #[derive(Deserialize)]
        struct Role<'a> {
            #[serde(borrow, default)]
            role: Option<&'a RawValue>,
        }
        let messages: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
        let mut h = hash::FNV_OFFSET;
        let mut previous = None;
        for m in &messages {
            let assistant = serde_json::from_str::<Role>(m.get())
                .ok()
                .and_then(|r| r.role)
                .is_some_and(|r| r.get() == "\"assistant\"");
            if assistant {
                previous = Some(hash::mix(h));
            }
            h = hash::fnv1a_from(h, m.get().as_bytes());
            // A separator, so [ab][c] and [a][bc] differ.
            h = hash::fnv1a_from(h, b"\x1e");
        }
        Some(Conversation {
            own: hash::mix(h),
            previous,
        })
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    n: Option<&'a RawValue>,
}

impl Envelope {
    /// None when the body is not a JSON object.
    pub fn read(body: &[u8]) -> Option<Envelope> {
        // A derived struct also reads from a JSON array; a body is an object.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let raw: Raw = serde_json::from_slice(body).ok()?;
        let string =
            |v: Option<&RawValue>| v.and_then(|v| serde_json::from_str::<String>(v.get()).ok());
        let head = raw
            .messages
            .or(raw.prompt)
            .map(|v| {
                let b = v.get().as_bytes();
                b[..b.len().min(AFFINITY_BYTES)].to_vec()
            })
            .unwrap_or_default();
        Some(Envelope {
            model: string(raw.model),
            stream: raw
                .stream
                .and_then(|v| serde_json::from_str::<bool>(v.get()).ok())
                .unwrap_or(false),
            user: string(raw.user),
            prompt_head: head,
            n: raw
                .n
                .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
                .unwrap_or(1),
            // `[[…` or `["…`: a list of prompts (a list of ids is `[1,…`).
            many_prompts: raw.prompt.is_some_and(|v| {
                let t = v.get().trim_start().strip_prefix('[').unwrap_or("");
                matches!(t.trim_start().as_bytes().first(), Some(b'[' | b'"'))
            }),
            conversation: match (raw.messages, raw.prompt) {
                (Some(m), _) => Conversation::of_messages(m),
                (None, Some(p)) => Some(Conversation {
                    own: hash::of_bytes(p.get().as_bytes()),
                    previous: None,
                }),
                (None, None) => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_routing_needs_and_nothing_more() {
        let body = br#"{"model":"m","stream":true,"user":"u","messages":[{"role":"user","content":"hello"}],"temperature":"not checked here"}"#;
        let e = Envelope::read(body).unwrap();
        assert_eq!(e.model.as_deref(), Some("m"));
        assert!(e.stream);
        assert_eq!(e.user.as_deref(), Some("u"));
        assert_eq!(
            e.prompt_head,
            br#"[{"role":"user","content":"hello"}]"#.to_vec()
        );
        let e = Envelope::read(br#"{"model":7,"stream":"yes","prompt":"abc"}"#).unwrap();
        assert_eq!(e.model, None);
        assert!(!e.stream);
        assert_eq!(e.prompt_head, b"\"abc\"".to_vec());
        let long = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(5000));
        assert_eq!(
            Envelope::read(long.as_bytes()).unwrap().prompt_head.len(),
            AFFINITY_BYTES
        );
        assert!(Envelope::read(b"[1,2]").is_none());
        assert!(Envelope::read(b"{").is_none());
    }

    #[test]
    fn a_turn_names_the_turn_before_it() {
        let conv = |body: &str| {
            Envelope::read(body.as_bytes())
                .unwrap()
                .conversation
                .unwrap()
        };
        let first = conv(
            r#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(first.previous, None);
        // The client sends the first turn back with the answer and a new
        // message: its `previous` is the first turn's `own`.
        let second = conv(
            r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]}"#,
        );
        assert_eq!(second.previous, Some(first.own));
        let third = conv(
            r#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"},{"role":"assistant","content":"ok"},{"role":"user","content":"bye"}]}"#,
        );
        assert_eq!(third.previous, Some(second.own));
        // Another conversation with the same start is another conversation.
        let other = conv(
            r#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":"ho"}]}"#,
        );
        assert_ne!(other.own, first.own);
        // A prompt: its own hash, no previous turn; none without a prompt.
        let p = conv(r#"{"prompt":"abc"}"#);
        assert_eq!(p.previous, None);
        assert_ne!(p.own, conv(r#"{"prompt":"abd"}"#).own);
        assert!(Envelope::read(br#"{"model":"m"}"#)
            .unwrap()
            .conversation
            .is_none());
        // Malformed messages: no conversation, no panic.
        assert!(Envelope::read(br#"{"messages":7}"#)
            .unwrap()
            .conversation
            .is_none());
    }
}
