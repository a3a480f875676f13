//! Tests of the sweep file and its expansion.

use super::*;

const BASE: &str = "name = \"base\"\nmodel = \"nano\"\n[data]\ntrain = \"a.tar\"\nbatch_size = 16\n";

fn sweep(text: &str) -> Result<Sweep, SweepError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, text).unwrap();
    Sweep::load(&path)
}

fn names(runs: &[RunSpec]) -> Vec<&str> {
    runs.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn product_of_axes_first_outermost_with_readable_names() {
    let s = sweep(
        r#"name = "g"
base = "base.toml"
[[axis]]
key = "model"
values = ["nano", "configs/models/sweep-s.toml"]
[[axis]]
key = "optim.lr"
values = [1e-3, 5e-4, 0.0001]
"#,
    )
    .unwrap();
    let runs = s.expand(1).unwrap();
    assert_eq!(
        names(&runs),
        [
            "g-model=nano-lr=0.001",
            "g-model=nano-lr=0.0005",
            "g-model=nano-lr=0.0001",
            "g-model=sweep-s-lr=0.001",
            "g-model=sweep-s-lr=0.0005",
            "g-model=sweep-s-lr=0.0001",
        ]
    );
    let last = &runs[5];
    assert_eq!(last.dir, PathBuf::from("runs/g/g-model=sweep-s-lr=0.0001"));
    assert_eq!(
        last.overrides,
        [
            "model=\"configs/models/sweep-s.toml\"",
            "optim.lr=0.0001",
            "name=\"g-model=sweep-s-lr=0.0001\"",
            "out_dir=\"runs/g\"",
        ]
    );
    assert_eq!(
        last.values,
        [
            ("model".to_string(), "configs/models/sweep-s.toml".to_string()),
            ("lr".to_string(), "0.0001".to_string())
        ]
    );
    assert_eq!(s.labels(), ["model", "lr"]);
    // Stable: expanding again gives the same runs.
    assert_eq!(s.expand(1).unwrap(), runs);
}

#[test]
fn zips_move_together_and_excludes_drop_matches() {
    let s = sweep(
        r#"name = "z"
base = "base.toml"
exclude = [{ model = "tiny", warmup_steps = 20.0 }]
[set]
"log.every" = 5
schedule = { warmup_steps_unused = 1 }
[[axis]]
key = "model"
values = ["nano", "tiny"]
[[zip]]
keys = ["optim.lr", "schedule.warmup_steps"]
values = [[1e-3, 10], [5e-4, 20]]
"#,
    );
    // `schedule.warmup_steps_unused` is passed through (the trainer names it); the
    // grid itself is what is tested here.
    let runs = s.unwrap().expand(1).unwrap();
    assert_eq!(
        names(&runs),
        [
            "z-model=nano-lr=0.001-warmup_steps=10",
            "z-model=nano-lr=0.0005-warmup_steps=20",
            "z-model=tiny-lr=0.001-warmup_steps=10",
        ]
    );
    assert_eq!(
        runs[1].overrides[..2],
        ["log.every=5", "schedule.warmup_steps_unused=1"]
    );
    assert!(runs[1].overrides.contains(&"schedule.warmup_steps=20".to_string()));
}

#[test]
fn samples_seen_becomes_steps_of_the_global_batch() {
    let s = sweep(
        r#"name = "s"
base = "base.toml"
[[axis]]
key = "samples_seen"
values = [320, 330]
"#,
    )
    .unwrap();
    let steps = |runs: &[RunSpec]| -> Vec<String> {
        runs.iter()
            .map(|r| {
                r.overrides
                    .iter()
                    .find(|o| o.starts_with("schedule.steps="))
                    .unwrap()
                    .clone()
            })
            .collect()
    };
    // batch_size 16 from the base: 320/16 = 20, 330/16 rounds up to 21.
    assert_eq!(steps(&s.expand(1).unwrap()), ["schedule.steps=20", "schedule.steps=21"]);
    // Two workers double the global batch.
    assert_eq!(steps(&s.expand(2).unwrap()), ["schedule.steps=10", "schedule.steps=11"]);
    assert_eq!(s.expand(1).unwrap()[0].name, "s-samples=320");
    assert_eq!(s.labels(), ["samples"]);
}

#[test]
fn errors_name_the_field() {
    let err = |text: &str| sweep(text).unwrap_err().to_string();
    let head = "name = \"e\"\nbase = \"base.toml\"\n";
    let e = err(&format!("{head}[[axis]]\nkey = \"optim..lr\"\nvalues = [1]\n"));
    assert!(e.contains("axis[0].key") && e.contains("optim..lr"), "{e}");
    let e = err(&format!("{head}[[axis]]\nkey = \"optim.lr\"\nvalue = [1]\n"));
    assert!(e.contains("value"), "{e}");
    let e = err(&format!(
        "{head}[[zip]]\nkeys = [\"a.b\", \"c\"]\nvalues = [[1, 2], [3]]\n"
    ));
    assert!(e.contains("zip[0].values[1]"), "{e}");
    let e = err(&format!(
        "{head}exclude = [{{ colour = 1 }}]\n[[axis]]\nkey = \"model\"\nvalues = [\"nano\"]\n"
    ));
    assert!(e.contains("exclude[0].colour"), "{e}");
    let e = err(&format!(
        "{head}[[axis]]\nkey = \"optim.lr\"\nvalues = [1]\n[[axis]]\nkey = \"optim.lr\"\nvalues = [2]\n"
    ));
    assert!(e.contains("optim.lr") && e.contains("twice"), "{e}");
    let e = err("name = \"e\"\nbase = \"missing.toml\"\n");
    assert!(e.contains("base") && e.contains("missing.toml"), "{e}");
    let e = err("name = \"a/b\"\nbase = \"base.toml\"\n");
    assert!(e.contains("name"), "{e}");
}

#[test]
fn samples_seen_needs_a_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), "name = \"b\"\nmodel = \"nano\"\n").unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "name = \"s\"\nbase = \"base.toml\"\n[[axis]]\nkey = \"samples_seen\"\nvalues = [100]\n",
    )
    .unwrap();
    let e = Sweep::load(&path).unwrap().expand(1).unwrap_err().to_string();
    assert!(e.contains("data.batch_size"), "{e}");
}

#[test]
fn colliding_names_are_an_error() {
    let e =
        sweep("name = \"c\"\nbase = \"base.toml\"\n[[axis]]\nkey = \"model\"\nvalues = [\"a/x.toml\", \"b/x.toml\"]\n")
            .unwrap()
            .expand(1)
            .unwrap_err()
            .to_string();
    assert!(e.contains("c-model=x"), "{e}");
}

#[test]
fn cooldown_branching_adds_one_constant_trunk_per_combination_of_the_other_axes() {
    let s = sweep(
        r#"name = "c"
base = "base.toml"
[set]
"optim.lr" = 0.001
[[axis]]
key = "model"
values = ["nano", "tiny"]
[[axis]]
key = "samples_seen"
values = [160, 320]
cooldown_from = "trunk"
"#,
    )
    .unwrap();
    assert!(s.branches_cooldowns());
    let runs = s.expand(1).unwrap();
    assert_eq!(
        names(&runs),
        [
            "c-model=nano-trunk",
            "c-model=tiny-trunk",
            "c-model=nano-samples=160",
            "c-model=nano-samples=320",
            "c-model=tiny-samples=160",
            "c-model=tiny-samples=320",
        ]
    );
    let trunk = &runs[0];
    assert_eq!(trunk.role, RunRole::Trunk);
    assert!(!trunk.is_result());
    assert_eq!(
        trunk.overrides,
        [
            "optim.lr=0.001",
            "model=\"nano\"",
            "schedule.kind=\"const\"",
            "name=\"c-model=nano-trunk\"",
            "out_dir=\"runs/c\"",
        ]
    );
    assert_eq!(
        trunk.values,
        [
            ("model".to_string(), "nano".to_string()),
            ("samples".to_string(), "trunk".to_string())
        ]
    );
    let branch = &runs[5];
    assert_eq!(
        branch.role,
        RunRole::Branch {
            trunk: "c-model=tiny-trunk".into()
        }
    );
    assert!(branch.is_result());
    assert_eq!(
        branch.overrides,
        [
            "optim.lr=0.001",
            "model=\"tiny\"",
            "schedule.steps=20",
            "schedule.kind=\"const-cooldown\"",
            "name=\"c-model=tiny-samples=320\"",
            "out_dir=\"runs/c\"",
        ]
    );
    // Without cooldown_from, the same axes are independent runs and no trunk.
    let plain =
        sweep("name = \"c\"\nbase = \"base.toml\"\n[[axis]]\nkey = \"samples_seen\"\nvalues = [160, 320]\n").unwrap();
    let runs = plain.expand(1).unwrap();
    assert_eq!(names(&runs), ["c-samples=160", "c-samples=320"]);
    assert!(runs.iter().all(|r| r.role == RunRole::Single));
}

#[test]
fn cooldown_branching_rejects_what_it_cannot_branch() {
    let err = |text: &str| sweep(text).unwrap_err().to_string();
    let head = "name = \"c\"\nbase = \"base.toml\"\n";
    let samples = "[[axis]]\nkey = \"samples_seen\"\nvalues = [160]\ncooldown_from = \"trunk\"\n";
    let e = err(&format!(
        "{head}[[axis]]\nkey = \"optim.lr\"\nvalues = [1.0]\ncooldown_from = \"t\"\n"
    ));
    assert!(e.contains("axis[0].cooldown_from") && e.contains("optim.lr"), "{e}");
    let e = err(&format!(
        "{head}[[axis]]\nkey = \"samples_seen\"\nvalues = [160]\ncooldown_from = \"a b\"\n"
    ));
    assert!(e.contains("axis[0].cooldown_from"), "{e}");
    let e = err(&format!("{head}[set]\n\"schedule.kind\" = \"cosine\"\n{samples}"));
    assert!(
        e.contains("set.schedule.kind") && e.contains("cooldown branching"),
        "{e}"
    );
    let e = err(&format!("{head}[set]\ncheckpoint = {{ at_steps = [3] }}\n{samples}"));
    assert!(e.contains("set.checkpoint.at_steps"), "{e}");
    let e = err(&format!(
        "{head}{samples}[[axis]]\nkey = \"schedule.kind\"\nvalues = [\"const\"]\n"
    ));
    assert!(e.contains("schedule.kind") && e.contains("do not sweep"), "{e}");
}
