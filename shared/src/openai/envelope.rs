//! What the gateway reads of a request it forwards: the model, whether it
//! streams, the user, and the start of the prompt (for prefix affinity) —
//! without building the request, and without touching the bytes it passes
//! on. Lenient: a field of the wrong type is read as absent (the node that
//! serves the request will refuse it with the precise error).

use serde::Deserialize;
use serde_json::value::RawValue;

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
}
