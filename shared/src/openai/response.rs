//! OpenAI response bodies and stream chunks, as the node writes them and
//! the gateway, `realizar bench` and the tests read them.

use serde::{Deserialize, Deserializer, Serialize};

/// Sent in `system_fingerprint`.
pub const FINGERPRINT: &str = "realizar";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// One token and its log-probability (chat format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
    pub refusal: Option<String>,
}

/// Legacy completions log-probabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, the alternatives by text (in rank order).
    pub top_logprobs: Vec<TopMap>,
    /// Byte offset of each token's text in the choice's text.
    pub text_offset: Vec<usize>,
}

/// Alternatives by text, in rank order: a JSON object whose values are
/// written as `f32`, like `token_logprobs` (so the chosen token's logprob
/// and its entry here print the same digits).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopMap(pub Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for TopMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of token → logprob")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<TopMap, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, f32>()? {
                    v.push((k, x));
                }
                Ok(TopMap(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// `POST /v1/chat/completions` without `stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// `POST /v1/completions` without `stream`, and each of its stream chunks
/// (the legacy API uses one shape for both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CompletionChoice>,
    /// Absent from chunks unless `stream_options.include_usage`; then null
    /// on every chunk but the last.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// One event of a streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChunkChoice>,
    /// As in [`Completion::usage`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub usage: Option<Option<Usage>>,
}

/// Either kind of chunk, for readers that take both (the gateway, the
/// bench): the text of each choice and the usage.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AnyChunk {
    #[serde(default)]
    pub choices: Vec<AnyChunkChoice>,
    #[serde(default, deserialize_with = "present")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AnyChunkChoice {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

impl AnyChunkChoice {
    /// The text this chunk adds to its choice.
    pub fn text(&self) -> &str {
        self.text
            .as_deref()
            .or_else(|| self.delta.as_ref().and_then(|d| d.content.as_deref()))
            .unwrap_or("")
    }
}

/// A field that is present (even as null) is `Some`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ModelMeta>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub architecture: String,
}

/// `POST /tokenize` (llama-server's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tokenized {
    Ids { tokens: Vec<u32> },
    Pieces { tokens: Vec<TokenPiece> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenPiece {
    pub id: u32,
    pub piece: String,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detokenized {
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_logprobs_keep_rank_order_and_f32_digits() {
        let lp = CompletionLogprobs {
            tokens: vec!["b".into()],
            token_logprobs: vec![-0.1],
            top_logprobs: vec![TopMap(vec![("b".into(), -0.1), ("a".into(), -2.5)])],
            text_offset: vec![0],
        };
        let text = serde_json::to_string(&lp).unwrap();
        assert!(text.contains(r#""token_logprobs":[-0.1]"#), "{text}");
        assert!(
            text.contains(r#""top_logprobs":[{"b":-0.1,"a":-2.5}]"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<CompletionLogprobs>(&text).unwrap(),
            lp
        );
    }

    #[test]
    fn chunk_usage_is_absent_null_or_set() {
        let mut c = ChatCompletionChunk {
            id: "x".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            system_fingerprint: Some(FINGERPRINT.into()),
            choices: vec![],
            usage: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert!(v.get("usage").is_none());
        c.usage = Some(None);
        let v = serde_json::to_value(&c).unwrap();
        assert!(v["usage"].is_null());
        let back: ChatCompletionChunk = serde_json::from_value(v).unwrap();
        assert_eq!(back.usage, Some(None));
        c.usage = Some(Some(Usage::new(3, 4, 1)));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        let any: AnyChunk = serde_json::from_value(v).unwrap();
        assert_eq!(any.usage, Some(Some(Usage::new(3, 4, 1))));
    }
}
