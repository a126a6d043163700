//! The OpenAI-compatible routes and llama-server's tokenizer routes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use realizar_shared::error::ApiError;
use realizar_shared::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, ChatLogprobs, Completion,
    CompletionChoice, CompletionLogprobs, CompletionRequest, DetokenizeRequest, Detokenized,
    ModelCard, ModelList, ModelMeta, Prompt, TokenLogprob, TokenPiece, TokenizeRequest, Tokenized,
    TopLogprob, TopMap, Usage, FINGERPRINT,
};

use super::stream::{stream_response, StreamExtras};
use crate::engine::{self, Event, EventRx, LogprobEntry, TokenOut};
use crate::service::facade::{Node, Submitted};
use crate::tokenizer::ChatMessage;
use realizar_shared::control::{self, Resume};

fn top(e: &LogprobEntry) -> TopLogprob {
    TopLogprob {
        token: e.token.clone(),
        logprob: e.logprob,
        bytes: e.bytes.clone(),
    }
}

pub(super) fn chat_logprobs(tokens: &[TokenOut]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| TokenLogprob {
                token: t.logprob.token.clone(),
                logprob: t.logprob.logprob,
                bytes: t.logprob.bytes.clone(),
                top_logprobs: t.top.iter().map(top).collect(),
            })
            .collect(),
        refusal: None,
    }
}

/// Legacy completions logprobs for a run of tokens starting at text offset `offset`.
pub(super) fn completion_logprobs(tokens: &[TokenOut], mut offset: usize) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    for t in tokens {
        lp.tokens.push(t.logprob.token.clone());
        lp.token_logprobs.push(t.logprob.logprob);
        lp.top_logprobs.push(TopMap(
            t.top.iter().map(|e| (e.token.clone(), e.logprob)).collect(),
        ));
        lp.text_offset.push(offset);
        offset += t.text.len();
    }
    lp
}

/// Sums usage over choices: prompt tokens once per prompt.
pub(super) fn total_usage(per_choice: &[engine::Usage], n: usize) -> Usage {
    let (mut prompt, mut completion, mut cached) = (0, 0, 0);
    for (i, c) in per_choice.iter().enumerate() {
        if i % n == 0 {
            prompt += c.prompt_tokens;
            cached += c.cached_tokens;
        }
        completion += c.completion_tokens;
    }
    Usage::new(prompt, completion, cached)
}

/// One choice of a non-streamed response.
struct Collected {
    text: String,
    tokens: Vec<TokenOut>,
    finish: &'static str,
    usage: engine::Usage,
}

async fn collect(mut rx: EventRx) -> Result<Collected, ApiError> {
    let mut c = Collected {
        text: String::new(),
        tokens: Vec::new(),
        finish: "stop",
        usage: engine::Usage::default(),
    };
    while let Some(e) = rx.recv().await {
        match e {
            Event::Token(t) => {
                c.text.push_str(&t.text);
                c.tokens.push(t);
            }
            Event::Done {
                text,
                finish,
                usage,
            } => {
                c.text.push_str(&text);
                c.finish = finish.as_str();
                c.usage = usage;
                return Ok(c);
            }
            Event::Error(m) => return Err(ApiError::server(m)),
        }
    }
    Err(ApiError::server("the generation ended without a result"))
}

async fn collect_all(sub: Submitted) -> Result<Vec<Collected>, ApiError> {
    let Submitted { rxs, guard } = sub;
    let results = futures_util::future::join_all(rxs.into_iter().map(collect)).await;
    drop(guard);
    results.into_iter().collect()
}

/// A continued stream's `realizar_resume` (with `RESUME_HEADER` only).
fn resume(headers: &HeaderMap, body: &[u8]) -> Result<Option<Resume>, ApiError> {
    if !headers.contains_key(control::RESUME_HEADER) {
        return Ok(None);
    }
    let bad = |e: String| ApiError::invalid_param(control::RESUME_FIELD, e);
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let r = v
        .get(control::RESUME_FIELD)
        .ok_or_else(|| bad(format!("`{}` is missing", control::RESUME_FIELD)))?;
    let r: Resume = serde_json::from_value(r.clone()).map_err(|e| bad(e.to_string()))?;
    if r.generated > r.tokens.len() {
        return Err(bad("`generated` is more than `tokens`".into()));
    }
    Ok(Some(r))
}

/// What a stream carries for the gateway: token ids when asked, and how a
/// continued one differs.
fn extras(headers: &HeaderMap, prompt: &[u32], resumed: Option<&Resume>) -> StreamExtras {
    StreamExtras {
        prompt_ids: headers
            .contains_key(control::TOKEN_IDS_HEADER)
            .then(|| prompt.to_vec()),
        resumed: resumed.map_or(0, |r| r.generated),
    }
}

/// The response's id and creation time: a continued stream keeps the
/// first node's.
fn identity(node: &Node, resumed: Option<&Resume>, prefix: &str) -> (String, u64) {
    match resumed {
        Some(r) => (r.id.clone(), r.created),
        None => (node.response_id(prefix), node.now()),
    }
}

/// The gateway's affinity keys for the request, if it named any.
fn affinity(headers: &HeaderMap) -> Option<control::Affinity> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    control::Affinity::from_headers(
        value(control::AFFINITY_HEADER),
        value(control::CONVERSATION_HEADER),
    )
}

pub async fn chat_completions(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = ChatCompletionRequest::from_json(&body)?;
    let h = node.model(req.model.as_deref())?;
    let top = req.top_logprobs.unwrap_or(0) as usize;
    let mut spec = node.gen_spec(&req.params, (req.logprobs, top), &h)?;
    spec.affinity = affinity(&headers);
    let t = h.template.clone().ok_or_else(|| {
        ApiError::invalid_param(
            "messages",
            format!("model `{}` has no chat template; use /v1/completions", h.id),
        )
    })?;
    let messages: Vec<ChatMessage> = req
        .messages
        .iter()
        .map(|m| {
            let role = if m.role == "developer" {
                "system"
            } else {
                &m.role
            };
            ChatMessage::new(role, &m.text())
        })
        .collect();
    let resumed = resume(&headers, &body)?;
    let prompt = match &resumed {
        Some(r) => {
            node.check_ids(&h, &r.tokens, control::RESUME_FIELD)?;
            r.tokens.clone()
        }
        None => {
            let (n2, h2) = (node.clone(), h.clone());
            node.on_cpu(move |b| {
                let text = t.render(&messages, true).map_err(|e| {
                    ApiError::invalid_param("messages", format!("the chat template failed: {e}"))
                })?;
                let add_bos = t.bos_token().is_empty() || !text.starts_with(t.bos_token());
                n2.encode_prompt(&h2, &text, add_bos, "messages", b)
            })
            .await?
        }
    };
    if let Some(r) = &resumed {
        spec.max_tokens = spec
            .max_tokens
            .map(|m| m.saturating_sub(r.generated).max(1));
    }
    let sub = node.submit(&h, std::slice::from_ref(&prompt), &spec, "messages")?;
    let (id, created) = identity(&node, resumed.as_ref(), "chatcmpl");
    if spec.stream {
        let x = extras(&headers, &prompt, resumed.as_ref());
        return Ok(stream_response(
            sub,
            spec,
            id,
            created,
            h.id.clone(),
            true,
            x,
        ));
    }
    let results = collect_all(sub).await?;
    let usage = total_usage(&results.iter().map(|c| c.usage).collect::<Vec<_>>(), spec.n);
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(i, c)| ChatChoice {
            index: i,
            logprobs: spec.logprobs.then(|| chat_logprobs(&c.tokens)),
            message: AssistantMessage {
                role: "assistant".into(),
                content: c.text,
            },
            finish_reason: Some(c.finish.into()),
        })
        .collect();
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model: h.id.clone(),
        choices,
        usage,
        system_fingerprint: Some(FINGERPRINT.into()),
    })
    .into_response())
}

pub async fn completions(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = CompletionRequest::from_json(&body)?;
    let h = node.model(req.model.as_deref())?;
    let lp = req.logprobs.map_or((false, 0), |n| (true, n as usize));
    let mut spec = node.gen_spec(&req.params, lp, &h)?;
    spec.affinity = affinity(&headers);
    let texts = match req.prompt {
        Prompt::Ids(ids) => Err(vec![ids]),
        Prompt::IdLists(v) => Err(v),
        Prompt::Text(t) => Ok(vec![t]),
        Prompt::Texts(v) => Ok(v),
    };
    let resumed = resume(&headers, &body)?;
    let texts = match &resumed {
        Some(r) => Err(vec![r.tokens.clone()]),
        None => texts,
    };
    let prompts = match texts {
        Err(ids) => {
            for p in &ids {
                node.check_ids(&h, p, "prompt")?;
            }
            ids
        }
        Ok(texts) => {
            let (n2, h2) = (node.clone(), h.clone());
            node.on_cpu(move |b| {
                texts
                    .iter()
                    .map(|t| n2.encode_prompt(&h2, t, true, "prompt", b))
                    .collect()
            })
            .await?
        }
    };
    if spec.max_tokens.is_none() {
        spec.max_tokens = Some(16); // OpenAI's default for completions
    }
    if let Some(r) = &resumed {
        spec.max_tokens = spec
            .max_tokens
            .map(|m| m.saturating_sub(r.generated).max(1));
    }
    let sub = node.submit(&h, &prompts, &spec, "prompt")?;
    let (id, created) = identity(&node, resumed.as_ref(), "cmpl");
    if spec.stream {
        // Token ids for the gateway only for a single prompt.
        let x = extras(&headers, &prompts[0], resumed.as_ref());
        let x = if prompts.len() == 1 {
            x
        } else {
            StreamExtras::default()
        };
        return Ok(stream_response(
            sub,
            spec,
            id,
            created,
            h.id.clone(),
            false,
            x,
        ));
    }
    let results = collect_all(sub).await?;
    let usage = total_usage(&results.iter().map(|c| c.usage).collect::<Vec<_>>(), spec.n);
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(i, c)| CompletionChoice {
            index: i,
            logprobs: spec.logprobs.then(|| completion_logprobs(&c.tokens, 0)),
            text: c.text,
            finish_reason: Some(c.finish.into()),
        })
        .collect();
    Ok(Json(Completion {
        id,
        object: "text_completion".into(),
        created,
        model: h.id.clone(),
        system_fingerprint: Some(FINGERPRINT.into()),
        choices,
        usage: Some(Some(usage)),
    })
    .into_response())
}

pub async fn list_models(State(node): State<Arc<Node>>) -> Json<ModelList> {
    let models = node.models.read().unwrap_or_else(|e| e.into_inner());
    let mut data: Vec<ModelCard> = models
        .values()
        .map(|h| ModelCard {
            id: h.id.clone(),
            object: "model".into(),
            created: h.created,
            owned_by: "realizar".into(),
            meta: Some(ModelMeta {
                n_ctx: h.n_ctx,
                n_vocab: h.n_vocab,
                architecture: h.architecture.into(),
            }),
        })
        .collect();
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

pub async fn tokenize(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Tokenized>, ApiError> {
    let req = TokenizeRequest::from_json(&body)?;
    let h = node.model(req.model.as_deref())?;
    let (n2, h2, content) = (node.clone(), h.clone(), req.content);
    let ids = node
        .on_cpu(move |b| n2.encode(&h2, &content, req.add_special, "content", b))
        .await?;
    if req.with_pieces {
        let tokens = ids
            .iter()
            .map(|&id| {
                let mut b = Vec::new();
                h.tok.token_bytes(id, true, &mut b);
                TokenPiece {
                    id,
                    piece: String::from_utf8_lossy(&b).into_owned(),
                }
            })
            .collect();
        return Ok(Json(Tokenized::Pieces { tokens }));
    }
    Ok(Json(Tokenized::Ids { tokens: ids }))
}

pub async fn detokenize(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Detokenized>, ApiError> {
    let req = DetokenizeRequest::from_json(&body)?;
    let h = node.model(req.model.as_deref())?;
    if req.tokens.iter().any(|&t| t as usize >= h.n_vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            "`tokens` holds a value that is not a token id of this model",
        ));
    }
    Ok(Json(Detokenized {
        content: h.tok.decode(&req.tokens, false),
    }))
}
