//! WordNet noun glosses: lemma → the definition of its first (most frequent) sense, with
//! WordNet's `morphy` base-form rules for nouns and greedy longest-first phrase matching.
//!
//! Read from Debian's `wordnet-base` (WordNet 3.0): `index.noun` lists each lemma's synset
//! offsets, most frequent sense first; `data.noun` holds the synsets at those byte offsets,
//! the gloss after ` | `; `noun.exc` maps irregular plurals to base forms (`geese goose`).
//!
//! Lemmas and text go through the same [`words`] tokenizer (lowercase; a word is a run of
//! letters and digits, with `-` or `'` allowed between two of them), so `St._John's_wort`
//! is the key `st john's wort` and matches "St. John's wort". When two lemmas give the
//! same key, the first in `index.noun` (alphabetical) keeps it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::CurateError;

/// WordNet's noun detachment rules (morphy's `sufx`/`addr` for nouns), tried in this order.
const NOUN_SUFFIX_RULES: [(&str, &str); 8] = [
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
];

/// Function words that WordNet also lists as nouns (`a` = vitamin A, `in` = inch, `it`,
/// `one`, ...). Without a part-of-speech tagger they would be glossed in nearly every
/// caption, so as single words they are never terms (they may still start a phrase).
const NOT_TERMS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "nor", "if", "as", "at", "by", "for", "from", "in", "into", "of", "off",
    "on", "onto", "out", "over", "to", "up", "down", "with", "without", "about", "after", "before", "under", "i", "me",
    "my", "we", "us", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its", "they", "them", "their",
    "who", "what", "this", "that", "these", "those", "there", "here", "is", "are", "was", "were", "be", "been",
    "being", "am", "do", "does", "did", "have", "has", "had", "will", "would", "can", "could", "may", "might", "must",
    "shall", "should", "no", "not", "yes", "all", "any", "some", "each", "every", "more", "most", "other", "such",
    "so", "very", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

/// The WordNet noun gloss dictionary (see the module doc). A term's id is its index.
#[derive(Debug, Clone, Default)]
pub struct GlossDictionary {
    /// (term key, definition), by id.
    terms: Vec<(String, String)>,
    ids: HashMap<String, u32>,
    /// Irregular inflected form → base forms, from `noun.exc`.
    exceptions: HashMap<String, Vec<String>>,
    /// First word of a multi-word term → the most words of any term starting with it.
    phrase_lengths: HashMap<String, usize>,
}

impl GlossDictionary {
    /// Load `index.noun`, `data.noun` and `noun.exc` from `wordnet_dir`.
    pub fn load(wordnet_dir: &Path) -> Result<Self, CurateError> {
        let index_path = wordnet_dir.join("index.noun");
        let data_path = wordnet_dir.join("data.noun");
        let exc_path = wordnet_dir.join("noun.exc");
        let index = read_wordnet_file(&index_path)?;
        let data = read_wordnet_file(&data_path)?;
        let exceptions = read_wordnet_file(&exc_path)?;

        let mut entries = Vec::new();
        for (line_no, line) in String::from_utf8_lossy(&index).lines().enumerate() {
            // The licence header's lines start with two spaces.
            if line.starts_with("  ") || line.is_empty() {
                continue;
            }
            let bad = |reason: &str| CurateError::Metadata {
                path: index_path.clone(),
                reason: format!("line {}: {reason}", line_no + 1),
            };
            let (lemma, offset) = first_sense(line).ok_or_else(|| bad("not a WordNet index line"))?;
            let gloss_line = line_at(&data, offset).ok_or_else(|| CurateError::Metadata {
                path: data_path.clone(),
                reason: format!(
                    "no synset at byte offset {offset} (named by {} line {})",
                    index_path.display(),
                    line_no + 1
                ),
            })?;
            if let Some(definition) = definition(&gloss_line) {
                entries.push((lemma.replace('_', " "), definition));
            }
        }
        let mut pairs = Vec::new();
        for line in String::from_utf8_lossy(&exceptions).lines() {
            let mut fields = line.split(' ').filter(|f| !f.is_empty());
            if let Some(inflected) = fields.next() {
                for base in fields {
                    pairs.push((inflected.replace('_', " "), base.replace('_', " ")));
                }
            }
        }
        Ok(Self::from_parts(entries, pairs))
    }

    /// A dictionary from (lemma, definition) pairs and (inflected form, base form) pairs;
    /// both go through [`words`] (repeats keep the first).
    pub fn from_parts(
        entries: impl IntoIterator<Item = (String, String)>,
        exceptions: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut dictionary = Self::default();
        for (lemma, definition) in entries {
            let lemma_words = words(&lemma);
            let key = lemma_words.join(" ");
            if key.is_empty() || dictionary.ids.contains_key(&key) {
                continue;
            }
            if lemma_words.len() > 1 {
                let longest = dictionary.phrase_lengths.entry(lemma_words[0].clone()).or_insert(0);
                *longest = (*longest).max(lemma_words.len());
            }
            dictionary.ids.insert(key.clone(), dictionary.terms.len() as u32);
            dictionary.terms.push((key, definition));
        }
        for (inflected, base) in exceptions {
            let (inflected, base) = (words(&inflected).join(" "), words(&base).join(" "));
            if !inflected.is_empty() && !base.is_empty() {
                dictionary.exceptions.entry(inflected).or_default().push(base);
            }
        }
        dictionary
    }

    /// Number of terms.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The term `id` (lowercase words joined by spaces).
    pub fn term(&self, id: u32) -> &str {
        &self.terms[id as usize].0
    }

    /// The definition of term `id`'s first sense.
    pub fn gloss(&self, id: u32) -> &str {
        &self.terms[id as usize].1
    }

    /// The term of a noun `form` (one word), as WordNet's morphy finds it: an irregular form
    /// is looked up with its `noun.exc` base forms only; otherwise the form itself, then the
    /// regular suffix rules in order (`dogs` → `dog`, `boxes` → `box`, `flies` → `fly`;
    /// words in `-ss` are not stripped).
    pub fn morphy(&self, form: &str) -> Option<u32> {
        self.resolve("", form)
    }

    /// The term a class name or phrase names: the whole phrase (lowercased, `_` as a space),
    /// its last word reduced by [`GlossDictionary::morphy`]'s rules (`ice creams` →
    /// `ice cream`). `None` when WordNet has no such noun.
    pub fn lookup(&self, phrase: &str) -> Option<u32> {
        let phrase_words = words(&phrase.replace('_', " "));
        let (last, prefix) = phrase_words.split_last()?;
        self.resolve(&prefix.join(" "), last)
    }

    /// The terms of `text` in order, one per occurrence: at each word the longest
    /// multi-word term starting there (last word by morphy), else the word's own term,
    /// else nothing; a match skips the words it covers. Function words and numbers are
    /// never single-word terms.
    pub fn find_terms(&self, text: &str, terms: &mut Vec<u32>) {
        terms.clear();
        let text_words = words(text);
        let mut start = 0;
        while start < text_words.len() {
            let longest = self.phrase_lengths.get(&text_words[start]).copied().unwrap_or(0);
            let longest = longest.min(text_words.len() - start);
            let phrase = (2..=longest).rev().find_map(|n| {
                let prefix = text_words[start..start + n - 1].join(" ");
                self.resolve(&prefix, &text_words[start + n - 1]).map(|id| (id, n))
            });
            if let Some((id, n)) = phrase {
                terms.push(id);
                start += n;
                continue;
            }
            let word = &text_words[start];
            if is_term_word(word) {
                if let Some(id) = self.morphy(word) {
                    terms.push(id);
                }
            }
            start += 1;
        }
    }

    /// The first of `prefix + candidate` (candidates of `last` in morphy's order) that is a term.
    fn resolve(&self, prefix: &str, last: &str) -> Option<u32> {
        let key = |candidate: &str| {
            if prefix.is_empty() {
                candidate.to_string()
            } else {
                format!("{prefix} {candidate}")
            }
        };
        let find = |candidate: &str| self.ids.get(&key(candidate)).copied();
        // An irregular whole phrase (`bases on balls`), then an irregular last word.
        let whole = key(last);
        if let Some(bases) = self.exceptions.get(&whole) {
            return std::iter::once(&whole)
                .chain(bases)
                .find_map(|candidate| self.ids.get(candidate).copied());
        }
        if let Some(bases) = self.exceptions.get(last) {
            return std::iter::once(last)
                .chain(bases.iter().map(String::as_str))
                .find_map(find);
        }
        if let Some(id) = find(last) {
            return Some(id);
        }
        if last.ends_with("ss") {
            return None;
        }
        NOUN_SUFFIX_RULES.iter().find_map(|(suffix, ending)| {
            let stem = last.strip_suffix(suffix).filter(|stem| !stem.is_empty())?;
            find(&format!("{stem}{ending}"))
        })
    }
}

/// Whether a caption word may be a single-word term: it has a letter and is no function word.
fn is_term_word(word: &str) -> bool {
    word.chars().any(char::is_alphabetic) && !NOT_TERMS.contains(&word)
}

/// The lowercase words of `text`: runs of letters and digits, with `-` and `'` kept when
/// they join two of them (`t-shirt`, `john's`).
pub fn words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut result = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let joins = (c == '-' || c == '\'' || c == '\u{2019}')
            && !current.is_empty()
            && chars.get(i + 1).is_some_and(|next| next.is_alphanumeric());
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else if joins {
            // A typographic apostrophe is written as WordNet writes it.
            current.push(if c == '-' { '-' } else { '\'' });
        } else if !current.is_empty() {
            result.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        result.push(current);
    }
    result
}

fn read_wordnet_file(path: &Path) -> Result<Vec<u8>, CurateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CurateError::WordNetMissing {
            missing: PathBuf::from(path),
        }),
        Err(e) => Err(CurateError::io(path, e)),
    }
}

/// An `index.noun` line → (lemma, byte offset of its first sense's synset in `data.noun`).
/// Format: `lemma pos synset_cnt p_cnt [ptr_symbol]{p_cnt} sense_cnt tagsense_cnt
/// [synset_offset]{synset_cnt}`.
fn first_sense(line: &str) -> Option<(&str, usize)> {
    let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
    let lemma = *fields.first()?;
    let pointer_count: usize = fields.get(3)?.parse().ok()?;
    let offset = fields.get(4 + pointer_count + 2)?.parse().ok()?;
    Some((lemma, offset))
}

/// The `data.noun` line starting at byte `offset`, checked to be that synset's line.
fn line_at(data: &[u8], offset: usize) -> Option<String> {
    let rest = data.get(offset..)?;
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = String::from_utf8_lossy(&rest[..end]).into_owned();
    let line_offset: usize = line.split(' ').next()?.parse().ok()?;
    (line_offset == offset).then_some(line)
}

/// The definition in a data line's gloss: the text after ` | ` up to the first example
/// (`; "`), trimmed. `None` when there is no definition.
fn definition(data_line: &str) -> Option<String> {
    let gloss = data_line.split_once(" | ")?.1;
    let definition = gloss.split_once("; \"").map_or(gloss, |(d, _)| d).trim();
    (!definition.is_empty() && !definition.starts_with('"')).then(|| definition.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A WordNet folder with `index.noun`, `data.noun` and `noun.exc` for `synsets`
    /// ((lemmas, gloss) per synset, one sense each; a lemma in several synsets gets them in
    /// order), with real byte offsets.
    pub(crate) fn write_wordnet(dir: &Path, synsets: &[(&[&str], &str)]) {
        let header = "  1 This software and database is being provided to you, the LICENSEE\n";
        let mut data = String::from(header);
        let mut offsets: Vec<(String, usize)> = Vec::new();
        for (lemmas, gloss) in synsets {
            let offset = data.len();
            let words: Vec<String> = lemmas.iter().map(|l| format!("{l} 0")).collect();
            data.push_str(&format!(
                "{offset:08} 05 n {:02x} {} 000 | {gloss}  \n",
                lemmas.len(),
                words.join(" ")
            ));
            for lemma in *lemmas {
                offsets.push((lemma.to_lowercase(), offset));
            }
        }
        let mut lemmas: Vec<String> = offsets.iter().map(|(l, _)| l.clone()).collect();
        lemmas.sort();
        lemmas.dedup();
        let mut index = String::from(header);
        for lemma in &lemmas {
            let senses: Vec<String> = offsets
                .iter()
                .filter(|(l, _)| l == lemma)
                .map(|(_, o)| format!("{o:08}"))
                .collect();
            index.push_str(&format!(
                "{lemma} n {} 2 @ ~ {} 0 {}  \n",
                senses.len(),
                senses.len(),
                senses.join(" ")
            ));
        }
        std::fs::write(dir.join("data.noun"), data).unwrap();
        std::fs::write(dir.join("index.noun"), index).unwrap();
        std::fs::write(
            dir.join("noun.exc"),
            "geese goose\nmice mouse\nbases_on_balls base_on_balls\n",
        )
        .unwrap();
    }

    pub(crate) fn small_wordnet() -> (tempfile::TempDir, GlossDictionary) {
        let dir = tempfile::tempdir().unwrap();
        write_wordnet(
            dir.path(),
            &[
                (
                    &["dog", "domestic_dog"],
                    "a member of the genus Canis; occurs in many breeds; \"the dog barked\"",
                ),
                (
                    &["dog"],
                    "a dull unattractive unpleasant girl or woman; \"she got a reputation as a frump\"",
                ),
                (
                    &["goose"],
                    "web-footed long-necked typically gregarious migratory aquatic birds",
                ),
                (
                    &["ice_cream"],
                    "frozen dessert containing cream and sugar and flavoring",
                ),
                (&["ice"], "water frozen in the solid state"),
                (&["cream"], "the part of milk containing the butterfat"),
                (&["box"], "a (usually rectangular) container; may have a lid"),
                (&["fly"], "two-winged insects characterized by active flight"),
                (
                    &["glass"],
                    "a brittle transparent solid with irregular atomic structure",
                ),
                (
                    &["glasses"],
                    "optical instrument consisting of a frame that holds a pair of lenses",
                ),
                (&["St._John's_wort"], "any of numerous plants of the genus Hypericum"),
                (&["a"], "the blood group whose red cells carry the A antigen"),
                (
                    &["park"],
                    "a large area of land preserved in its natural state as public property",
                ),
                (
                    &["base_on_balls"],
                    "(baseball) an advance to first base by a batter who receives four balls",
                ),
            ],
        );
        let dictionary = GlossDictionary::load(dir.path()).unwrap();
        (dir, dictionary)
    }

    fn term_of(d: &GlossDictionary, id: Option<u32>) -> Option<&str> {
        id.map(|id| d.term(id))
    }

    #[test]
    fn first_sense_definition_without_examples() {
        let (_dir, d) = small_wordnet();
        let dog = d.lookup("dog").unwrap();
        assert_eq!(d.gloss(dog), "a member of the genus Canis; occurs in many breeds");
        assert_eq!(d.gloss(d.lookup("Domestic_Dog").unwrap()), d.gloss(dog));
        assert_eq!(
            d.gloss(d.lookup("box").unwrap()),
            "a (usually rectangular) container; may have a lid"
        );
    }

    #[test]
    fn morphy_regular_rules_and_exceptions() {
        let (_dir, d) = small_wordnet();
        assert_eq!(term_of(&d, d.morphy("dogs")), Some("dog"));
        assert_eq!(term_of(&d, d.morphy("boxes")), Some("box"));
        assert_eq!(term_of(&d, d.morphy("flies")), Some("fly"));
        assert_eq!(term_of(&d, d.morphy("geese")), Some("goose"));
        // A form that is itself a lemma stays itself; -ss is not stripped.
        assert_eq!(term_of(&d, d.morphy("glasses")), Some("glasses"));
        assert_eq!(term_of(&d, d.morphy("glass")), Some("glass"));
        assert_eq!(d.morphy("cats"), None);
        assert_eq!(d.morphy("cat"), None);
        assert_eq!(term_of(&d, d.lookup("Ice creams")), Some("ice cream"));
        assert_eq!(term_of(&d, d.lookup("bases-on-balls")), None);
        assert_eq!(term_of(&d, d.lookup("bases on balls")), Some("base on balls"));
        assert_eq!(d.lookup("  "), None);
    }

    #[test]
    fn phrases_match_greedily_longest_first() {
        let (_dir, d) = small_wordnet();
        let mut ids = Vec::new();
        d.find_terms(
            "A dog eats ICE-CREAM? no: ice creams, with St. John's wort and 2 geese in a park.",
            &mut ids,
        );
        let found: Vec<&str> = ids.iter().map(|&id| d.term(id)).collect();
        // "ice-cream" is one hyphenated word, not the lemma "ice cream"; "a" is a function word.
        assert_eq!(found, ["dog", "ice cream", "st john's wort", "goose", "park"]);
        d.find_terms("", &mut ids);
        assert!(ids.is_empty());
    }

    #[test]
    fn words_split_like_lemmas() {
        assert_eq!(
            words("T-shirt, John’s -dog- 'x' ÉCOLE"),
            ["t-shirt", "john's", "dog", "x", "école"]
        );
        assert_eq!(words(" ... "), Vec::<String>::new());
    }

    #[test]
    fn missing_files_and_bad_offsets_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = GlossDictionary::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("index.noun") && err.contains("apt-get install wordnet-base"),
            "{err}"
        );
        write_wordnet(dir.path(), &[(&["dog"], "a canine")]);
        std::fs::write(dir.path().join("index.noun"), "dog n 1 0 1 0 00000007  \n").unwrap();
        let err = GlossDictionary::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("data.noun") && err.contains("offset 7"), "{err}");
        std::fs::write(dir.path().join("index.noun"), "dog n\n").unwrap();
        let err = GlossDictionary::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("index.noun") && err.contains("line 1"), "{err}");
    }

    /// The installed WordNet 3.0 (Debian's wordnet-base, installed by scripts/setup.sh):
    /// real glosses. Without it the test fails, naming what is missing.
    #[test]
    fn real_wordnet_glosses() {
        let dir = Path::new(crate::metaclip::DEFAULT_WORDNET_DIR);
        assert!(
            dir.join("index.noun").exists(),
            "WordNet is missing ({}/index.noun): run scripts/setup.sh, which installs wordnet-base",
            dir.display()
        );
        let d = GlossDictionary::load(dir).unwrap();
        assert!(d.len() > 100_000, "{}", d.len());
        assert_eq!(term_of(&d, d.morphy("geese")), Some("goose"));
        assert_eq!(term_of(&d, d.morphy("dogs")), Some("dog"));
        let ice_cream = d.lookup("ice cream").unwrap();
        assert_eq!(
            d.gloss(ice_cream),
            "frozen dessert containing cream and sugar and flavoring"
        );
        assert!(d
            .gloss(d.lookup("dog").unwrap())
            .starts_with("a member of the genus Canis"));
    }
}
