//! CLIP's byte-level BPE tokenizer, with ids identical to open_clip 3.3.0's
//! `get_tokenizer('ViT-B-32')` (its `SimpleTokenizer`, clean mode `lower`).
//!
//! A text goes through the same steps as in open_clip:
//! 1. `ftfy.fix_text` (ftfy 6.3.1 defaults), see [below](#ftfy) for what is ported;
//! 2. Python's `html.unescape`, twice, then `strip()`;
//! 3. whitespace runs (Python's `str.isspace`) become one space; lower-casing
//!    (full Unicode mapping, final sigma included, like `str.lower`);
//! 4. the pre-tokenizer regex: the special tokens and the contractions `'s 't 're
//!    've 'm 'll 'd` (case-insensitive, so `'ſ` counts as `'s`), letter runs, single
//!    digits, runs of other non-space characters;
//! 5. each piece's UTF-8 bytes mapped through CLIP's byte→character table and
//!    merged with the first 48,894 merge rules of `bpe_simple_vocab_16e6.txt.gz`
//!    (bundled in the binary), the last symbol of a word carrying `</w>`.
//!
//! `tokenize` adds `<start_of_text>` (49406) and `<end_of_text>` (49407), pads with
//! 0 to the context length, and a too-long text is cut to the context length with its
//! last id replaced by `<end_of_text>`, as open_clip does.
//!
//! # ftfy
//! Ported exactly (each segment of text up to and including a `\n`, repeated until
//! nothing changes, as `fix_text` does): HTML unescaping with ftfy's rules (only
//! references ending in `;`, upper-case forms such as `&EACUTE;`, skipped for the
//! rest of the text once a segment contains `<`), C1 controls read as Windows-1252,
//! Latin ligatures, full/half-width forms and U+3000, curly quotes, line breaks,
//! ANSI terminal escapes, removal of control characters, NFC.
//!
//! Not ported, so such texts can tokenize differently from open_clip:
//! - `fix_encoding`, ftfy's mojibake repair (with its sub-steps `restore_byte_a0`,
//!   `replace_lossy_sequences`, `decode_inconsistent_utf8`): text such as `cafÃ©`
//!   or `donâ€™t` is tokenized as written, where open_clip first turns it into
//!   `café` / `don't`. It only fires on text that its "badness" heuristic flags as
//!   mojibake; the fixture `tests/fixtures/tokenizer_known_differences.jsonl`
//!   lists such texts and the test checks that they still differ in exactly this
//!   way.
//! - `fix_surrogates`: cannot arise, a Rust `str` holds no lone surrogates.
//! - Unicode versions: the reference is Python 3.11 (`unicodedata` and `str.lower`
//!   at Unicode 14.0) with the `regex` module 2026.11.19 (Unicode 17); the Rust
//!   tables are of other versions. Wherever that changed a result over all code
//!   points (lower-casing and final-sigma context, combining classes and
//!   compositions of characters assigned after 14.0; `\p{L}`/`\p{N}` membership of
//!   characters assigned in 16 and 17) it is patched to Python's answer. Not
//!   patched: U+0295 `ʕ` (cased in 14.0, not in Rust's tables) and U+1171E
//!   (case-ignorable in 14.0) right next to a capital `Σ` can change whether it
//!   becomes final `ς`. Another Python or a newer Rust may differ on characters
//!   assigned after Unicode 14.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::{Arc, RwLock};

use regex::Regex;

mod clean;
mod python_unicode;

use clean::Cleaner;
use python_unicode::{PYTHON_EXTRA_LETTERS, PYTHON_EXTRA_NUMBERS};

/// The merge rules and the vocabulary, as shipped with open_clip (MIT licence).
const BPE_VOCAB_GZ: &[u8] = include_bytes!("../data/bpe_simple_vocab_16e6.txt.gz");
/// Merge lines used by open_clip: `merges[1 : 49152 - 256 - 2 + 1]`.
const MERGE_COUNT: usize = 49152 - 256 - 2;
/// Words cached before the cache is emptied, bounding its memory on endless corpora.
const BPE_CACHE_CAPACITY: usize = 1 << 20;

const START_OF_TEXT: &str = "<start_of_text>";
const END_OF_TEXT: &str = "<end_of_text>";

/// Errors of [`Tokenizer::decode`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizerError {
    /// An id outside the vocabulary.
    #[error("token id {id} is outside the CLIP vocabulary (size {vocab_size})")]
    UnknownId {
        /// The offending id.
        id: i64,
        /// The vocabulary size.
        vocab_size: usize,
    },
}

/// CLIP's byte-level BPE tokenizer, ids identical to open_clip's.
///
/// Cheap to clone (the tables are shared) and `Send + Sync`: share one across
/// loader threads; the per-word BPE cache is shared too.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Id → token string.
    decoder: Vec<String>,
    /// Byte-encoded character → original byte, for decoding.
    byte_decoder: HashMap<char, u8>,
    /// Id of the one-byte symbol, and of the one-byte symbol ending a word (`</w>`).
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// (left id, right id) → (merge rank, id of the merged symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    pretokenizer: Regex,
    cleaner: Cleaner,
    /// Pre-tokenized word → its BPE ids.
    bpe_cache: RwLock<HashMap<String, Vec<u32>>>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.decoder.len())
            .field("merges", &self.inner.merges.len())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// `<start_of_text>` id.
    pub const SOT: u32 = 49406;
    /// `<end_of_text>` id.
    pub const EOT: u32 = 49407;
    /// Vocabulary size.
    pub const VOCAB_SIZE: usize = 49408;
    /// Context length of every OpenAI/open_clip CLIP text tower.
    pub const DEFAULT_CONTEXT_LENGTH: usize = 77;

    /// The tokenizer with the bundled vocabulary.
    pub fn new() -> Self {
        // The vocabulary is compiled into the binary; a failure here is a build defect
        // that every test catches, not a property of user data.
        let merges_text = gunzip_to_string(BPE_VOCAB_GZ).expect("bundled BPE vocabulary is valid gzip UTF-8");
        let byte_encoder = bytes_to_unicode();

        let merge_pairs: Vec<(&str, &str)> = merges_text
            .split('\n')
            .skip(1)
            .take(MERGE_COUNT)
            .map(|line| {
                let mut parts = line.split_whitespace();
                let left = parts.next().expect("bundled merge line has two symbols");
                let right = parts.next().expect("bundled merge line has two symbols");
                (left, right)
            })
            .collect();
        assert_eq!(merge_pairs.len(), MERGE_COUNT, "bundled BPE vocabulary is complete");

        // Vocabulary order as open_clip builds it: bytes, bytes + `</w>`, merges, specials.
        let mut vocab: Vec<String> = Vec::with_capacity(Self::VOCAB_SIZE);
        vocab.extend(byte_encoder.iter().map(|(_, ch)| ch.to_string()));
        vocab.extend(byte_encoder.iter().map(|(_, ch)| format!("{ch}</w>")));
        vocab.extend(merge_pairs.iter().map(|(left, right)| format!("{left}{right}")));
        vocab.push(START_OF_TEXT.to_string());
        vocab.push(END_OF_TEXT.to_string());
        assert_eq!(vocab.len(), Self::VOCAB_SIZE);

        let mut encoder = HashMap::with_capacity(vocab.len());
        for (id, token) in vocab.iter().enumerate() {
            // Later duplicates win, as in Python's dict(zip(vocab, range)).
            encoder.insert(token.clone(), id as u32);
        }
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        let mut byte_decoder = HashMap::with_capacity(256);
        for &(byte, ch) in &byte_encoder {
            byte_ids[byte as usize] = encoder[&ch.to_string()];
            byte_end_ids[byte as usize] = encoder[&format!("{ch}</w>")];
            byte_decoder.insert(ch, byte);
        }
        let mut merges = HashMap::with_capacity(merge_pairs.len());
        for (rank, (left, right)) in merge_pairs.iter().enumerate() {
            if let (Some(&l), Some(&r)) = (encoder.get(*left), encoder.get(*right)) {
                let merged = encoder[&format!("{left}{right}")];
                merges.entry((l, r)).or_insert((rank as u32, merged));
            }
        }

        // U+0345 (combining ypogegrammeni) is left out of the last class because Python's
        // `regex` with IGNORECASE matches it with none of the alternatives (its case
        // fold is the letter ι), so open_clip drops it.
        let pattern = format!(
            r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|[\p{{L}}{l}]+|[\p{{N}}{n}]|[^\s\p{{L}}\p{{N}}\x{{345}}{l}{n}]+",
            l = PYTHON_EXTRA_LETTERS,
            n = PYTHON_EXTRA_NUMBERS,
        );
        let pretokenizer = Regex::new(&pattern).expect("pre-tokenizer regex compiles");

        Self {
            inner: Arc::new(Inner {
                decoder: vocab,
                byte_decoder,
                byte_ids,
                byte_end_ids,
                merges,
                pretokenizer,
                cleaner: Cleaner::new(),
                bpe_cache: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The text after open_clip's cleaning (ftfy, HTML unescape, whitespace, lower case).
    pub fn clean(&self, text: &str) -> String {
        self.inner.cleaner.clean(text)
    }

    /// BPE ids of `text` after cleaning, without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_up_to(text, usize::MAX)
    }

    /// Like [`encode`](Self::encode) but stops once `max_ids` ids are produced (the
    /// result may be a little longer: the last word is kept whole).
    fn encode_up_to(&self, text: &str, max_ids: usize) -> Vec<u32> {
        let cleaned = self.inner.cleaner.clean(text);
        let mut ids = Vec::new();
        for piece in self.inner.pretokenizer.find_iter(&cleaned) {
            if ids.len() >= max_ids {
                break;
            }
            match piece.as_str() {
                START_OF_TEXT => ids.push(Self::SOT),
                END_OF_TEXT => ids.push(Self::EOT),
                word => self.bpe_into(word, &mut ids),
            }
        }
        ids
    }

    /// `[SOT, ids.., EOT]` without padding, cut to `context_length` ids ending in EOT
    /// when longer (as open_clip). Empty when `context_length` is 0.
    pub fn tokenize_unpadded(&self, text: &str, context_length: usize) -> Vec<i64> {
        if context_length == 0 {
            return Vec::new();
        }
        let mut ids: Vec<i64> = Vec::with_capacity(context_length.min(256));
        ids.push(Self::SOT as i64);
        ids.extend(self.encode_up_to(text, context_length).into_iter().map(i64::from));
        ids.push(Self::EOT as i64);
        if ids.len() > context_length {
            ids.truncate(context_length);
            ids[context_length - 1] = Self::EOT as i64;
        }
        ids
    }

    /// `[SOT, ids.., EOT]` padded with 0 to `context_length`; too-long texts are cut
    /// and end in EOT (as open_clip). Empty when `context_length` is 0.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut ids = self.tokenize_unpadded(text, context_length);
        ids.resize(context_length, 0);
        ids
    }

    /// Tokenizes `texts` into one row-major `texts.len() × context_length` buffer, as
    /// open_clip's `tokenizer(texts)` tensor.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S], context_length: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(texts.len() * context_length);
        for text in texts {
            out.extend(self.tokenize(text.as_ref(), context_length));
        }
        out
    }

    /// Text of `ids` as open_clip's `decode`: `</w>` becomes a space, invalid UTF-8
    /// becomes U+FFFD.
    pub fn decode(&self, ids: &[i64]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let token = usize::try_from(id)
                .ok()
                .and_then(|index| self.inner.decoder.get(index))
                .ok_or(TokenizerError::UnknownId {
                    id,
                    vocab_size: Self::VOCAB_SIZE,
                })?;
            // Special tokens are plain ASCII and map to themselves in the byte table.
            bytes.extend(
                token
                    .chars()
                    .map(|ch| self.inner.byte_decoder.get(&ch).copied().unwrap_or(b'?')),
            );
        }
        Ok(String::from_utf8_lossy(&bytes).replace("</w>", " "))
    }

    /// Appends the BPE ids of one pre-tokenized word.
    fn bpe_into(&self, word: &str, ids: &mut Vec<u32>) {
        if let Ok(cache) = self.inner.bpe_cache.read() {
            if let Some(cached) = cache.get(word) {
                ids.extend_from_slice(cached);
                return;
            }
        }
        let merged = self.bpe(word.as_bytes());
        ids.extend_from_slice(&merged);
        if let Ok(mut cache) = self.inner.bpe_cache.write() {
            if cache.len() >= BPE_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(word.to_string(), merged);
        }
    }

    /// Merges the bytes of one word: repeatedly the lowest-ranked adjacent pair,
    /// every occurrence left to right, until no pair has a rank.
    fn bpe(&self, bytes: &[u8]) -> Vec<u32> {
        let inner = &*self.inner;
        let Some((&last, init)) = bytes.split_last() else {
            return Vec::new();
        };
        let mut word: Vec<u32> = init.iter().map(|&b| inner.byte_ids[b as usize]).collect();
        word.push(inner.byte_end_ids[last as usize]);
        let mut next = Vec::with_capacity(word.len());
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|pair| {
                    inner
                        .merges
                        .get(&(pair[0], pair[1]))
                        .map(|&(rank, merged)| (rank, pair[0], pair[1], merged))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, left, right, merged)) = best else {
                break;
            };
            next.clear();
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == left && word[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            std::mem::swap(&mut word, &mut next);
        }
        word
    }
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

fn gunzip_to_string(bytes: &[u8]) -> std::io::Result<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut text)?;
    Ok(text)
}

/// CLIP's reversible byte → printable character table, in open_clip's order: the
/// printable Latin-1 bytes keep their character, the others get U+0100 onwards.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let unprintable = (0..=255u8).filter(|&b| !printable(b));
    for (code, b) in (256u32..).zip(unprintable) {
        table.push((b, char::from_u32(code).unwrap_or('\u{FFFD}')));
    }
    table
}

#[cfg(test)]
mod tests;
