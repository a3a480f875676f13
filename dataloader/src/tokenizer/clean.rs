//! open_clip's text cleaning before BPE: ftfy's `fix_text` (as ported, see the parent module's
//! doc), Python's `html.unescape` twice, strip, whitespace collapsing and lower case.
use std::collections::HashMap;

use regex::{Captures, Regex};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use super::python_unicode::{is_python_space, python_lower, python_nfc, RUST_ONLY_DIGITS};

/// Python's `html.entities.html5`: `name\tHEX HEX..` per line.
const HTML5_ENTITIES: &str = include_str!("../../data/html5_entities.txt");
/// ftfy fixes text in segments of at most this many characters.
const FTFY_MAX_SEGMENT_CHARS: usize = 1_000_000;
/// ftfy repeats its fixes until the text stops changing; this bounds the repeats.
const FTFY_MAX_ROUNDS: usize = 64;

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
pub(super) struct Cleaner {
    /// Python's `html.entities.html5` (names without `&`).
    pub(super) html5: HashMap<&'static str, String>,
    /// ftfy's entity table: `&name;` forms of `html5` plus its upper-case additions.
    ftfy_entities: HashMap<String, String>,
    /// Full/half-width forms → standard forms (ftfy's WIDTH_MAP).
    width_map: HashMap<char, String>,
    python_charref: Regex,
    ftfy_entity: Regex,
    terminal_escape: Regex,
}

impl Cleaner {
    pub(super) fn new() -> Self {
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

    pub(super) fn clean(&self, text: &str) -> String {
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
