//! Prompt-lookup drafts for speculative decoding: when the last few tokens
//! of a sequence occurred before (in its prompt or its own output), the
//! tokens that followed them then are a cheap guess at what follows now.
//! Input-grounded work (quoting, editing, summarising a given text, code
//! edits) repeats long runs of its prompt, and each run that is guessed
//! right is verified in one batched step instead of one step per token.
//! The guess costs no model; a wrong one costs only the extra positions of
//! one step, and the verification keeps the output exactly what plain
//! decoding gives (executor.rs).

/// The longest and shortest suffix looked up: four tokens rarely match by
/// chance; below two, a match says little about what follows.
pub const MAX_NGRAM: usize = 4;
pub const MIN_NGRAM: usize = 2;

/// Up to `k` tokens guessed to follow `tokens`, into `out` (cleared first):
/// for the longest suffix of `MAX_NGRAM` down to `MIN_NGRAM` tokens that
/// occurred earlier, the tokens after its most recent earlier occurrence.
pub fn prompt_lookup(tokens: &[u32], k: usize, out: &mut Vec<u32>) {
    out.clear();
    let len = tokens.len();
    if k == 0 {
        return;
    }
    for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
        if len <= n {
            continue;
        }
        let suffix = &tokens[len - n..];
        // Most recent first: the nearer an earlier occurrence, the likelier
        // the text goes on as it did there. A start at `len - n` would be
        // the suffix itself.
        let found = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix);
        if let Some(i) = found {
            let from = i + n;
            let to = (from + k).min(len);
            out.extend_from_slice(&tokens[from..to]);
            if !out.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(tokens: &[u32], k: usize) -> Vec<u32> {
        let mut out = vec![99];
        prompt_lookup(tokens, k, &mut out);
        out
    }

    #[test]
    fn the_tokens_after_the_last_earlier_occurrence_of_the_suffix() {
        // "1 2 3 4 5 … 1 2 3" → "4 5 6".
        assert_eq!(draft(&[1, 2, 3, 4, 5, 6, 7, 1, 2, 3], 3), vec![4, 5, 6]);
        // Capped by what there is after the match.
        assert_eq!(draft(&[7, 8, 9, 7, 8], 5), vec![9, 7, 8]);
        // The most recent occurrence wins.
        assert_eq!(draft(&[5, 6, 1, 5, 6, 2, 5, 6], 1), vec![2]);
    }

    #[test]
    fn longer_suffixes_first() {
        // The 3-gram "1 2 3" occurred followed by 9; the 2-gram "2 3" more
        // recently followed by 8: the longer match is the better guess.
        assert_eq!(draft(&[1, 2, 3, 9, 2, 3, 8, 1, 2, 3], 1), vec![9]);
    }

    #[test]
    fn nothing_without_a_match_of_two_tokens() {
        assert!(draft(&[1, 2, 3, 4, 5, 6], 4).is_empty());
        // A single repeated token is not enough.
        assert!(draft(&[1, 2, 3, 1], 4).is_empty());
        assert!(draft(&[], 4).is_empty());
        assert!(draft(&[1, 2, 1, 2], 0).is_empty());
    }
}
