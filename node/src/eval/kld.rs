//! llama-perplexity's saved base distributions (`--kl-divergence-base
//! FILE` in its first run): so a model of ours can be measured against
//! the base as llama.cpp computed it, the same tokens, the same positions
//! and the same 16-bit log-probs, separating the two engines' base
//! forwards from their quantized ones.
//!
//! The layout (tools/perplexity/perplexity.cpp): the 8 bytes `_logits_`;
//! `n_ctx` (u32), `n_vocab` and `n_chunk` (i32); `n_ctx · n_chunk` token
//! ids (i32); then for each chunk, each scored position (the second half
//! of the chunk but its last: `n_ctx − 1 − n_ctx/2` of them) `nv =
//! 2·⌈n_vocab/2⌉ + 4` u16s: an f32 scale and an f32 minimum log-prob,
//! then one u16 per token, log p = scale · v + minimum (v = 0 also for
//! anything below max − 16). All little-endian.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// An opened base file, read position by position.
pub struct KldBase {
    path: PathBuf,
    pub n_ctx: usize,
    pub n_vocab: usize,
    /// The chunks' token ids as llama-perplexity tokenized the text.
    pub chunks: Vec<Vec<u32>>,
    reader: BufReader<File>,
    bytes: Vec<u8>,
}

/// One scored position's base distribution.
pub struct BasePosition<'a> {
    pub scale: f32,
    pub min_log_prob: f32,
    pub v: &'a [u16],
}

impl BasePosition<'_> {
    pub fn log_prob(&self, i: usize) -> f32 {
        self.scale * f32::from(self.v[i]) + self.min_log_prob
    }

    /// The most likely token as llama-perplexity finds it: the first of
    /// the highest stored values.
    pub fn argmax(&self) -> usize {
        let mut best = 0;
        for (i, &x) in self.v.iter().enumerate() {
            if x > self.v[best] {
                best = i;
            }
        }
        best
    }
}

impl KldBase {
    pub fn open(path: &Path) -> Result<KldBase, String> {
        let bad = |why: String| format!("{}: {why}", path.display());
        let f = File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut head = [0u8; 20];
        reader
            .read_exact(&mut head)
            .map_err(|_| bad("shorter than a llama-perplexity base file's header".into()))?;
        if &head[..8] != b"_logits_" {
            return Err(bad(
                "not a llama-perplexity base file (no `_logits_` magic)".into(),
            ));
        }
        let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let (n_ctx, n_vocab, n_chunk) = (word(8) as usize, word(12) as i32, word(16) as i32);
        if n_ctx < 4 || n_vocab <= 0 || n_chunk <= 0 {
            return Err(bad(format!(
                "header n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}: not a usable base"
            )));
        }
        let (n_vocab, n_chunk) = (n_vocab as usize, n_chunk as usize);
        let mut ids = vec![0u8; 4 * n_ctx * n_chunk];
        reader
            .read_exact(&mut ids)
            .map_err(|_| bad(format!("ends inside its {} token ids", n_ctx * n_chunk)))?;
        let tokens: Vec<u32> = ids
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(bad(format!(
                "token id {t} outside its vocabulary of {n_vocab}"
            )));
        }
        let chunks = tokens.chunks_exact(n_ctx).map(<[u32]>::to_vec).collect();
        let nv = 2 * n_vocab.div_ceil(2) + 4;
        Ok(KldBase {
            path: path.to_owned(),
            n_ctx,
            n_vocab,
            chunks,
            reader,
            bytes: vec![0; 2 * nv],
        })
    }

    /// Positions scored per chunk.
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.n_ctx / 2
    }

    /// The next scored position's base distribution, in file order.
    pub fn next(&mut self, v: &mut Vec<u16>) -> Result<(f32, f32), String> {
        self.reader.read_exact(&mut self.bytes).map_err(|_| {
            format!(
                "{}: ends before its last scored position",
                self.path.display()
            )
        })?;
        let f = |i: usize| f32::from_le_bytes(self.bytes[i..i + 4].try_into().expect("4 bytes"));
        let (scale, min_log_prob) = (f(0), f(4));
        v.clear();
        v.extend(
            self.bytes[8..8 + 2 * self.n_vocab]
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]])),
        );
        Ok((scale, min_log_prob))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base file as llama-perplexity writes one: 1 chunk of 4 tokens,
    /// vocabulary 3 (so nv = 8: 2 floats, 3 values, 1 pad).
    fn write(path: &Path, magic: &[u8]) {
        let mut b = magic.to_vec();
        b.extend(4u32.to_le_bytes());
        b.extend(3i32.to_le_bytes());
        b.extend(1i32.to_le_bytes());
        for t in [1i32, 2, 0, 1] {
            b.extend(t.to_le_bytes());
        }
        // 4 − 1 − 2 = 1 scored position.
        b.extend(0.5f32.to_le_bytes());
        b.extend((-3.0f32).to_le_bytes());
        for v in [2u16, 6, 6, 0] {
            b.extend(v.to_le_bytes());
        }
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn a_base_file_reads_back_and_bad_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("base.kld");
        write(&p, b"_logits_");
        let mut k = KldBase::open(&p).unwrap();
        assert_eq!((k.n_ctx, k.n_vocab, k.scored_per_chunk()), (4, 3, 1));
        assert_eq!(k.chunks, vec![vec![1, 2, 0, 1]]);
        let mut v = Vec::new();
        let (scale, min) = k.next(&mut v).unwrap();
        let pos = BasePosition {
            scale,
            min_log_prob: min,
            v: &v,
        };
        assert_eq!(v, [2, 6, 6]);
        assert_eq!(pos.log_prob(1), 0.0);
        assert_eq!(pos.log_prob(0), -2.0);
        // Ties go to the first, as in llama-perplexity.
        assert_eq!(pos.argmax(), 1);
        let e = k.next(&mut v).unwrap_err();
        assert!(e.contains("base.kld") && e.contains("ends before"), "{e}");

        write(&p, b"_logitz_");
        let e = KldBase::open(&p).err().unwrap();
        assert!(e.contains("base.kld") && e.contains("magic"), "{e}");
        std::fs::write(&p, b"_logits_").unwrap();
        assert!(KldBase::open(&p).err().unwrap().contains("header"));
    }
}
