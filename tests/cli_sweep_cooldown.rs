//! Cooldown branching in `ferroclip sweep` as real processes (Hägele et al. 2024): a sweep
//! of three lengths with `cooldown_from` trains one constant-lr trunk and cools each length
//! down from the trunk's checkpoint at its cooldown's start. Each branch must end
//! bit-identical to an independent const-cooldown run of its length (a second sweep without
//! `cooldown_from`), its log must show it started from the trunk, the plan must state the
//! compute saved, and adding a longer length later must continue the finished trunk.
mod common;

use std::path::Path;

use common::ferroclip_in as ferroclip;

/// Batch 8: 48, 96 and 160 samples are 6, 12 and 20 steps whose cooldowns (half of each)
/// start after steps 3, 6 and 10.
fn sweep_file(name: &str, samples: &[u64], branched: bool) -> String {
    let listed: Vec<String> = samples.iter().map(u64::to_string).collect();
    let (set, from) = match branched {
        true => ("", "cooldown_from = \"trunk\"\n"),
        false => ("\"schedule.kind\" = \"const-cooldown\"\n", ""),
    };
    format!(
        "name = \"{name}\"\nbase = \"base.toml\"\n[set]\n{set}\"schedule.cooldown_fraction\" = 0.5\n\
         \"checkpoint.every\" = 4\n\"checkpoint.keep_last\" = 1\n\
         [[axis]]\nkey = \"samples_seen\"\nvalues = [{}]\n{from}",
        listed.join(", ")
    )
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn last_step(run: &Path) -> u64 {
    common::last_logged_step(&run.join("metrics.jsonl"))
}

#[test]
fn cooldowns_branched_from_one_constant_run_equal_independent_const_cooldown_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    common::write_disc_shards(&root.join("shards"), 48, 24);
    std::fs::write(root.join("base.toml"), common::SWEEP_BASE_TOML).unwrap();
    std::fs::write(root.join("branched.toml"), sweep_file("b", &[48, 96, 160], true)).unwrap();
    std::fs::write(
        root.join("independent.toml"),
        sweep_file("i", &[48, 96, 160, 240], false),
    )
    .unwrap();

    // The plan: a 10-step trunk and cooldowns of 3 + 6 + 10 steps, against 6 + 12 + 20.
    let out = ferroclip(root, &["sweep", "plan", "branched.toml"]);
    common::assert_ok(&out);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("b-trunk") && plan.contains("(trunk)"), "{plan}");
    assert!(
        plan.contains("1 constant-lr trunk(s) of 10 step(s) in all, then cooldowns of 19 step(s)")
            && plan.contains("(29 of 38 steps), saving 23.7%"),
        "{plan}"
    );

    for file in ["branched.toml", "independent.toml"] {
        let out = ferroclip(root, &["sweep", "run", file, "--parallel", "2", "--max-retries", "0"]);
        common::assert_ok(&out);
    }
    let runs = root.join("runs");
    let trunk = runs.join("b/b-trunk");
    assert_eq!(last_step(&trunk), 10, "the trunk runs to the latest cooldown start");
    for step in ["step_00000003", "step_00000006", "step_00000010"] {
        assert!(
            trunk.join("checkpoints").join(step).is_dir(),
            "trunk checkpoint {step} kept"
        );
    }
    for (samples, start) in [(48, 3), (96, 6), (160, 10)] {
        let branch = runs.join(format!("b/b-samples={samples}"));
        let log = std::fs::read_to_string(branch.join("logs/sweep-train.log")).unwrap();
        assert_eq!(
            common::resumed_step(&log, "runs/b/b-trunk/checkpoints/step_"),
            start,
            "{log}"
        );
        let independent = runs.join(format!("i/i-samples={samples}"));
        assert!(
            read(&branch.join("model.safetensors")) == read(&independent.join("model.safetensors")),
            "{samples} samples: the branch differs from the independent run"
        );
    }
    // Negative controls: the cooldown changed the weights, and lengths differ.
    let weights = |run: &str| read(&runs.join(run).join("model.safetensors"));
    assert!(weights("b/b-trunk") != weights("b/b-samples=160"));
    assert!(weights("b/b-samples=96") != weights("b/b-samples=160"));

    // results.csv: the three lengths, not the trunk.
    common::assert_ok(&ferroclip(root, &["sweep", "collect", "branched.toml"]));
    let csv = std::fs::read_to_string(runs.join("b/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(!csv.contains("trunk"), "{csv}");

    // A longer length later: the finished trunk continues from step 10 to 15, no further.
    std::fs::write(root.join("branched.toml"), sweep_file("b", &[48, 96, 160, 240], true)).unwrap();
    let out = ferroclip(root, &["sweep", "run", "branched.toml", "--max-retries", "0"]);
    common::assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 run(s) finished now, 3 were already finished"),
        "{}",
        common::output_text(&out)
    );
    let trunk_log = std::fs::read_to_string(trunk.join("logs/sweep-train.log")).unwrap();
    assert_eq!(
        common::resumed_step(&trunk_log, "runs/b/b-trunk/checkpoints/step_"),
        10,
        "{trunk_log}"
    );
    assert_eq!(last_step(&trunk), 15);
    assert!(weights("b/b-samples=240") == weights("i/i-samples=240"));
}

#[test]
fn a_branch_whose_trunk_cannot_reach_it_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("base.toml"), common::SWEEP_BASE_TOML).unwrap();
    // A cooldown over the whole run starts at step 0: no trunk checkpoint to start from.
    let text = "name = \"b\"\nbase = \"base.toml\"\n[set]\n\"schedule.cooldown_fraction\" = 1.0\n\
                \"schedule.warmup_steps\" = 0\n[[axis]]\nkey = \"samples_seen\"\nvalues = [48]\ncooldown_from = \"trunk\"\n";
    std::fs::write(root.join("s.toml"), text).unwrap();
    let out = ferroclip(root, &["sweep", "plan", "s.toml"]);
    assert!(!out.status.success());
    let err = common::output_text(&out);
    assert!(
        err.contains("b-samples=48") && err.contains("nothing to branch from"),
        "{err}"
    );
}
