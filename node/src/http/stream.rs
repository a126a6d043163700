//! A generation's events as an OpenAI stream: one chunk per token (per
//! choice), the held-back text and the finish reason at the end, usage
//! last when asked for, then `[DONE]`; an error ends the stream with an
//! error event and no `[DONE]`. For a gateway that asks, the token ids go
//! along as SSE comments (realizar_shared::control::TOKEN_IDS_HEADER), and a
//! continued stream leaves out what the client already has.

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use realizar_shared::error::ErrorBody;
use realizar_shared::openai::{
    ChatChunkChoice, ChatCompletionChunk, Completion, CompletionChoice, Delta, Usage, FINGERPRINT,
};

use super::openai::{chat_logprobs, completion_logprobs, total_usage};
use crate::engine::{self, Event, TokenOut};
use crate::service::facade::{GenSpec, Inflight, Submitted};

struct StreamState {
    events:
        futures_util::stream::SelectAll<futures_util::stream::BoxStream<'static, (usize, Event)>>,
    spec: GenSpec,
    id: String,
    created: u64,
    model: String,
    chat: bool,
    usages: Vec<Option<engine::Usage>>,
    offsets: Vec<usize>,
    done: bool,
    /// Token ids for the gateway: those not yet sent, per choice.
    ids: Option<Vec<Vec<u32>>>,
    /// Tokens a continued stream's first node generated.
    resumed: usize,
    _guard: Inflight,
}

/// What a stream carries besides the chunks.
#[derive(Debug, Default)]
pub struct StreamExtras {
    /// Some: send the token ids (this prompt first) as SSE comments.
    pub prompt_ids: Option<Vec<u32>>,
    /// A continued stream: tokens generated before (counted in usage as
    /// completion, not prompt); no role chunk.
    pub resumed: usize,
}

fn ids_comment(kind: &str, ids: &[u32]) -> String {
    let mut s = String::with_capacity(kind.len() + ids.len() * 6);
    s.push_str(kind);
    for id in ids {
        s.push(' ');
        s.push_str(&id.to_string());
    }
    s
}

fn data<T: serde::Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).unwrap_or_default())
}

impl StreamState {
    /// A chunk with one choice (or none, for the usage chunk).
    fn chunk(&self, choice: Option<Choice>, usage: Option<Usage>) -> SseEvent {
        let usage = self.spec.include_usage.then_some(usage);
        if self.chat {
            data(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: Some(FINGERPRINT.into()),
                choices: choice.map(|c| self.chat_choice(c)).into_iter().collect(),
                usage,
            })
        } else {
            data(&Completion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: Some(FINGERPRINT.into()),
                choices: choice
                    .map(|c| self.completion_choice(c))
                    .into_iter()
                    .collect(),
                usage,
            })
        }
    }

    fn chat_choice(&self, c: Choice) -> ChatChunkChoice {
        ChatChunkChoice {
            index: c.index,
            delta: Delta {
                role: c.first.then(|| "assistant".into()),
                content: (!c.text.is_empty() || c.first).then(|| c.text.to_owned()),
            },
            logprobs: (self.spec.logprobs && !c.tokens.is_empty()).then(|| chat_logprobs(c.tokens)),
            finish_reason: c.finish.map(str::to_owned),
        }
    }

    fn completion_choice(&self, c: Choice) -> CompletionChoice {
        CompletionChoice {
            index: c.index,
            text: c.text.to_owned(),
            logprobs: (self.spec.logprobs && !c.tokens.is_empty())
                .then(|| completion_logprobs(c.tokens, self.offsets[c.index])),
            finish_reason: c.finish.map(str::to_owned),
        }
    }

    /// The chunk with the ids of the tokens it completes, for the gateway.
    fn with_ids(&mut self, i: usize, chunk: SseEvent) -> SseEvent {
        match &mut self.ids {
            Some(ids) if !ids[i].is_empty() => {
                let c = ids_comment(realizar_shared::control::TOKEN_IDS_COMMENT, &ids[i]);
                ids[i].clear();
                chunk.comment(c)
            }
            _ => chunk,
        }
    }

    /// The SSE events for one executor event.
    fn on(&mut self, i: usize, e: Event) -> Vec<SseEvent> {
        let mut out = Vec::new();
        match e {
            Event::Token(t) => {
                if let Some(ids) = &mut self.ids {
                    ids[i].push(t.id);
                }
                if t.text.is_empty() && !self.spec.logprobs {
                    return out;
                }
                let c = Choice::text(i, &t.text, std::slice::from_ref(&t));
                let chunk = self.chunk(Some(c), None);
                // Ids go with the text they make: a token whose text is
                // held back (a stop string's possible start, part of a
                // character) stays pending, so a continuation makes it again.
                if t.text.is_empty() {
                    out.push(chunk);
                } else {
                    out.push(self.with_ids(i, chunk));
                }
                self.offsets[i] += t.text.len();
            }
            Event::Done {
                text,
                finish,
                usage,
            } => {
                if !text.is_empty() {
                    let chunk = self.chunk(Some(Choice::text(i, &text, &[])), None);
                    out.push(self.with_ids(i, chunk));
                }
                let mut end = Choice::text(i, "", &[]);
                end.finish = Some(finish.as_str());
                out.push(self.chunk(Some(end), None));
                self.usages[i] = Some(usage);
                if self.usages.iter().all(Option::is_some) {
                    if self.spec.include_usage {
                        let u: Vec<engine::Usage> =
                            self.usages.iter().map(|u| u.expect("all done")).collect();
                        let mut total = total_usage(&u, self.spec.n);
                        // What the first node generated was this one's
                        // prompt, and is the client's completion.
                        total.prompt_tokens -= self.resumed.min(total.prompt_tokens);
                        total.completion_tokens += self.resumed;
                        out.push(self.chunk(None, Some(total)));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    self.done = true;
                }
            }
            Event::Error(m) => {
                // The stream ends on the error: no `[DONE]`, which would
                // tell a client the generation completed.
                out.push(data(&ErrorBody::new(
                    "server_error",
                    m,
                    None,
                    Some("generation_failed"),
                )));
                self.done = true;
            }
        }
        out
    }
}

/// One choice's part of a chunk.
struct Choice<'a> {
    index: usize,
    text: &'a str,
    tokens: &'a [TokenOut],
    finish: Option<&'static str>,
    /// The first chat chunk carries the role.
    first: bool,
}

impl<'a> Choice<'a> {
    fn text(index: usize, text: &'a str, tokens: &'a [TokenOut]) -> Self {
        Choice {
            index,
            text,
            tokens,
            finish: None,
            first: false,
        }
    }
}

pub fn stream_response(
    sub: Submitted,
    spec: GenSpec,
    id: String,
    created: u64,
    model: String,
    chat: bool,
    extras: StreamExtras,
) -> Response {
    let Submitted { rxs, guard } = sub;
    let n = rxs.len();
    let streams = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| rx.into_stream().map(move |e| (i, e)).boxed());
    let st = StreamState {
        events: futures_util::stream::select_all(streams),
        spec,
        id,
        created,
        model,
        chat,
        usages: vec![None; n],
        offsets: vec![0; n],
        done: false,
        ids: extras.prompt_ids.as_ref().map(|_| vec![Vec::new(); n]),
        resumed: extras.resumed,
        _guard: guard,
    };
    let mut first: Vec<SseEvent> = Vec::new();
    if let Some(p) = &extras.prompt_ids {
        let kind = realizar_shared::control::PROMPT_IDS_COMMENT;
        first.push(SseEvent::default().comment(ids_comment(kind, p)));
    }
    // The role comes first, for every chat choice (a continued stream's
    // client has it already).
    first.extend(if chat && extras.resumed == 0 {
        (0..n)
            .map(|i| {
                let mut c = Choice::text(i, "", &[]);
                c.first = true;
                st.chunk(Some(c), None)
            })
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    });
    let rest = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        match st.events.next().await {
            Some((i, e)) => {
                let evs = st.on(i, e);
                Some((evs, st))
            }
            None => {
                st.done = true;
                let body = ErrorBody::new(
                    "server_error",
                    "the generation ended without a result",
                    None,
                    None,
                );
                Some((vec![data(&body)], st))
            }
        }
    })
    .flat_map(|v| futures_util::stream::iter(v.into_iter().map(Ok::<_, std::convert::Infallible>)));
    let all = futures_util::stream::iter(first.into_iter().map(Ok)).chain(rest);
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}
