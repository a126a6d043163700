//! Pre-tokenizers of byte-level BPE vocabularies: how text is cut into
//! pieces before merges, per `tokenizer.ggml.pre`. Written as small hand
//! scanners over code points (the patterns are fixed, so no regex engine),
//! with Unicode general categories for letters and numbers.

use unicode_general_category::{get_general_category, GeneralCategory as G};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// Each digit alone, then GPT-2 (smollm, starcoder, refact, command-r).
    DigitsThenGpt2,
    /// Llama 3: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, numbers in
    /// runs of at most 3, ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`.
    Llama3,
    /// Qwen2: as Llama 3 but numbers one digit at a time.
    Qwen2,
}

impl PreTokenizer {
    /// The pre-tokenizer named by `tokenizer.ggml.pre` (None: unknown name).
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt2" | "default" | "mpt" | "olmo" | "jais" | "gpt-2" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => PreTokenizer::DigitsThenGpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
                PreTokenizer::Llama3
            }
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "hunyuan" => PreTokenizer::Qwen2,
            _ => return None,
        })
    }

    /// Split `text` into pieces (byte ranges that cover it exactly, in order).
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut out = Vec::new();
        let emit = |range: std::ops::Range<usize>, out: &mut Vec<&'a str>| {
            let start = chars[range.start].0;
            let end = chars.get(range.end).map_or(text.len(), |c| c.0);
            if end > start {
                out.push(&text[start..end]);
            }
        };
        match self {
            PreTokenizer::Gpt2 => gpt2(&chars, 0, chars.len(), &mut |r| emit(r, &mut out)),
            PreTokenizer::DigitsThenGpt2 => {
                // \p{N} first: each number character is its own piece; GPT-2 runs on the rest.
                let mut start = 0;
                for i in 0..chars.len() {
                    if is_number(chars[i].1) {
                        gpt2(&chars, start, i, &mut |r| emit(r, &mut out));
                        emit(i..i + 1, &mut out);
                        start = i + 1;
                    }
                }
                gpt2(&chars, start, chars.len(), &mut |r| emit(r, &mut out));
            }
            PreTokenizer::Llama3 => llama3(&chars, 3, &mut |r| emit(r, &mut out)),
            PreTokenizer::Qwen2 => llama3(&chars, 1, &mut |r| emit(r, &mut out)),
        }
        out
    }
}

pub fn is_letter(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
    )
}

pub fn is_number(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::DecimalNumber | G::LetterNumber | G::OtherNumber
    )
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Neither whitespace, letter nor number.
fn is_other(c: char) -> bool {
    !is_space(c) && !is_letter(c) && !is_number(c)
}

/// GPT-2 pattern over `chars[start..end]` (lookahead does not cross `end`).
fn gpt2(
    chars: &[(usize, char)],
    start: usize,
    end: usize,
    emit: &mut dyn FnMut(std::ops::Range<usize>),
) {
    let at = |i: usize| if i < end { Some(chars[i].1) } else { None };
    let mut pos = start;
    while pos < end {
        let c = chars[pos].1;
        let begin = pos;
        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' {
            if let Some(c1) = at(pos + 1) {
                if matches!(c1, 's' | 't' | 'm' | 'd') {
                    emit(begin..pos + 2);
                    pos += 2;
                    continue;
                }
                if let Some(c2) = at(pos + 2) {
                    if matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        emit(begin..pos + 3);
                        pos += 3;
                        continue;
                    }
                }
            }
        }
        let (lead, next) = if c == ' ' {
            (1, at(pos + 1))
        } else {
            (0, Some(c))
        };
        // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
        if let Some(n) = next {
            let class: Option<fn(char) -> bool> = if is_letter(n) {
                Some(is_letter)
            } else if is_number(n) {
                Some(is_number)
            } else if is_other(n) {
                Some(is_other)
            } else {
                None
            };
            if let Some(class) = class {
                pos += lead;
                while at(pos).is_some_and(class) {
                    pos += 1;
                }
                emit(begin..pos);
                continue;
            }
        }
        // \s+(?!\S) and \s+
        let mut n_ws = 0;
        while at(pos + n_ws).is_some_and(is_space) {
            n_ws += 1;
        }
        if n_ws > 1 && at(pos + n_ws).is_some() {
            pos += n_ws - 1;
            emit(begin..pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            emit(begin..pos);
            continue;
        }
        pos += 1;
        emit(begin..pos);
    }
}

/// Llama 3 / Qwen2 pattern; `max_digits` is 3 (Llama 3) or 1 (Qwen2).
fn llama3(
    chars: &[(usize, char)],
    max_digits: usize,
    emit: &mut dyn FnMut(std::ops::Range<usize>),
) {
    let end = chars.len();
    let at = |i: usize| if i < end { Some(chars[i].1) } else { None };
    let is_crlf = |c: char| c == '\r' || c == '\n';
    let mut pos = 0;
    while pos < end {
        let c = chars[pos].1;
        let begin = pos;
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' {
            if let Some(c1) = at(pos + 1).map(|c| c.to_ascii_lowercase()) {
                if matches!(c1, 's' | 't' | 'm' | 'd') {
                    emit(begin..pos + 2);
                    pos += 2;
                    continue;
                }
                if let Some(c2) = at(pos + 2).map(|c| c.to_ascii_lowercase()) {
                    if matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        emit(begin..pos + 3);
                        pos += 3;
                        continue;
                    }
                }
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !is_crlf(c) && !is_number(c) {
            let lead = if is_letter(c) { 0 } else { 1 };
            if at(pos + lead).is_some_and(is_letter) {
                pos += lead;
                while at(pos).is_some_and(is_letter) {
                    pos += 1;
                }
                emit(begin..pos);
                continue;
            }
        }
        // \p{N}{1,max}
        if is_number(c) {
            let mut n = 0;
            while n < max_digits && at(pos).is_some_and(is_number) {
                pos += 1;
                n += 1;
            }
            emit(begin..pos);
            continue;
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let lead = if c == ' ' { 1 } else { 0 };
        if at(pos + lead).is_some_and(is_other) {
            pos += lead;
            while at(pos).is_some_and(is_other) {
                pos += 1;
            }
            while at(pos).is_some_and(is_crlf) {
                pos += 1;
            }
            emit(begin..pos);
            continue;
        }
        // \s*[\r\n]+ : whitespace up to and including the last newline of the run
        let mut n_ws = 0;
        let mut last_nl = None;
        while let Some(w) = at(pos + n_ws).filter(|&w| is_space(w)) {
            if is_crlf(w) {
                last_nl = Some(n_ws);
            }
            n_ws += 1;
        }
        if let Some(nl) = last_nl {
            pos += nl + 1;
            emit(begin..pos);
            continue;
        }
        // \s+(?!\S) and \s+
        if n_ws > 1 && at(pos + n_ws).is_some() {
            pos += n_ws - 1;
            emit(begin..pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            emit(begin..pos);
            continue;
        }
        pos += 1;
        emit(begin..pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_splits_like_the_regex() {
        let p = PreTokenizer::Gpt2;
        assert_eq!(p.split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            p.split("Hello  world\n\n"),
            ["Hello", " ", " world", "\n\n"]
        );
        assert_eq!(p.split("it's 2024!!"), ["it", "'s", " 2024", "!!"]);
        assert_eq!(p.split("a  \tb"), ["a", "  ", "\t", "b"]);
    }

    #[test]
    fn smollm_isolates_digits() {
        let p = PreTokenizer::DigitsThenGpt2;
        assert_eq!(p.split("x 123y"), ["x", " ", "1", "2", "3", "y"]);
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        let p = PreTokenizer::Llama3;
        assert_eq!(
            p.split("12345 ok\n\n  x"),
            ["123", "45", " ok", "\n\n", " ", " x"]
        );
    }

    #[test]
    fn pieces_cover_the_text() {
        for p in [
            PreTokenizer::Gpt2,
            PreTokenizer::DigitsThenGpt2,
            PreTokenizer::Llama3,
            PreTokenizer::Qwen2,
        ] {
            let t = "Ünïcödé 你好 42\r\n\t 'LL don't  ";
            assert_eq!(p.split(t).concat(), t);
        }
    }
}
