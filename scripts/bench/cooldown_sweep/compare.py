"""The table of scripts/bench/cooldown_sweep/run.sh: per length, the branch against the
independent runs of seeds 0 and 1 (mean loss of the last 20 steps, eval metrics, identical
weights), and the steps each sweep trained."""
import csv
import filecmp
import json
import os
import sys

root = sys.argv[1]


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tail_loss(run_dir, n=20):
    losses = [m["loss"] for m in metrics(run_dir) if "loss" in m]
    return sum(losses[-n:]) / len(losses[-n:])


def trained_steps(run_dir):
    # Steps this run trained itself: its logged steps (log.every = 1).
    return len([m for m in metrics(run_dir) if "loss" in m])


def results(sweep):
    with open(os.path.join(root, sweep, "results.csv")) as f:
        return {row["run"]: row for row in csv.DictReader(f)}


branched, independent = results("cd-branched"), results("cd-independent")
print("| samples (steps) | run | loss, last 20 steps | zero-shot top-1 | retrieval R@1 (image) | weights = independent seed 0 |")
print("|---|---|---|---|---|---|")
spread = []
for samples in (6400, 12800, 25600):
    rows = [
        ("branched", f"cd-branched/cd-branched-samples={samples}", branched[f"cd-branched-samples={samples}"]),
        ("independent, seed 0", f"cd-independent/cd-independent-seed=0-samples={samples}",
         independent[f"cd-independent-seed=0-samples={samples}"]),
        ("independent, seed 1", f"cd-independent/cd-independent-seed=1-samples={samples}",
         independent[f"cd-independent-seed=1-samples={samples}"]),
    ]
    seed0 = os.path.join(root, rows[1][1], "model.safetensors")
    losses = []
    for label, path, row in rows:
        run_dir = os.path.join(root, path)
        loss = tail_loss(run_dir)
        losses.append(loss)
        same = filecmp.cmp(os.path.join(run_dir, "model.safetensors"), seed0, shallow=False)
        print(f"| {samples} ({int(row['final_step'])}) | {label} | {loss:.4f} | {float(row['zeroshot_top1']):.4f} | "
              f"{float(row['image_retrieval_recall@1']):.4f} | {'yes' if same else 'no'} |")
    spread.append((samples, abs(losses[0] - losses[1]), abs(losses[1] - losses[2])))
print()
for samples, branch_gap, seed_gap in spread:
    print(f"{samples} samples: |branched − independent seed 0| = {branch_gap:.4f}, "
          f"|seed 0 − seed 1| = {seed_gap:.4f} (loss, last 20 steps)")
trunk = trained_steps(os.path.join(root, "cd-branched", "cd-branched-trunk"))
cooldowns = sum(trained_steps(os.path.join(root, "cd-branched", f"cd-branched-samples={s}")) for s in (6400, 12800, 25600))
alone = sum(trained_steps(os.path.join(root, "cd-independent", f"cd-independent-seed=0-samples={s}"))
            for s in (6400, 12800, 25600))
print(f"steps trained: branched sweep {trunk} (trunk) + {cooldowns} (cooldowns) = {trunk + cooldowns}; "
      f"independent seed-0 runs {alone} ({100 * (1 - (trunk + cooldowns) / alone):.1f}% saved)")
