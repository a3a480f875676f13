//! Parity of the Aho–Corasick matcher with MetaCLIP's substring rule:
//! (1) against the sets computed by the Python oracle in
//!     scripts/reference/make_metaclip_matching_fixture.py (committed fixture);
//! (2) against a plain Rust restatement of the rule, and against the Aho–Corasick
//!     formulation, on 10,000 generated captions.
use curator::metaclip::{spaced_text, AhoCorasickMatcher, AutomatonKind, Matcher, Metadata};
use curator::SampleRng;

#[derive(serde::Deserialize)]
struct Fixture {
    entries: Vec<String>,
    words: Vec<String>,
    separators: Vec<String>,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    matched: Vec<u32>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metaclip_matching.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's entries hold none that MetaCLIP would drop, so ids are list indices.
fn matcher(fx: &Fixture) -> Matcher {
    let metadata = Metadata::from_entries(fx.entries.iter().cloned());
    assert_eq!(metadata.entries(), fx.entries.as_slice());
    Matcher::new(&metadata).unwrap()
}

#[test]
fn matches_python_reference_sets() {
    let fx = fixture();
    let matcher = matcher(&fx);
    assert!(fx.cases.len() >= 1000);
    for case in &fx.cases {
        assert_eq!(matcher.matched(&case.text), case.matched, "text {:?}", case.text);
    }
    // The fixture exercises both outcomes.
    assert!(fx.cases.iter().any(|c| c.matched.is_empty()));
    assert!(fx.cases.iter().any(|c| c.matched.len() >= 3));
}

#[test]
fn matches_plain_oracle_on_10000_generated_captions() {
    let fx = fixture();
    let matcher = matcher(&fx);
    let padded: Vec<String> = fx.entries.iter().map(|e| format!(" {e} ")).collect();
    let metadata = Metadata::from_entries(fx.entries.iter().cloned());
    let aho_corasick = AhoCorasickMatcher::new(&metadata, AutomatonKind::Auto).unwrap();
    let mut with_matches = 0;
    for i in 0..10_000u64 {
        let rng = SampleRng::new(99, &i.to_string());
        let pick = |list: &[String], k: u64| list[(rng.uniform(k) * list.len() as f64) as usize].clone();
        let words = 1 + (rng.uniform(0) * 12.0) as u64;
        let mut text = String::new();
        for w in 0..words {
            text.push_str(&pick(&fx.words, 2 * w + 1));
            text.push_str(&pick(&fx.separators, 2 * w + 2));
        }
        let spaced = spaced_text(&text);
        let oracle: Vec<u32> = (0..padded.len() as u32)
            .filter(|&e| spaced.contains(&padded[e as usize]))
            .collect();
        let got = matcher.matched(&text);
        assert_eq!(got, oracle, "text {text:?}");
        assert_eq!(aho_corasick.matched(&text), oracle, "Aho–Corasick, text {text:?}");
        with_matches += usize::from(!got.is_empty());
    }
    assert!(with_matches > 5_000, "{with_matches}");
}
