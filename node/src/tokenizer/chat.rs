//! Chat templates: the model's own Jinja template (GGUF
//! `tokenizer.chat_template`, or `tokenizer_config.json`) rendered with
//! minijinja, or a built-in one (ChatML, Gemma, Llama 3) chosen from the
//! vocabulary's special tokens when the file has none.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use super::Tokenizer;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error("the model has no chat template and none of the built-in ones (ChatML, Gemma, Llama 3) fits its vocabulary")]
    NoTemplate,
    #[error("chat template: {0}")]
    Template(String),
}

pub const CHATML: &str =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Gemma's turn format; a system message is folded into the first user turn.
pub const GEMMA: &str = "{{ bos_token }}{% set first = namespace(prefix='') %}\
{% for m in messages %}{% if m.role == 'system' %}{% set first.prefix = m.content ~ '\n\n' %}{% else %}\
<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n{{ first.prefix }}{{ m.content | trim }}<end_of_turn>\n\
{% set first.prefix = '' %}{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

pub const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n\
{{ m.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// A chat template and the special-token strings it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    /// Name of the built-in template in use, if the model had none.
    pub builtin: Option<&'static str>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The model's template if it has one, else a built-in one that fits its tokens.
    pub fn for_model(file_template: Option<&str>, tok: &Tokenizer) -> Result<Self, ChatError> {
        let text = |id: Option<u32>| {
            id.and_then(|i| tok.vocab.tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let (bos, eos) = (text(tok.vocab.bos), text(tok.vocab.eos));
        if let Some(t) = file_template.filter(|t| !t.trim().is_empty()) {
            return Ok(ChatTemplate {
                source: t.to_owned(),
                builtin: None,
                bos,
                eos,
            });
        }
        let has = |t: &str| tok.vocab.by_text.contains_key(t);
        let (name, source) = if has("<|im_start|>") && has("<|im_end|>") {
            ("chatml", CHATML)
        } else if has("<start_of_turn>") && has("<end_of_turn>") {
            ("gemma", GEMMA)
        } else if has("<|start_header_id|>") && has("<|eot_id|>") {
            ("llama3", LLAMA3)
        } else {
            return Err(ChatError::NoTemplate);
        };
        Ok(ChatTemplate {
            source: source.to_owned(),
            builtin: Some(name),
            bos,
            eos,
        })
    }

    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use it for "today's date"; a fixed clock keeps prompts reproducible.
            fmt.replace("%Y", "2026")
                .replace("%m", "01")
                .replace("%d", "01")
                .replace("%B", "January")
                .replace("%b", "Jan")
        });
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| ChatError::Template(e.to_string()))?;
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| ChatError::Template(e.to_string()))
    }
}
