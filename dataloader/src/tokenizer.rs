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

use regex::{Captures, Regex};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// The merge rules and the vocabulary, as shipped with open_clip (MIT licence).
const BPE_VOCAB_GZ: &[u8] = include_bytes!("../data/bpe_simple_vocab_16e6.txt.gz");
/// Python's `html.entities.html5`: `name\tHEX HEX..` per line.
const HTML5_ENTITIES: &str = include_str!("../data/html5_entities.txt");
/// Merge lines used by open_clip: `merges[1 : 49152 - 256 - 2 + 1]`.
const MERGE_COUNT: usize = 49152 - 256 - 2;
/// Words cached before the cache is emptied, bounding its memory on endless corpora.
const BPE_CACHE_CAPACITY: usize = 1 << 20;
/// ftfy fixes text in segments of at most this many characters.
const FTFY_MAX_SEGMENT_CHARS: usize = 1_000_000;
/// ftfy repeats its fixes until the text stops changing; this bounds the repeats.
const FTFY_MAX_ROUNDS: usize = 64;

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

/// Code points that Python's `regex` 2026.11.19 (Unicode 17) puts in `\p{L}` and the
/// `regex` crate's older tables do not (characters assigned in Unicode 16 and 17);
/// measured by comparing both over all code points.
const PYTHON_EXTRA_LETTERS: &str = concat!(
    r"\x{558}\x{58B}-\x{58C}\x{88F}\x{C5C}\x{CDC}\x{208F}\x{209D}-\x{209F}\x{A7CE}-\x{A7CF}\x{A7D2}\x{A7D4}",
    r"\x{A7DD}\x{A7E2}\x{A7F1}\x{AB6C}-\x{AB6D}\x{107BB}-\x{107BF}\x{10940}-\x{10959}\x{10EC5}-\x{10EC7}",
    r"\x{10ED9}-\x{10EEE}\x{11B0A}\x{11DB0}-\x{11DDB}\x{11DF1}\x{16EA0}-\x{16EB8}\x{16EBB}-\x{16ED3}",
    r"\x{16FF2}-\x{16FF3}\x{187F8}-\x{187FF}\x{18CD6}-\x{18CDA}\x{18D09}-\x{18D20}\x{18D80}-\x{18DF2}",
    r"\x{18E00}-\x{19191}\x{191A0}-\x{191D2}\x{1B123}-\x{1B128}\x{1B168}\x{1D6A6}\x{1DF1F}-\x{1DF24}",
    r"\x{1DF2B}-\x{1DF81}\x{1DF90}-\x{1DF96}\x{1DFCD}-\x{1DFFF}\x{1E6C0}-\x{1E6DE}\x{1E6E0}-\x{1E6E2}",
    r"\x{1E6E4}-\x{1E6E5}\x{1E6E7}-\x{1E6ED}\x{1E6F0}-\x{1E6F4}\x{1E6FE}-\x{1E6FF}\x{2B73A}-\x{2B73F}",
    r"\x{2B81E}\x{2CEA2}-\x{2CEAD}\x{323B0}-\x{33479}\x{3D000}-\x{3FC3F}",
);
/// The same for `\p{N}`.
const PYTHON_EXTRA_NUMBERS: &str =
    r"\x{11DE0}-\x{11DE9}\x{1246F}\x{12475}-\x{1247F}\x{12550}-\x{12686}\x{16FF4}-\x{16FF6}";

/// Decimal digits of Unicode 15-16 that the `regex` crate's `\d` has and Python
/// 3.11's `re` (Unicode 14.0, used by ftfy) does not; measured over all code points.
const RUST_ONLY_DIGITS: &str = concat!(
    r"\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59}",
    r"\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA}",
);

/// Characters unassigned in Python 3.11 (Unicode 14.0), so neither cased nor
/// case-ignorable there and never lower-cased, that Rust's `to_lowercase` treats as
/// cased or case-ignorable (which moves final-sigma decisions) or lower-cases.
/// Measured over all code points with Rust 1.95 (`"AXΣ"`, `"AΣXB"`, single `X`).
fn is_uncased_in_python(ch: char) -> bool {
    matches!(
        ch as u32,
        0x897
            | 0xECE
            | 0x1ACF..=0x1ADD
            | 0x1AE0..=0x1AEB
            | 0x1C89..=0x1C8A
            | 0xA7CB..=0xA7CF
            | 0xA7D2
            | 0xA7D4
            | 0xA7DA..=0xA7DC
            | 0xA7F1
            | 0x10D4E
            | 0x10D50..=0x10D65
            | 0x10D69..=0x10D6D
            | 0x10D6F..=0x10D85
            | 0x10EC5
            | 0x10EFA..=0x10EFF
            | 0x11241
            | 0x113BB..=0x113C0
            | 0x113CE
            | 0x113D0
            | 0x113D2
            | 0x113E1..=0x113E2
            | 0x11B60
            | 0x11B62..=0x11B64
            | 0x11B66
            | 0x11DD9
            | 0x11F00..=0x11F01
            | 0x11F36..=0x11F3A
            | 0x11F40
            | 0x11F42
            | 0x11F5A
            | 0x13439..=0x13440
            | 0x13447..=0x13455
            | 0x1611E..=0x16129
            | 0x1612D..=0x1612F
            | 0x16D40..=0x16D42
            | 0x16D6B..=0x16D6C
            | 0x16EA0..=0x16EB8
            | 0x16EBB..=0x16ED3
            | 0x16FF2..=0x16FF3
            | 0x1DF25..=0x1DF2A
            | 0x1E030..=0x1E06D
            | 0x1E08F
            | 0x1E4EB..=0x1E4EF
            | 0x1E5EE..=0x1E5EF
            | 0x1E6E3
            | 0x1E6E6
            | 0x1E6EE..=0x1E6EF
            | 0x1E6F5
            | 0x1E6FF
    )
}

/// Python's `str.lower`: full mappings and final sigma, with Unicode 14.0's cased set.
fn python_lower(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    if !text.chars().any(is_uncased_in_python) {
        return text.to_lowercase();
    }
    // Splitting at these characters keeps final-sigma decisions right: to Python they
    // are neither cased nor case-ignorable, like the end of the string.
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find(is_uncased_in_python) {
        out.push_str(&rest[..index].to_lowercase());
        let kept = rest[index..].chars().next().unwrap_or_default();
        out.push(kept);
        rest = &rest[index + kept.len_utf8()..];
    }
    out.push_str(&rest.to_lowercase());
    out
}

/// Characters that take part in canonical reordering or composition in the Rust
/// tables but are unassigned (so inert starters) in Python 3.11's Unicode 14.0:
/// combining marks whose class differs (measured over all code points) and the
/// Unicode 16 scripts with new canonical compositions (Todhri, Tulu-Tigalari, Gurung
/// Khema, Kirat Rai), whole blocks.
fn is_inert_in_python_nfc(ch: char) -> bool {
    matches!(
        ch as u32,
        0x5C8..=0x5C9
            | 0x897
            | 0x1ACF..=0x1AF0
            | 0x105C0..=0x105FF
            | 0x10D69..=0x10D6D
            | 0x10ECB..=0x10ECF
            | 0x10EF0..=0x10EFB
            | 0x10EFD..=0x10EFF
            | 0x11380..=0x113FF
            | 0x11F41..=0x11F42
            | 0x16100..=0x1613F
            | 0x16D40..=0x16D7F
            | 0x1D127..=0x1D128
            | 0x1D250..=0x1D252
            | 0x1D25B..=0x1D25C
            | 0x1D25F
            | 0x1D280..=0x1D281
            | 0x1E08F
            | 0x1E4EC..=0x1E4EF
            | 0x1E5EE..=0x1E5EF
            | 0x1E6E3
            | 0x1E6E6
            | 0x1E6EE..=0x1E6EF
            | 0x1E6F5
    )
}

/// `unicodedata.normalize("NFC", ..)` as Python 3.11 (Unicode 14.0) does it.
fn python_nfc(text: &str) -> String {
    if !text.chars().any(is_inert_in_python_nfc) {
        return text.nfc().collect();
    }
    // An inert starter blocks reordering and composition across it, so the pieces
    // between such characters normalise independently.
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find(is_inert_in_python_nfc) {
        out.extend(rest[..index].nfc());
        let kept = rest[index..].chars().next().unwrap_or_default();
        out.push(kept);
        rest = &rest[index + kept.len_utf8()..];
    }
    out.extend(rest.nfc());
    out
}

/// Python's `str.isspace`: Unicode White_Space plus the separators U+001C..U+001F.
fn is_python_space(ch: char) -> bool {
    ch.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&ch)
}

/// Windows-1252 meaning of bytes 0x80..0x9F; the five unassigned bytes keep their C1
/// code point (ftfy's "sloppy" codec, and Python's `html` table for `&#128;`..).
const CP1252_C1: [char; 32] = [
    '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{2C6}', '\u{2030}',
    '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}', '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}',
    '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}',
    '\u{17E}', '\u{178}',
];

/// open_clip's text cleaning: ftfy (as ported), `html.unescape` twice, strip,
/// whitespace collapsing, lower case.
struct Cleaner {
    /// Python's `html.entities.html5` (names without `&`).
    html5: HashMap<&'static str, String>,
    /// ftfy's entity table: `&name;` forms of `html5` plus its upper-case additions.
    ftfy_entities: HashMap<String, String>,
    /// Full/half-width forms → standard forms (ftfy's WIDTH_MAP).
    width_map: HashMap<char, String>,
    python_charref: Regex,
    ftfy_entity: Regex,
    terminal_escape: Regex,
}

impl Cleaner {
    fn new() -> Self {
        let mut html5 = HashMap::with_capacity(2300);
        for line in HTML5_ENTITIES.lines() {
            let (name, hex) = line.split_once('\t').expect("bundled entity line is `name\\tHEX..`");
            let value: String = hex
                .split(' ')
                .map(|code| {
                    u32::from_str_radix(code, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .expect("bundled entity code point")
                })
                .collect();
            html5.insert(name, value);
        }
        let mut cleaner = Self {
            html5,
            ftfy_entities: HashMap::new(),
            width_map: HashMap::new(),
            python_charref: Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)")
                .expect("charref regex compiles"),
            ftfy_entity: Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("entity regex compiles"),
            terminal_escape: Regex::new(&format!(r"\x1B\[(?:[\d--[{RUST_ONLY_DIGITS}]]|;)*[a-zA-Z]"))
                .expect("escape regex compiles"),
        };
        let mut ftfy_entities = HashMap::with_capacity(3000);
        for (name, value) in &cleaner.html5 {
            if !name.ends_with(';') {
                continue;
            }
            ftfy_entities.insert(format!("&{name}"), value.clone());
            // ftfy also reads the all-caps form of lower-case names, where that form
            // means nothing to html.unescape.
            if *name == name.to_lowercase() {
                let upper = format!("&{}", name.to_uppercase());
                if cleaner.html_unescape(&upper) == upper {
                    ftfy_entities.insert(upper, value.to_uppercase());
                }
            }
        }
        cleaner.ftfy_entities = ftfy_entities;
        let mut width_map: HashMap<char, String> = (0xFF01..0xFFF0u32)
            .filter_map(char::from_u32)
            .filter_map(|ch| {
                let standard: String = std::iter::once(ch).nfkc().collect();
                (standard != ch.to_string()).then_some((ch, standard))
            })
            .collect();
        width_map.insert('\u{3000}', " ".to_string());
        cleaner.width_map = width_map;
        cleaner
    }

    fn clean(&self, text: &str) -> String {
        let fixed = self.ftfy_fix_text(text);
        let unescaped = self.html_unescape(&self.html_unescape(&fixed));
        let mut collapsed = String::with_capacity(unescaped.len());
        for word in unescaped.split(is_python_space).filter(|w| !w.is_empty()) {
            if !collapsed.is_empty() {
                collapsed.push(' ');
            }
            collapsed.push_str(word);
        }
        python_lower(&collapsed)
    }

    /// `ftfy.fix_text` with its defaults, minus mojibake repair (see the module doc).
    fn ftfy_fix_text(&self, text: &str) -> String {
        // Plain ASCII without `&` or control characters is left alone by every fix.
        let untouched = text
            .bytes()
            .all(|b| (0x20..0x7F).contains(&b) && b != b'&' || matches!(b, b'\t' | b'\n' | 0x0C));
        if untouched {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut unescape = true;
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            if let Some((byte_index, _)) = rest[..end].char_indices().nth(FTFY_MAX_SEGMENT_CHARS) {
                end = byte_index;
            }
            let segment = &rest[..end];
            // ftfy's unescape_html="auto": once a segment looks like HTML, stop for good.
            if unescape && segment.contains('<') {
                unescape = false;
            }
            out.push_str(&self.ftfy_fix_segment(segment, unescape));
            rest = &rest[end..];
        }
        out
    }

    fn ftfy_fix_segment(&self, segment: &str, unescape: bool) -> String {
        let mut text = segment.to_string();
        for _ in 0..FTFY_MAX_ROUNDS {
            let before = text.clone();
            if unescape && text.contains('&') {
                text = self.ftfy_unescape_html(&text);
            }
            text = self.ftfy_map_chars(&text);
            if text.contains('\u{1B}') {
                text = self.terminal_escape.replace_all(&text, "").into_owned();
            }
            text.retain(|ch| !is_ftfy_control_char(ch));
            if is_nfc_quick(text.chars()) != IsNormalized::Yes {
                text = python_nfc(&text);
            }
            if text == before {
                break;
            }
        }
        text
    }

    /// ftfy's character fixes, in its order: C1 controls as Windows-1252, Latin
    /// ligatures, character width, curly quotes, line breaks.
    fn ftfy_map_chars(&self, text: &str) -> String {
        let c1_fixed: String = text
            .chars()
            .map(|ch| match ch as u32 {
                code @ 0x80..=0x9F => CP1252_C1[(code - 0x80) as usize],
                _ => ch,
            })
            .collect();
        let mut widened = String::with_capacity(c1_fixed.len());
        for ch in c1_fixed.chars() {
            match latin_ligature(ch) {
                Some(letters) => {
                    for letter in letters.chars() {
                        self.push_width_fixed(letter, &mut widened)
                    }
                }
                None => self.push_width_fixed(ch, &mut widened),
            }
        }
        let mut out = String::with_capacity(widened.len());
        let mut chars = widened.chars().peekable();
        while let Some(ch) = chars.next() {
            match ch {
                '\u{2BC}' | '\u{2018}'..='\u{201B}' => out.push('\''),
                '\u{201C}'..='\u{201F}' => out.push('"'),
                '\r' => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    out.push('\n');
                }
                '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
                _ => out.push(ch),
            }
        }
        out
    }

    fn push_width_fixed(&self, ch: char, out: &mut String) {
        match self.width_map.get(&ch) {
            Some(standard) => out.push_str(standard),
            None => out.push(ch),
        }
    }

    /// ftfy's `unescape_html`: `&name;` from its table, `&#..;` only when Python
    /// decodes it completely; everything else stays.
    fn ftfy_unescape_html(&self, text: &str) -> String {
        self.ftfy_entity
            .replace_all(text, |caps: &Captures| {
                let reference = &caps[0];
                if let Some(value) = self.ftfy_entities.get(reference) {
                    return value.clone();
                }
                if reference.starts_with("&#") {
                    let decoded = self.html_unescape(reference);
                    if !decoded.contains(';') {
                        return decoded;
                    }
                }
                reference.to_string()
            })
            .into_owned()
    }

    /// Python's `html.unescape` (HTML5 rules: legacy names without `;`, longest
    /// prefix match, Windows-1252 numeric references, invalid code points).
    fn html_unescape(&self, text: &str) -> String {
        if !text.contains('&') {
            return text.to_string();
        }
        self.python_charref
            .replace_all(text, |caps: &Captures| {
                let reference = &caps[1];
                if let Some(number) = reference.strip_prefix('#') {
                    let number = number.trim_end_matches(';');
                    let value = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => parse_saturating(hex, 16),
                        None => parse_saturating(number, 10),
                    };
                    return numeric_reference(value);
                }
                if let Some(value) = self.html5.get(reference) {
                    return value.clone();
                }
                // Longest known prefix of at least two characters, the rest kept.
                let boundaries: Vec<usize> = reference.char_indices().map(|(i, _)| i).skip(2).collect();
                for &end in boundaries.iter().rev() {
                    if let Some(value) = self.html5.get(&reference[..end]) {
                        return format!("{value}{}", &reference[end..]);
                    }
                }
                format!("&{reference}")
            })
            .into_owned()
    }
}

fn parse_saturating(digits: &str, radix: u32) -> u64 {
    digits.chars().filter_map(|d| d.to_digit(radix)).fold(0u64, |acc, d| {
        acc.saturating_mul(u64::from(radix)).saturating_add(u64::from(d))
    })
}

/// Python's `html` rules for `&#N;`.
fn numeric_reference(value: u64) -> String {
    match value {
        0x00 => "\u{FFFD}".to_string(),
        0x0D => "\r".to_string(),
        0x80..=0x9F => CP1252_C1[(value - 0x80) as usize].to_string(),
        0xD800..=0xDFFF => "\u{FFFD}".to_string(),
        v if v > 0x10FFFF => "\u{FFFD}".to_string(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        v if v & 0xFFFE == 0xFFFE => String::new(),
        v => char::from_u32(v as u32)
            .map(String::from)
            .unwrap_or_else(|| "\u{FFFD}".to_string()),
    }
}

/// ftfy's `fix_latin_ligatures` table.
fn latin_ligature(ch: char) -> Option<&'static str> {
    Some(match ch {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// ftfy's `remove_control_chars` set.
fn is_ftfy_control_char(ch: char) -> bool {
    matches!(ch as u32, 0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::new()
    }

    #[test]
    fn known_ids_from_open_clip() {
        let tok = tokenizer();
        assert_eq!(
            tok.tokenize_unpadded("a photo of a cat", 77),
            vec![49406, 320, 1125, 539, 320, 2368, 49407]
        );
        assert_eq!(tok.tokenize_unpadded("", 77), vec![49406, 49407]);
        assert_eq!(tok.encode("a photo of a cat"), vec![320, 1125, 539, 320, 2368]);
    }

    #[test]
    fn tokenize_pads_and_truncates_like_open_clip() {
        let tok = tokenizer();
        let row = tok.tokenize("a photo of a cat", 10);
        assert_eq!(row, vec![49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]);
        let cut = tok.tokenize("a photo of a cat", 4);
        assert_eq!(cut, vec![49406, 320, 1125, 49407]);
        assert_eq!(tok.tokenize("cat", 1), vec![49407]);
        assert!(tok.tokenize("cat", 0).is_empty());
        let long = "a ".repeat(200);
        let row = tok.tokenize(&long, 77);
        assert_eq!(row.len(), 77);
        assert_eq!(row[76], Tokenizer::EOT as i64);
        assert!(row[1..76].iter().all(|&id| id == 320));
    }

    #[test]
    fn batch_is_rows_of_tokenize() {
        let tok = tokenizer();
        let batch = tok.tokenize_batch(&["a cat", "a dog"], 8);
        assert_eq!(batch.len(), 16);
        assert_eq!(&batch[..8], tok.tokenize("a cat", 8).as_slice());
        assert_eq!(&batch[8..], tok.tokenize("a dog", 8).as_slice());
    }

    #[test]
    fn cleaning_collapses_space_lowercases_and_unescapes() {
        let tok = tokenizer();
        assert_eq!(tok.clean("  A\tPhoto \n OF\u{a0}a CAT  "), "a photo of a cat");
        assert_eq!(tok.clean("Fish &amp; Chips"), "fish & chips");
        assert_eq!(tok.clean("&amp;amp;amp;"), "&");
        assert_eq!(tok.clean("P&EACUTE;REZ"), "pérez");
        assert_eq!(tok.clean("&copy 2024"), "© 2024");
        assert_eq!(tok.clean("\u{201c}here\u{2019}s\u{201d} ﬁne"), "\"here's\" fine");
        assert_eq!(tok.clean("ＬＯＵＤ　ＮＯＩＳＥＳ"), "loud noises");
        assert_eq!(tok.clean("e\u{301}"), "é");
        assert_eq!(tok.clean("\u{1b}[31mred\u{1b}[0m\u{0}"), "red");
    }

    #[test]
    fn contractions_and_special_tokens_split_as_open_clip() {
        let tok = tokenizer();
        assert_eq!(tok.encode("it's"), [tok.encode("it"), tok.encode("'s")].concat());
        assert_eq!(tok.encode("<start_of_text>"), vec![Tokenizer::SOT]);
        assert_eq!(tok.encode("x<end_of_text>"), vec![tok.encode("x")[0], Tokenizer::EOT]);
    }

    #[test]
    fn decode_inverts_encode_on_clean_text() {
        let tok = tokenizer();
        let ids: Vec<i64> = tok.encode("a photo of a café 🐱").into_iter().map(i64::from).collect();
        assert_eq!(tok.decode(&ids).as_deref(), Ok("a photo of a café 🐱 "));
        assert_eq!(
            tok.decode(&[49408]),
            Err(TokenizerError::UnknownId {
                id: 49408,
                vocab_size: 49408
            })
        );
        assert!(tok.decode(&[-1]).is_err());
    }

    #[test]
    fn vocabulary_has_open_clip_shape() {
        let tok = tokenizer();
        assert_eq!(tok.inner.decoder.len(), Tokenizer::VOCAB_SIZE);
        assert_eq!(tok.inner.decoder[Tokenizer::SOT as usize], "<start_of_text>");
        assert_eq!(tok.inner.decoder[Tokenizer::EOT as usize], "<end_of_text>");
        assert_eq!(tok.inner.merges.len(), MERGE_COUNT);
        assert_eq!(tok.inner.cleaner.html5.len(), 2231);
    }

    #[test]
    fn shared_across_threads_gives_same_ids() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        let tok = tokenizer();
        let expected = tok.encode("many threads tokenizing the same caption");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let tok = tok.clone();
                std::thread::spawn(move || tok.encode("many threads tokenizing the same caption"))
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().ok(), Some(expected.clone()));
        }
    }
}
