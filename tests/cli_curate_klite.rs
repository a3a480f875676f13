//! `ferroclip curate` with a `klite` stage end to end: tiny shards and a tiny WordNet made
//! here, captions rewritten with the gloss of their least frequent term.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

mod common;
use common::write_caption_shard;

fn ferroclip() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
}

/// Members of a tar by name.
fn read_shard(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut members = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        members.insert(name, data);
    }
    members
}

/// A WordNet folder in WordNet's own formats: one synset per (lemmas, gloss), byte offsets real.
fn write_wordnet(dir: &Path, synsets: &[(&[&str], &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = String::from("  1 This software and database is being provided to you\n");
    let mut index = BTreeMap::new();
    for (lemmas, gloss) in synsets {
        let offset = data.len();
        let words: Vec<String> = lemmas.iter().map(|l| format!("{l} 0")).collect();
        data.push_str(&format!(
            "{offset:08} 05 n {:02x} {} 000 | {gloss}  \n",
            lemmas.len(),
            words.join(" ")
        ));
        for lemma in *lemmas {
            index.entry(lemma.to_lowercase()).or_insert(offset);
        }
    }
    let index: String = index
        .iter()
        .map(|(lemma, offset)| format!("{lemma} n 1 1 @ 1 0 {offset:08}  \n"))
        .collect();
    std::fs::write(dir.join("data.noun"), data).unwrap();
    std::fs::write(dir.join("index.noun"), index).unwrap();
    std::fs::write(dir.join("noun.exc"), "geese goose\n").unwrap();
}

fn curate(config: &Path, input: &str, output: &Path) -> std::process::Output {
    ferroclip()
        .args(["curate", "--threads", "2", "--config"])
        .arg(config)
        .args(["--input", input, "--output"])
        .arg(output)
        .output()
        .unwrap()
}

#[test]
fn klite_rewrites_captions_with_the_rarest_terms_gloss() {
    let dir = tempfile::tempdir().unwrap();
    write_wordnet(
        &dir.path().join("wn"),
        &[
            (&["dog"], "a domesticated canine; \"the dog barked\""),
            (&["goose"], "web-footed aquatic bird"),
            (&["ice_cream"], "frozen dessert"),
            (&["park"], "a large public area of land"),
        ],
    );
    // Corpus frequencies: dog 4, park 3, goose 2, ice cream 1.
    write_caption_shard(
        &dir.path().join("00000.tar"),
        0,
        &["a dog in the park", "dogs with ice cream", "", "geese in a park"],
    );
    write_caption_shard(
        &dir.path().join("00001.tar"),
        100,
        &["a dog", "a goose and a dog in a park\n", "nothing known here"],
    );
    let config = dir.path().join("klite.toml");
    std::fs::write(
        &config,
        "[[stage]]\nkind = \"klite\"\nprobability = 1.0\nseed = 3\nwordnet_dir = \"wn\"\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let input = format!("{}/{{00000..00001}}.tar", dir.path().display());
    let output = curate(&config, &input, &out);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let first = read_shard(&out.join("00000.tar"));
    let second = read_shard(&out.join("00001.tar"));
    let caption =
        |shard: &BTreeMap<String, Vec<u8>>, key: &str| String::from_utf8(shard[&format!("{key}.txt")].clone()).unwrap();
    assert_eq!(
        caption(&first, "000000000"),
        "a dog in the park ; park , a large public area of land"
    );
    assert_eq!(
        caption(&first, "000000001"),
        "dogs with ice cream ; ice cream , frozen dessert"
    );
    assert!(!first.contains_key("000000002.txt"), "the empty caption is dropped");
    assert_eq!(
        caption(&first, "000000003"),
        "geese in a park ; goose , web-footed aquatic bird"
    );
    assert_eq!(caption(&second, "000000100"), "a dog ; dog , a domesticated canine");
    assert_eq!(
        caption(&second, "000000101"),
        "a goose and a dog in a park ; goose , web-footed aquatic bird"
    );
    assert_eq!(caption(&second, "000000102"), "nothing known here");
    assert_eq!(second["000000100.png"], b"png of 000000100");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let stage = &report["stages"][0];
    assert_eq!(stage["kind"], "klite");
    assert_eq!(stage["rewritten"], 5);
    assert_eq!(stage["kept"], 1);
    assert_eq!(stage["dropped"]["empty_caption"], 1);
    assert_eq!(stage["stats"]["texts_without_term"], 1);
    assert_eq!(stage["stats"]["texts_with_knowledge"], 5);
    assert_eq!(stage["stats"]["terms"], 4);

    // Probability 0: every sample passes unchanged.
    std::fs::write(
        &config,
        "[[stage]]\nkind = \"klite\"\nprobability = 0.0\nwordnet_dir = \"wn\"\n",
    )
    .unwrap();
    let unchanged = dir.path().join("unchanged");
    let output = curate(&config, &input, &unchanged);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let second = read_shard(&unchanged.join("00001.tar"));
    assert_eq!(caption(&second, "000000101"), "a goose and a dog in a park\n");
}

#[test]
fn klite_config_errors_name_the_field_and_a_missing_wordnet() {
    let dir = tempfile::tempdir().unwrap();
    write_caption_shard(&dir.path().join("00000.tar"), 0, &["a dog"]);
    let input = dir.path().join("00000.tar").display().to_string();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[[stage]]\nkind = \"klite\"\nprobability = 2\n").unwrap();
    let output = curate(&config, &input, &dir.path().join("a"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stage[0].probability"), "{stderr}");
    std::fs::write(&config, "[[stage]]\nkind = \"klite\"\nwordnet_dir = \"nowhere\"\n").unwrap();
    let output = curate(&config, &input, &dir.path().join("b"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nowhere") && stderr.contains("apt-get install wordnet-base"),
        "{stderr}"
    );
}

/// The shipped configs/curate/klite.toml with the installed WordNet (Debian's wordnet-base,
/// which scripts/setup.sh installs): a machine without it fails here, loudly, instead of
/// passing without having tested anything.
#[test]
fn shipped_klite_config_with_real_wordnet() {
    assert!(
        Path::new("/usr/share/wordnet/index.noun").exists(),
        "WordNet is missing (/usr/share/wordnet/index.noun): run scripts/setup.sh, which installs wordnet-base"
    );
    let dir = tempfile::tempdir().unwrap();
    let captions: Vec<String> = (0..40)
        .map(|i| {
            if i == 0 {
                "a dog with ice cream".to_string()
            } else {
                "a dog".to_string()
            }
        })
        .collect();
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    write_caption_shard(&dir.path().join("00000.tar"), 0, &refs);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/curate/klite.toml");
    let out = dir.path().join("out");
    let output = curate(&config, &dir.path().join("00000.tar").display().to_string(), &out);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shard = read_shard(&out.join("00000.tar"));
    let texts: Vec<String> = (0..40)
        .map(|i| String::from_utf8(shard[&format!("{i:09}.txt")].clone()).unwrap())
        .collect();
    let with_knowledge = texts.iter().filter(|t| t.contains(" ; ")).count();
    // probability = 0.5 in the shipped config: some, not all.
    assert!((5..=35).contains(&with_knowledge), "{with_knowledge} of 40: {texts:?}");
    if texts[0].contains(" ; ") {
        assert_eq!(
            texts[0],
            "a dog with ice cream ; ice cream , frozen dessert containing cream and sugar and flavoring"
        );
    }
    for text in texts.iter().skip(1).filter(|t| t.contains(" ; ")) {
        assert!(text.contains(" ; dog , a member of the genus Canis"), "{text}");
    }
}
