#!/usr/bin/env bash
# Runs ON a lent GPU machine (torch 2.11.0 + CUDA 13 + NCCL in its Python image; no cargo, no MPI),
# on the binaries scripts/gpu_build.sh made here and carried in target/gpu:
#
#   1. ferroclip's vit-b-32 training step on one GPU (plain ClipLoss, no collective)
#   2. the same as a data-parallel step over NCCL in a world of one (global ClipLoss through
#      NCCL all_gather / reduce_scatter / all_reduce, gradient all-reduce skipped at W=1)
#   3. two NCCL workers through `ferroclip launch --nproc 2 --backend nccl` (on one GPU NCCL
#      refuses two ranks per device; the outcome is recorded, not required)
#   4. open_clip's step on the same GPU (scripts/bench/openclip_step.py --device cuda), if
#      open_clip imports (target/gpu/pydeps + the machine's torchvision and regex)
#   1 and 4 also run with bf16 autocast (`--precision bf16`, open_clip's amp_bf16)
#   5. the real train loop: the demo config (tiny, 1000 steps) through `ferroclip launch --nproc 1
#      --backend nccl`, fp32 and bf16, each then evaluated zero-shot, if the demo's shards were
#      carried in target/gpu/data
#
# For each: step time, samples/s and peak GPU memory (nvidia-smi's used memory sampled every
# 100 ms during the run, minus the idle level; open_clip also reports torch's allocator peaks).
# Ends with one summary table. First run on an H200 on 2026-11-25 (docs/benchmarks.md, docs/gpu/).
#
#   scripts/gpu_check.sh [--batch 128] [--steps 10] [--warmup 3] [--model vit-b-32]
#                        [--train-only] [--variants "fp32 bf16 fp32+device"]
#
# --max-batch "vit-b-32 vit-b-16" runs only the big-batch search instead (issue 16's GPU
# figures): for each model, ferroclip's and open_clip's bf16 step at --batch, doubled while it
# fits (up to --batch-cap, default 4096); then samples/s, peak memory and MFU (forward MACs x 6
# x samples/s over the GPU's dense bf16 peak) at the largest batch each fits. --device cpu
# runs the same search on the CPU (a smoke test of this script; no MFU).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

batch=128
steps=10
warmup=3
model=vit-b-32
train_only=0
max_batch_models=""
batch_cap=4096
device=cuda
# Train-loop variants: a precision, optionally "+device" for u8 batches normalised on the GPU
# (data.normalize = "device").
variants="fp32 bf16"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --batch) batch="$2"; shift ;;
        --steps) steps="$2"; shift ;;
        --warmup) warmup="$2"; shift ;;
        --model) model="$2"; shift ;;
        --train-only) train_only=1 ;;
        --variants) variants="$2"; shift ;;
        --max-batch) max_batch_models="$2"; shift ;;
        --batch-cap) batch_cap="$2"; shift ;;
        --device) device="$2"; shift ;;
        *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

bin="${GPU_BIN_DIR:-$root/target/gpu}"
for exe in ferroclip step_time; do
    [[ -x "$bin/$exe" ]] || { echo "gpu_check: $bin/$exe missing: run scripts/gpu_build.sh here and carry target/gpu" >&2; exit 2; }
done

# --- the machine's own torch, CUDA and NCCL libraries ------------------------------------------
python="${PYTHON:-python3}"
torch_dir="$("$python" -c 'import torch,os;print(os.path.dirname(torch.__file__))')" || {
    echo "gpu_check: $python cannot import torch" >&2; exit 2; }
site="$(dirname "$torch_dir")"
lib_path="$torch_dir/lib"
for d in "$site"/nvidia/*/lib; do [[ -d "$d" ]] && lib_path="$lib_path:$d"; done
# cudarc dlopens libnccl.so (not .so.2, the wheel's only name): a folder with that symlink.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/shim"
nccl_so="$(find "$site/nvidia" "$torch_dir/lib" -name 'libnccl.so*' 2>/dev/null | head -n 1)"
if [[ -n "$nccl_so" ]]; then
    ln -s "$nccl_so" "$work/shim/libnccl.so"
    lib_path="$work/shim:$lib_path"
else
    echo "gpu_check: no libnccl.so* under $site/nvidia or $torch_dir/lib; the NCCL runs will fail" >&2
fi
export LD_LIBRARY_PATH="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())' || true
echo "nccl library: ${nccl_so:-none}"
missing="$(ldd "$bin/step_time" | grep 'not found' || true)"
[[ -z "$missing" ]] || echo "gpu_check: WARNING, unresolved libraries:"$'\n'"$missing"

# --- one timed run with GPU memory sampling -----------------------------------------------------
results="$work/results.jsonl"
: > "$results"
gpu_used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -n 1 | tr -d ' '; }
idle_mib="$(gpu_used_mib || echo 0)"

# run LABEL CMD...: runs CMD, samples GPU 0's used memory, appends {label, rc, peak_gpu_mib, json}.
run() {
    local label="$1"; shift
    local log="$work/$label.log" samples="$work/$label.mem"
    echo "== $label: $*"
    ( while true; do gpu_used_mib >> "$samples" 2>/dev/null; sleep 0.1; done ) &
    local sampler=$!
    local t0 rc
    t0="$(date +%s.%N)"
    timeout 300 "$@" > "$log" 2>&1
    rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    tail -n 15 "$log"
    local peak
    peak="$(sort -n "$samples" 2>/dev/null | tail -n 1)"
    "$python" - "$label" "$rc" "${peak:-0}" "$idle_mib" "$log" "$(date +%s.%N)" "$t0" >> "$results" <<'EOF'
import json, sys
label, rc, peak, idle, log, t1, t0 = sys.argv[1:]
lines = [l for l in open(log, errors="replace") if '"impl"' in l and '{' in l]
# The launcher prefixes worker lines with the rank; keep the JSON part.
parsed = []
for l in lines:
    try:
        parsed.append(json.loads(l[l.index("{"):]))
    except ValueError:
        pass
print(json.dumps({"label": label, "rc": int(rc), "peak_gpu_mib": float(peak) - float(idle),
                  "wall_s": float(t1) - float(t0), "results": parsed}))
EOF
}

if [[ -d "$bin/pydeps" ]]; then
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$bin/pydeps"
fi
open_clip_ok=0
HF_HUB_OFFLINE=1 "$python" -c 'import open_clip' 2> "$work/open_clip_import.log" && open_clip_ok=1

# --- the largest bf16 batch each side fits, for each model (--max-batch) -----------------------
if [[ -n "$max_batch_models" ]]; then
    searched="$work/max_batch.jsonl"
    : > "$searched"
    for m in $max_batch_models; do
        for impl in ferroclip open_clip; do
            if [[ "$impl" == open_clip && "$open_clip_ok" != 1 ]]; then
                echo "== open_clip unavailable here:"; tail -n 3 "$work/open_clip_import.log"; continue
            fi
            b="$batch"
            while (( b <= batch_cap )); do
                step_args=(--model "$m" --batch "$b" --warmup "$warmup" --steps "$steps" --threads 4
                    --device "$device" --precision bf16)
                if [[ "$impl" == ferroclip ]]; then
                    run "max_${impl}_${m}_$b" "$bin/step_time" "${step_args[@]}" --collective none
                else
                    HF_HUB_OFFLINE=1 run "max_${impl}_${m}_$b" "$python" scripts/bench/openclip_step.py "${step_args[@]}"
                fi
                tail -n 1 "$results" | "$python" -c 'import json,sys; r=json.load(sys.stdin); r.update(impl=sys.argv[1], model=sys.argv[2], batch=int(sys.argv[3])); print(json.dumps(r))' \
                    "$impl" "$m" "$b" >> "$searched"
                tail -n 1 "$results" | "$python" -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r["rc"] == 0 and r["results"] else 1)' || break
                b=$((b * 2))
            done
        done
    done
    echo
    echo "== the largest bf16 batch that fits ($steps timed steps after $warmup warmup; device $device)"
    nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1
    "$python" - "$searched" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ok = [r for r in rows if r["rc"] == 0 and r["results"]]
# MACs and the peak come from ferroclip's line for the model (the same shapes on both sides).
fc = {r["model"]: r["results"][0] for r in ok if r["impl"] == "ferroclip"}
print("| model | impl | largest batch that ran | first that failed | samples/s | peak GPU mem (MiB, nvidia-smi over idle) | torch allocator peak (MiB) | MFU |")
print("|---|---|---|---|---|---|---|---|")
for model in dict.fromkeys(r["model"] for r in rows):
    for impl in ("ferroclip", "open_clip"):
        tried = [r for r in rows if r["model"] == model and r["impl"] == impl]
        if not tried:
            continue
        good = [r for r in tried if r in ok]
        failed = [r["batch"] for r in tried if r not in ok]
        if not good:
            print(f"| {model} | {impl} | none | {failed[0] if failed else '—'} | — | — | — | — |")
            continue
        best = max(good, key=lambda r: r["batch"])
        res = best["results"][0]
        sps = res.get("samples_per_s") or best["batch"] / res["median_step_s"]
        ref = fc.get(model, {})
        mfu = (ref["macs_per_sample"] * 6 * sps / (ref["peak_tflops"] * 1e12)) if ref.get("peak_tflops") else None
        print(f"| {model} | {impl} | {best['batch']} | {failed[0] if failed else '— (cap)'} | {sps:.1f} | "
              f"{best['peak_gpu_mib']:.0f} | {res.get('peak_cuda_allocated_mib', '—')} | "
              f"{'—' if mfu is None else f'{100 * mfu:.1f}%'} |")
EOF
    cp "$searched" "${OUT:-$work}/gpu_max_batch.jsonl" 2>/dev/null || true
    exit 0
fi

common=(--model "$model" --batch "$batch" --warmup "$warmup" --steps "$steps" --threads 4)
if (( ! train_only )); then
run ferroclip_1gpu "$bin/step_time" "${common[@]}" --device cuda --collective none
run ferroclip_1gpu_bf16 "$bin/step_time" "${common[@]}" --device cuda --collective none --precision bf16
run ferroclip_nccl_w1 "$bin/step_time" "${common[@]}" --device cuda --collective nccl
run ferroclip_nccl_w2_launch "$bin/ferroclip" launch --nproc 2 --backend nccl --log-dir "$work/launch-logs" \
    --worker-cmd "$bin/step_time" -- "${common[@]}" --device cuda --collective nccl
if [[ "$open_clip_ok" == 1 ]]; then
    HF_HUB_OFFLINE=1 run open_clip_1gpu "$python" scripts/bench/openclip_step.py "${common[@]}" --device cuda
    HF_HUB_OFFLINE=1 run open_clip_1gpu_bf16 "$python" scripts/bench/openclip_step.py "${common[@]}" --device cuda --precision bf16
else
    echo "== open_clip unavailable here (its step is not timed):"; tail -n 3 "$work/open_clip_import.log"
fi
fi  # train_only

# --- the real train loop on the GPU: the demo's config through `launch --backend nccl` ----------
# (needs the demo's shards carried in $bin/data: scripts/gpu_build.sh copies them when present)
train_rows="$work/train.jsonl"
: > "$train_rows"
if [[ -d "$bin/data/train" ]]; then
    for variant in $variants; do
        precision="${variant%%+*}"
        normalize=loader
        [[ "$variant" == *+device ]] && normalize=device
        name="gpu-demo-$precision-$normalize"
        run "train_${precision}_$normalize" "$bin/ferroclip" launch --nproc 1 --backend nccl --log-dir "$work/runs/$name/logs" -- \
            --config configs/train/demo.toml --set "data.train=$bin/data/train" --set data.workers=6 \
            --set "out_dir=$work/runs" --set "name=$name" --set "precision=$precision" --set "data.normalize=$normalize"
        eval_args=()
        [[ -d "$bin/data/zeroshot" ]] && eval_args=(--zeroshot "$bin/data/zeroshot" --classnames "$bin/data/classnames.txt" --templates "$bin/data/templates.txt")
        "$bin/ferroclip" eval --checkpoint "$work/runs/$name" "${eval_args[@]}" --out "$work/runs/$name/eval.json" 2>&1 | tail -n 5
        "$python" - "$variant" "$work/runs/$name" >> "$train_rows" <<'EOF'
import json, os, sys
precision, run = sys.argv[1:]
path = lambda *p: os.path.join(run, *p)
m = [json.loads(l) for l in open(path("metrics.jsonl"))] if os.path.exists(path("metrics.jsonl")) else []
ev = json.load(open(path("eval.json"))) if os.path.exists(path("eval.json")) else {}
ckpts = sorted(os.listdir(path("checkpoints"))) if os.path.isdir(path("checkpoints")) else []
last = m[-1] if m else {}
print(json.dumps({"precision": precision, "steps": last.get("step"), "final_loss": last.get("loss"),
                  "samples_per_s_last_window": last.get("samples_per_s"),
                  "data_wait_frac_last_window": last.get("data_wait_frac"),
                  "losses_every_log": [r["loss"] for r in m], "checkpoints": ckpts, "eval": ev}))
EOF
    done
else
    echo "== no $bin/data/train: the GPU train-loop check is skipped"
fi

# --- summary -------------------------------------------------------------------------------------
echo
echo "== summary (model $model, batch $batch per worker, fp32, $steps timed steps after $warmup warmup)"
"$python" - "$results" <<'EOF'
import json, sys
print("| run | rc | workers | median step (s) | samples/s | peak GPU mem (MiB, nvidia-smi over idle) | torch allocator peak (MiB) |")
print("|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    row = json.loads(line)
    res = row["results"]
    if not res:
        print(f"| {row['label']} | {row['rc']} | — | — | — | {row['peak_gpu_mib']:.0f} | — |")
        continue
    step = max(r["median_step_s"] for r in res)  # the slowest rank sets the pace
    world = max(int(r.get("world_size", 1)) for r in res)
    batch = sum(int(r["batch"]) for r in res)
    alloc = res[0].get("peak_cuda_allocated_mib", "—")
    print(f"| {row['label']} | {row['rc']} | {len(res)} (world {world}) | {step:.4f} | {batch / step:.1f} "
          f"| {row['peak_gpu_mib']:.0f} | {alloc} |")
EOF
echo
echo "== train loop on the GPU (demo config, 1 NCCL worker)"
cat "$train_rows"
cp "$results" "${OUT:-$work}/gpu_check_results.jsonl" 2>/dev/null || true
cp "$train_rows" "${OUT:-$work}/gpu_train_results.jsonl" 2>/dev/null || true
