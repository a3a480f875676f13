"""The docs/benchmarks.md section of scripts/bench/train_parity: the recipe, a row per run, and
per worker count each trainer's mean and seed spread, with the trainers' difference set
against the spread."""
import statistics

TAIL = 0.1  # the final loss is the mean over the last 10% of the steps (single steps are noisy)


def final_loss(run: dict) -> float:
    losses = run["losses"]
    k = max(1, round(len(losses) * TAIL))
    return statistics.fmean(losses[-k:])


def metrics(run: dict, r: dict) -> dict:
    fe = run["ferroclip_eval"]
    cb = run["clip_benchmark"]
    samples = r["steps"] * r["global_batch"]
    steps = run["step_seconds"][5:] or run["step_seconds"]
    return {
        "loss": final_loss(run),
        "last": run["losses"][-1],
        "acc1": fe["zeroshot"]["metrics"]["acc1"],
        "cb_acc1": cb["zeroshot"]["acc1"],
        "t2i": fe["retrieval"]["metrics"]["image_retrieval_recall@1"],
        "i2t": fe["retrieval"]["metrics"]["text_retrieval_recall@1"],
        "cb_t2i": cb["retrieval"]["image_retrieval_recall@1"],
        "cb_i2t": cb["retrieval"]["text_retrieval_recall@1"],
        "wall": run["wall"],
        "ms_per_sample": 1000 * run["wall"] / samples,
        "step_ms_per_sample": 1000 * statistics.median(steps) / r["global_batch"],
    }


COMPARED = [
    ("loss", "final loss", "{:.4f}"),
    ("acc1", "zero-shot top-1", "{:.2%}"),
    ("t2i", "R@1 text→image", "{:.2%}"),
    ("i2t", "R@1 image→text", "{:.2%}"),
    ("ms_per_sample", "wall ms/sample", "{:.2f}"),
]


def partitions_text(partitions: str) -> str:
    if partitions == "workers":
        return "= workers, one stream per rank as open_clip_train's DataLoader worker"
    if partitions == "default":
        return "its default, up to 64"
    return partitions


def markdown_section(meta: dict, results: dict, worlds: list) -> str:
    r = meta["recipe"]
    rows = {key: metrics(run, r) for key, run in results.items()}
    when = meta["started"].strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"## {when} — training parity with open_clip_train (train_parity)",
        "",
        f"- command: `{meta['command']}` ({meta['started']:%H:%M}–{meta['finished']:%H:%M} UTC), commit {meta['commit']}",
        f"- machine: {meta['nproc']} CPUs, {meta['cpu']}; load average before {meta['load_before']}, after {meta['load_after']}",
        f"- versions: {meta['versions']} (.venv-ref); ferroclip: this tree's release build, libtorch 2.11.0 (.venv)",
        f"- model: `scripts/bench/train_parity/ViT-parity-tiny.json`, given to both (open_clip: `add_model_config`, "
        f"`--model ViT-parity-tiny`; ferroclip: `model = \"….json\"`): ViT 64 px, patch 8, width 128, 4 layers; "
        f"text width 128, 4 layers, context 32; embed 128",
        f"- data: `data/emoji/shards/train` ({meta['train_samples']} pairs) re-cut by `ferroclip shard --input-shards` into "
        f"{meta['shards']} equal shards, read by both; eval: `data/emoji/shards/{{zeroshot,retrieval}}` (held-out emoji style)",
        f"- recipe: global batch {r['global_batch']}, {r['epochs']} epochs × {r['steps_per_epoch']} steps = {r['steps']} steps, "
        f"warmup {r['warmup']} then cosine to 0, lr {r['lr']:g}, weight decay {r['wd']:g}, AdamW β=({r['beta1']}, {r['beta2']}), "
        f"ε={r['eps']:g}, no gradient clipping, fp32, CLIP loss over the global batch, 1 loader worker per rank "
        f"(ferroclip `data.partitions`: {partitions_text(meta['partitions'])}), shuffle buffer {r['shuffle_buffer']}, "
        f"{meta['threads']} torch threads in all (1 worker × {meta['threads']}, 2 workers × {meta['threads'] // 2}: "
        f"`OMP_NUM_THREADS` for torchrun, `threads` for ferroclip; `OMP_WAIT_POLICY={meta['omp_wait_policy']}` for both)",
        "- final loss: mean of the last 10% of the steps' logged losses (rank 0's, over the global batch); "
        "wall ms/sample: the whole training command (start-up, data, every step, the final save) over the samples trained; "
        "step ms/sample: median step time (after 5 steps) over the global batch",
        "- evaluated from the same open_clip folder layout (`ferroclip export`, and open_clip_train's `epoch_N.pt` "
        "written out the same way): ferroclip eval, and CLIP_benchmark 1.6.2's metric code with open_clip's own "
        "transform and tokenizer (`clip_benchmark_eval.py`)",
        "",
        "| workers | seed | trainer | final loss | zero-shot top-1 (ferroclip eval / CLIP_benchmark) | "
        "R@1 text→image (ours / CB) | R@1 image→text (ours / CB) | wall (s) | wall ms/sample | step ms/sample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, run in results.items():
        m = rows[key]
        out.append(
            f"| {run['world']} | {run['seed']} | {run['trainer']} | {m['loss']:.4f} | {m['acc1']:.2%} / {m['cb_acc1']:.2%} | "
            f"{m['t2i']:.2%} / {m['cb_t2i']:.2%} | {m['i2t']:.2%} / {m['cb_i2t']:.2%} | {m['wall']:.1f} | "
            f"{m['ms_per_sample']:.2f} | {m['step_ms_per_sample']:.2f} |"
        )
    out += [
        "",
        "Per worker count: mean over the seeds ± half their range (the seed spread); the difference is "
        "ferroclip's mean − open_clip's, and it is *inside* when it is no larger than the larger of the two "
        "seed ranges (max − min).",
        "",
        "| workers | metric | open_clip mean ± spread | ferroclip mean ± spread | difference | seed range (oc / fc) | inside |",
        "|---|---|---|---|---|---|---|",
    ]
    for world in worlds:
        for field, label, fmt in COMPARED:
            values = {t: [rows[k][field] for k, run in results.items() if run["world"] == world and run["trainer"] == t]
                      for t in ("open_clip", "ferroclip")}
            mean = {t: statistics.fmean(v) for t, v in values.items()}
            rng = {t: max(v) - min(v) for t, v in values.items()}
            diff = mean["ferroclip"] - mean["open_clip"]
            inside = "—" if field == "ms_per_sample" else ("yes" if abs(diff) <= max(rng.values()) else "**no**")
            out.append(
                f"| {world} | {label} | {fmt.format(mean['open_clip'])} ± {fmt.format(rng['open_clip'] / 2)} | "
                f"{fmt.format(mean['ferroclip'])} ± {fmt.format(rng['ferroclip'] / 2)} | {diff:+.4g} | "
                f"{fmt.format(rng['open_clip'])} / {fmt.format(rng['ferroclip'])} | {inside} |"
            )
    agree = max(
        max(abs(m["acc1"] - m["cb_acc1"]), abs(m["t2i"] - m["cb_t2i"]), abs(m["i2t"] - m["cb_i2t"])) for m in rows.values()
    )
    same = []
    for key, run in results.items():
        other = results.get(key.replace(f"-w{run['world']}-", "-w1-"))
        if run["trainer"] == "ferroclip" and run["world"] > 1 and other:
            same.append(max(abs(a - b) for a, b in zip(run["losses"], other["losses"])))
    if same and meta["partitions"] != "workers":
        out += ["", f"- ferroclip's 1- and {max(worlds)}-worker runs of a seed (the canonical data stream, gradients "
                f"summed over workers): largest per-step loss difference {max(same):.2g}"]
    out += [
        "",
        f"- the two evaluators on the same weights: largest difference over all runs and metrics {agree:.2%}",
        "",
        "![loss curves](img/train_parity.svg)",
        "",
    ]
    return "\n".join(out) + "\n"
