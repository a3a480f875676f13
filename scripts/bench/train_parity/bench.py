"""Training parity with open_clip_train: the same model config, data, recipe and thread budget,
trained end to end by `python -m open_clip_train.main` (under torchrun) and by
`ferroclip launch ... train`, several seeds and worker counts, interleaved; then every final
model evaluated by the same evaluators (ferroclip eval and CLIP_benchmark) from the same
exported folder layout. Run through `scripts/bench/train_parity/run` (it prepares .venv-ref).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot import loss_curves_svg  # noqa: E402
from report import markdown_section  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
MODEL_JSON = os.path.join(HERE, "ViT-parity-tiny.json")
MODEL_NAME = "ViT-parity-tiny"  # open_clip reads its AdamW defaults from the name: pass them anyway
TRAINERS = ("open_clip", "ferroclip")
PY = os.path.join(ROOT, ".venv-ref", "bin", "python")
TORCHRUN = os.path.join(ROOT, ".venv-ref", "bin", "torchrun")


def sh(cmd, log=None, env=None, cwd=ROOT):
    """Runs `cmd`, its output into `log` (or inherited); raises with the log's tail on failure."""
    print("$", " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, env=env, cwd=cwd)
        return
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if done.returncode != 0:
        tail = open(log).read()[-4000:]
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}\n--- {log} ---\n{tail}")


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def prepare_shards(args, work: str) -> str:
    """The train shards re-cut into `--shards` equal shards (every worker of every world size
    then reads the same number of samples: open_clip_train's DDP hangs when one rank's
    shards run out a batch early)."""
    out = os.path.join(work, "shards", "train")
    sizes = json.load(open(os.path.join(ROOT, args.train, "sizes.json")))
    total = sum(sizes.values())
    if total % args.shards:
        raise SystemExit(f"{total} samples do not split into {args.shards} equal shards; choose --shards")
    per = total // args.shards
    if not os.path.exists(os.path.join(out, "sizes.json")):
        shutil.rmtree(out, ignore_errors=True)
        sh([args.binary, "shard", "--input-shards", args.train, "--output", out, "--samples-per-shard", str(per)],
           log=os.path.join(work, "shard.log"))
    got = json.load(open(os.path.join(out, "sizes.json")))
    assert sorted(set(got.values())) == [per] and len(got) == args.shards, got
    return out


def recipe(args, total_samples: int) -> dict:
    steps_per_epoch = total_samples // args.batch
    return {
        "global_batch": args.batch,
        "steps_per_epoch": steps_per_epoch,
        "epochs": args.epochs,
        "steps": steps_per_epoch * args.epochs,
        "warmup": args.warmup,
        "lr": args.lr,
        "wd": args.wd,
        "beta1": 0.9,
        "beta2": 0.98,
        "eps": 1e-6,
        "loader_workers": 1,
        "shuffle_buffer": 5000,
    }


def open_clip_run(args, r: dict, shards: str, world: int, seed: int, work: str) -> dict:
    name = f"open_clip-w{world}-s{seed}"
    logs = os.path.join(work, "runs_open_clip")
    shutil.rmtree(os.path.join(logs, name), ignore_errors=True)
    count = len([f for f in os.listdir(shards) if f.endswith(".tar")])
    cmd = [
        TORCHRUN, "--standalone", f"--nproc_per_node={world}",
        os.path.join(HERE, "open_clip_main.py"), MODEL_JSON, "--",
        "--model", MODEL_NAME,
        "--train-data", os.path.join(shards, f"{{00000..{count - 1:05d}}}.tar"),
        "--train-num-samples", str(r["steps_per_epoch"] * r["global_batch"]),
        "--dataset-type", "webdataset",
        "--batch-size", str(r["global_batch"] // world),
        "--lr", str(r["lr"]), "--wd", str(r["wd"]),
        "--beta1", str(r["beta1"]), "--beta2", str(r["beta2"]), "--eps", str(r["eps"]),
        "--warmup", str(r["warmup"]), "--epochs", str(r["epochs"]),
        "--workers", str(r["loader_workers"]),
        "--precision", "fp32", "--device", "cpu", "--seed", str(seed),
        "--logs", logs, "--name", name,
        "--log-every-n-steps", "1", "--save-frequency", "0", "--report-to", "",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads // world), HF_HUB_OFFLINE="1")
    start = time.monotonic()
    sh(cmd, log=os.path.join(work, f"{name}.log"), env=env)
    wall = time.monotonic() - start
    out_log = open(os.path.join(logs, name, "out.log")).read()
    losses, batch_times = [], []
    for m in re.finditer(r"Batch \(t\): ([0-9.]+).*? Loss: ([0-9.]+) \(", out_log):
        batch_times.append(float(m.group(1)))
        losses.append(float(m.group(2)))
    assert len(losses) == r["steps"], (name, len(losses), r["steps"])
    export = os.path.join(work, "export", name)
    sh([PY, os.path.join(HERE, "clip_benchmark_eval.py"), "--convert",
        os.path.join(logs, name, "checkpoints", f"epoch_{r['epochs']}.pt"), "--model-config", MODEL_JSON,
        "--out", export], log=os.path.join(work, f"{name}.export.log"))
    shutil.rmtree(os.path.join(logs, name, "checkpoints"))
    return {"losses": losses, "step_seconds": batch_times, "wall": wall, "export": export}


def ferroclip_run(args, r: dict, shards: str, world: int, seed: int, work: str) -> dict:
    name = f"ferroclip-w{world}-s{seed}"
    runs = os.path.join(work, "runs_ferroclip")
    shutil.rmtree(os.path.join(runs, name), ignore_errors=True)
    config = os.path.join(work, "ferroclip.toml")
    sets = {
        "name": f'"{name}"', "seed": seed, "threads": args.threads // world, "out_dir": f'"{runs}"',
        "data.train": f'"{shards}"',
    }
    if args.partitions == "workers":
        sets["data.partitions"] = world * r["loader_workers"]
    elif args.partitions != "default":
        sets["data.partitions"] = int(args.partitions)
    cmd = [args.binary, "launch", "--nproc", str(world), "--log-dir", os.path.join(runs, name, "logs"),
           "--", "--config", config]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    start = time.monotonic()
    sh(cmd, log=os.path.join(work, f"{name}.log"))
    wall = time.monotonic() - start
    lines = [json.loads(line) for line in open(os.path.join(runs, name, "metrics.jsonl"))]
    assert len(lines) == r["steps"], (name, len(lines), r["steps"])
    export = os.path.join(work, "export", name)
    shutil.rmtree(export, ignore_errors=True)
    sh([args.binary, "export", "--checkpoint", os.path.join(runs, name), "--out", export],
       log=os.path.join(work, f"{name}.export.log"))
    resolved = open(os.path.join(runs, name, "config.toml")).read()
    shutil.rmtree(os.path.join(runs, name, "checkpoints"), ignore_errors=True)
    return {
        "losses": [line["loss"] for line in lines],
        "step_seconds": [r["global_batch"] / line["samples_per_s"] for line in lines],
        "wall": wall,
        "export": export,
        "resolved_config": resolved,
    }


def write_ferroclip_config(r: dict, work: str) -> str:
    """ferroclip's side of the recipe; name, seed, threads, out_dir and data.train come per run."""
    text = f"""# scripts/bench/train_parity: ferroclip's side of the recipe (open_clip_train's flags in the bench)
name = "parity"
model = "{MODEL_JSON}"
precision = "fp32"

[data]
train = "set per run"
global_batch = {r['global_batch']}
workers = {r['loader_workers']}
caption = "txt"
shuffle_buffer = {r['shuffle_buffer']}

[optim]
lr = {r['lr']}
weight_decay = {r['wd']}
beta1 = {r['beta1']}
beta2 = {r['beta2']}
eps = {r['eps']}
# grad_clip_norm and decay_embeddings: the defaults (open_clip's: no clipping, every >= 2-D
# tensor but the norms decayed)

[schedule]
kind = "cosine"
steps = {r['steps']}
warmup_steps = {r['warmup']}

[log]
every = 1

[checkpoint]
every = {r['steps'] + 1}
"""
    path = os.path.join(work, "ferroclip.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def evaluate(args, results: dict, work: str) -> None:
    """ferroclip eval and CLIP_benchmark on every exported folder (both trainers' alike)."""
    data = {
        "zeroshot": os.path.join(args.eval_dir, "shards", "zeroshot"),
        "classnames": os.path.join(args.eval_dir, "classnames.txt"),
        "templates": os.path.join(args.eval_dir, "templates.txt"),
        "retrieval": os.path.join(args.eval_dir, "shards", "retrieval"),
    }
    for key, run in results.items():
        folder = run["export"]
        out = os.path.join(folder, "ferroclip_eval.json")
        sh([args.binary, "eval", "--model-config", os.path.join(folder, "open_clip_config.json"),
            "--weights", os.path.join(folder, "open_clip_model.safetensors"), "--device", "cpu",
            "--zeroshot", data["zeroshot"], "--classnames", data["classnames"], "--templates", data["templates"],
            "--retrieval", data["retrieval"], "--recall-k", "1,5,10", "--out", out],
           log=os.path.join(work, f"{key}.eval.log"))
        run["ferroclip_eval"] = json.load(open(out))
    folders = [run["export"] for run in results.values()]
    out = os.path.join(work, "clip_benchmark.json")
    sh([PY, os.path.join(HERE, "clip_benchmark_eval.py"), "--zeroshot", data["zeroshot"],
        "--classnames", data["classnames"], "--templates", data["templates"], "--retrieval", data["retrieval"],
        "--threads", str(args.threads), "--out", out, *folders],
       log=os.path.join(work, "clip_benchmark.log"), env=dict(os.environ, HF_HUB_OFFLINE="1"))
    by_folder = json.load(open(out))
    for run in results.values():
        run["clip_benchmark"] = by_folder[run["export"]]


def versions() -> str:
    code = ("import torch, open_clip, webdataset, clip_benchmark, importlib.metadata as m;"
            "print(f'torch {torch.__version__}, open-clip-torch {m.version(\"open_clip_torch\")}, '"
            "f'webdataset {m.version(\"webdataset\")}, clip-benchmark {m.version(\"clip_benchmark\")}')")
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def git_describe() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--worlds", default="1,2", help="worker counts (torchrun --nproc_per_node, launch --nproc)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in all, split over the workers")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--shards", type=int, default=6, help="equal train shards to re-cut the data into")
    p.add_argument("--train", default="data/emoji/shards/train")
    p.add_argument("--eval-dir", default="data/emoji")
    p.add_argument("--binary", default="target/release/ferroclip")
    p.add_argument("--work-dir", default="/tmp/ferroclip-train-parity")
    p.add_argument("--no-record", action="store_true", help="print the section, do not touch docs/")
    p.add_argument("--keep", action="store_true", help="keep the work dir (runs, exports, logs)")
    p.add_argument("--partitions", default="workers",
                   help="ferroclip's data.partitions: 'workers' (workers × loader workers: open_clip_train's "
                        "streams, each rank's DataLoader worker reading its share of the shards through its own "
                        "shuffle buffer), 'default' (ferroclip's: up to 64), or a number")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY of both trainers: on a shared machine libgomp's spinning at its "
                        "barriers turns a descheduled thread into a many-fold slowdown (both sides alike)")
    args = p.parse_args()
    command = "scripts/bench/train_parity/run" + "".join(f" {a}" for a in sys.argv[1:])
    os.chdir(ROOT)
    seeds = [int(s) for s in args.seeds.split(",")]
    worlds = [int(w) for w in args.worlds.split(",")]
    if any(args.threads % w for w in worlds) or any(args.batch % w for w in worlds):
        raise SystemExit("--threads and --batch must divide by every worker count")
    work = args.work_dir
    os.makedirs(work, exist_ok=True)
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # inherited by torchrun and ferroclip alike
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = loadavg()
    shards = prepare_shards(args, work)
    total = sum(json.load(open(os.path.join(shards, "sizes.json"))).values())
    r = recipe(args, total)
    write_ferroclip_config(r, work)
    print(json.dumps(r), flush=True)
    results = {}
    for world in worlds:
        for i, seed in enumerate(seeds):
            # Interleaved, the order flipping every pair, so machine drift hits both alike.
            order = TRAINERS if i % 2 == 0 else TRAINERS[::-1]
            for trainer in order:
                before = loadavg()
                run = (open_clip_run if trainer == "open_clip" else ferroclip_run)(args, r, shards, world, seed, work)
                run.update(trainer=trainer, world=world, seed=seed, load_before=before, load_after=loadavg())
                results[f"{trainer}-w{world}-s{seed}"] = run
                print(f"{trainer} w{world} s{seed}: wall {run['wall']:.1f}s, final loss {run['losses'][-1]:.4f}",
                      flush=True)
    evaluate(args, results, work)
    finished = datetime.datetime.now(datetime.timezone.utc)
    meta = {
        "started": started, "finished": finished, "command": command, "nproc": os.cpu_count(),
        "cpu": cpu_name(), "load_before": load_before, "load_after": loadavg(), "versions": versions(),
        "commit": git_describe(), "recipe": r, "threads": args.threads, "shards": args.shards,
        "train_samples": total, "omp_wait_policy": args.omp_wait_policy, "partitions": args.partitions,
    }
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump({"meta": {k: str(v) for k, v in meta.items()}, "runs": results}, f, indent=1, default=str)
    panels = []
    for world in worlds:
        runs = [(run["trainer"], f"s{run['seed']}", list(enumerate(run["losses"], 1)))
                for run in results.values() if run["world"] == world]
        panels.append((f"{world} worker{'s' if world > 1 else ''} ({args.threads // world} thread{'s' if args.threads // world > 1 else ''} each)", runs))
    svg = loss_curves_svg(panels, f"Training loss, open_clip_train vs ferroclip, seeds {args.seeds}")
    section = markdown_section(meta, results, worlds)
    print(section)
    if not args.no_record:
        os.makedirs(os.path.join(ROOT, "docs", "img"), exist_ok=True)
        with open(os.path.join(ROOT, "docs", "img", "train_parity.svg"), "w") as f:
            f.write(svg)
        with open(os.path.join(ROOT, "docs", "benchmarks.md"), "a") as f:
            f.write("\n" + section)
    else:
        with open(os.path.join(work, "train_parity.svg"), "w") as f:
            f.write(svg)
    if not args.keep:
        for sub in ("runs_open_clip", "runs_ferroclip", "export"):
            shutil.rmtree(os.path.join(work, sub), ignore_errors=True)


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
