//! `ferroclip curate` end to end on tiny shards made here, and `ferroclip curate match`.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::write_caption_shard;

fn ferroclip() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroclip"))
}

#[test]
fn curate_writes_shards_and_reports_whose_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let captions = [
        "a grinning face",
        "red heart!",
        "a cat face, grinning",
        "nothing at all",
        "",
    ];
    for s in 0..3 {
        let many: Vec<&str> = (0..30).map(|i| captions[(i + s) % captions.len()]).collect();
        write_caption_shard(&dir.path().join(format!("{s:05}.tar")), s * 100, &many);
    }
    std::fs::write(dir.path().join("entries.txt"), "face\nred heart\ncat\ngrinning face\n").unwrap();
    let config = dir.path().join("curate.toml");
    std::fs::write(
        &config,
        "[[stage]]\nkind = \"metaclip\"\nt = 10\nseed = 1\nwordnet = false\nnumbers = false\nentry_files = [\"entries.txt\"]\n",
    )
    .unwrap();
    let out = dir.path().join("curated");
    let status = ferroclip()
        .args(["curate", "--threads", "2", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(format!("{}/{{00000..00002}}.tar", dir.path().display()))
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let png = std::fs::read(out.join("report.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let sizes: std::collections::BTreeMap<String, u64> =
        serde_json::from_slice(&std::fs::read(out.join("sizes.json")).unwrap()).unwrap();
    assert_eq!(
        sizes.keys().collect::<Vec<_>>(),
        ["00000.tar", "00001.tar", "00002.tar"]
    );
    for name in sizes.keys() {
        assert!(out.join(name).exists());
    }

    let stage = &report["stages"][0];
    assert_eq!(report["input_samples"], 90);
    assert_eq!(stage["samples_in"], 90);
    let dropped: u64 = stage["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let out_samples = stage["samples_out"].as_u64().unwrap();
    assert_eq!(dropped + out_samples, 90);
    assert_eq!(stage["dropped"]["empty_caption"], 18);
    assert_eq!(stage["dropped"]["no_match"], 18);
    assert!(stage["dropped"]["balanced_out"].as_u64().unwrap() > 0);
    assert_eq!(report["output_samples"].as_u64().unwrap(), out_samples);
    assert_eq!(sizes.values().sum::<u64>(), out_samples);
    assert_eq!(stage["stats"]["entries"], 4);

    // A second run into the same folder is refused, with the folder named.
    let again = ferroclip()
        .args(["curate", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(dir.path().join("00000.tar"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));
}

#[test]
fn curate_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[[stage]]\nkind = \"metaclip\"\nthreshold = 3\n").unwrap();
    let output = ferroclip()
        .args(["curate", "--config"])
        .arg(&config)
        .args(["--input", "x.tar", "--output"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("threshold"), "{stderr}");
}

fn run_match(metadata: &str, stdin: &[u8]) -> std::process::Output {
    let mut child = ferroclip()
        .args(["curate", "match", "--metadata", metadata])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn curate_match_prints_entries_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let entries = dir.path().join("entries.txt");
    std::fs::write(&entries, "New York\nYork\ncat\n").unwrap();
    let output = run_match(
        entries.to_str().unwrap(),
        b"A cat in New York.\nno match here\ncat\xff\n",
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!(["New York", "York", "cat"]),
            serde_json::json!([]),
            serde_json::json!([])
        ]
    );
}

#[test]
fn curate_match_with_wordnet_or_a_clear_install_hint() {
    let output = run_match("wordnet", b"a hot dog and a golden retriever\n");
    if Path::new("/usr/share/wordnet/data.noun").exists() {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let matched: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
        for expected in ["golden retriever", "dog", "retriever"] {
            assert!(matched.iter().any(|m| m == expected), "{expected} not in {matched:?}");
        }
        // Only synset names (first lemmas) are entries, as in MetaCLIP: "hot dog" is a later
        // lemma of the synsets named "frank" and "hotdog".
        assert!(!matched.iter().any(|m| m == "hot dog"), "{matched:?}");
    } else {
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("apt-get install wordnet-base"));
    }
}
