//! Python's Unicode behaviour on Rust's tables: the Python 3.11 (Unicode 14.0) and `regex`
//! 2026.11.19 (Unicode 17) answers that open_clip's tokenizer gets, where the Rust tables are of
//! other Unicode versions (lower-casing and final sigma, NFC, `str.isspace`, `\p{L}`/`\p{N}`
//! and `\d` membership), each measured over all code points.
use unicode_normalization::UnicodeNormalization;

/// Code points that Python's `regex` 2026.11.19 (Unicode 17) puts in `\p{L}` and the
/// `regex` crate's older tables do not (characters assigned in Unicode 16 and 17);
/// measured by comparing both over all code points.
pub(super) const PYTHON_EXTRA_LETTERS: &str = concat!(
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
pub(super) const PYTHON_EXTRA_NUMBERS: &str =
    r"\x{11DE0}-\x{11DE9}\x{1246F}\x{12475}-\x{1247F}\x{12550}-\x{12686}\x{16FF4}-\x{16FF6}";

/// Decimal digits of Unicode 15-16 that the `regex` crate's `\d` has and Python
/// 3.11's `re` (Unicode 14.0, used by ftfy) does not; measured over all code points.
pub(super) const RUST_ONLY_DIGITS: &str = concat!(
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
pub(super) fn python_lower(text: &str) -> String {
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
pub(super) fn python_nfc(text: &str) -> String {
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
pub(super) fn is_python_space(ch: char) -> bool {
    ch.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&ch)
}
