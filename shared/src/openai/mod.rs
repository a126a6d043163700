//! The OpenAI-compatible API's wire types: requests (with a reader that
//! names the bad parameter), responses and stream chunks, and the envelope
//! the gateway reads to route.

pub mod envelope;
pub mod request;
pub mod response;

pub use envelope::{Conversation, Envelope};
pub use request::{
    ChatCompletionRequest, CompletionRequest, Content, DetokenizeRequest, GenParams, Message,
    Prompt, Stop, StreamOptions, TokenizeRequest,
};
pub use response::*;
