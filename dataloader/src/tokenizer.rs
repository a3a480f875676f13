//! CLIP BPE tokenizer (placeholder signatures; the implementation replaces this file).

/// CLIP's byte-level BPE tokenizer, ids identical to open_clip's.
#[derive(Debug, Clone)]
pub struct Tokenizer {}

impl Tokenizer {
    /// `<start_of_text>` id.
    pub const SOT: u32 = 49406;
    /// `<end_of_text>` id.
    pub const EOT: u32 = 49407;
    /// Vocabulary size.
    pub const VOCAB_SIZE: usize = 49408;

    /// The tokenizer with the bundled vocabulary.
    pub fn new() -> Self {
        Self {}
    }
    /// BPE ids of `text` after cleaning, without start/end tokens.
    pub fn encode(&self, _text: &str) -> Vec<u32> {
        unimplemented!()
    }
    /// `[SOT, ids.., EOT]` padded with 0 to `context_length`; too-long texts are cut and end in EOT (as open_clip).
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = vec![Self::SOT as i64];
        ids.extend(self.encode(text).into_iter().map(|x| x as i64));
        ids.push(Self::EOT as i64);
        if ids.len() > context_length {
            ids.truncate(context_length);
            ids[context_length - 1] = Self::EOT as i64;
        }
        ids.resize(context_length, 0);
        ids
    }
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}
