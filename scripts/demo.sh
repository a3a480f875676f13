#!/usr/bin/env bash
# The main job, end to end on real data from the registries:
#   emoji images + names/tags (npm) -> webdataset shards -> train a tiny CLIP ->
#   zero-shot and retrieval evaluation on held-out-style (Twitter) images.
# Idempotent: manifests and shards are rebuilt (seconds), the run folder is overwritten.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup.sh
source scripts/env.sh

say() { printf '\n==> %s\n' "$*"; }
say "building ferroclip (release)"
cargo build --release --quiet --bin ferroclip
bin=target/release/ferroclip

data=data/emoji
say "writing manifests from the npm emoji packs"
python3 scripts/data/emoji_manifests.py --npm data/npm/node_modules --out $data
say "sharding (rebuilt every time: a few seconds)"
rm -rf $data/shards
$bin shard --input $data/train.jsonl --output $data/shards/train --samples-per-shard 500
$bin shard --input $data/eval_retrieval.jsonl --output $data/shards/retrieval --samples-per-shard 1000
$bin shard --input $data/eval_zeroshot.jsonl --output $data/shards/zeroshot --samples-per-shard 1000

say "training tiny CLIP on Google-style emoji with 2 local workers (configs/train/demo.toml)"
start=$(date +%s)
# [eval] while training, on both workers (each embeds one of the two shards of each set):
# every 250 steps and at the end, into runs/demo-tiny/eval.jsonl, tb/ and the report.
$bin launch --nproc 2 --backend mpi --log-dir runs/demo-tiny/logs -- --config configs/train/demo.toml \
  --set eval.every=250 --set "eval.zeroshot=\"$data/shards/zeroshot\"" \
  --set "eval.classnames=\"$data/classnames.txt\"" --set "eval.templates=\"$data/templates.txt\"" \
  --set "eval.retrieval=\"$data/shards/retrieval\"" "$@"
echo "training took $(( $(date +%s) - start )) s"

say "evaluating on Twitter-style emoji (held-out image style)"
$bin eval --checkpoint runs/demo-tiny \
  --zeroshot $data/shards/zeroshot --classnames $data/classnames.txt --templates $data/templates.txt \
  --retrieval $data/shards/retrieval --out runs/demo-tiny/eval.json

say "report (charts of the metrics and eval results; TensorBoard: tensorboard --logdir runs/demo-tiny/tb)"
$bin report runs/demo-tiny

say "summary"
python3 - <<'PY'
import json
metrics = [json.loads(l) for l in open("runs/demo-tiny/metrics.jsonl")]
ev = json.load(open("runs/demo-tiny/eval.json"))
last = metrics[-1]
train_n = sum(json.load(open("data/emoji/shards/train/sizes.json")).values())
zs, rt = ev["zeroshot"], ev["retrieval"]
print(f"trained: CLIP 'tiny' (configs/models/tiny.toml) from scratch, {last['step']} steps, "
      f"{last['samples_seen']} samples seen = {last['samples_seen'] / train_n:.0f} passes over "
      f"{train_n} Google-style emoji captioned with their names, tags and categories; "
      f"final loss {last['loss']:.3f}, {last['samples_per_s']:.0f} samples/s ({last['tflops']:.3f} model TFLOP/s)")
print(f"evaluated on {zs['num_samples']} Twitter-style emoji (an image style never seen in training):")
z, zc = zs["metrics"], zs["chance"]
print(f"  zero-shot into {zs['num_classes']} emoji categories: top-1 {z['acc1']:.1%} (chance {zc['acc1']:.1%}), "
      f"top-5 {z['acc5']:.1%} (chance {zc['acc5']:.1%})")
r, rc = rt["metrics"], rt["chance"]
print(f"  retrieval among {rt['num_images']} images / {rt['num_texts']} name captions: "
      f"text->image R@1 {r['image_retrieval_recall@1']:.1%} (chance {rc['image_retrieval_recall@1']:.2%}), "
      f"image->text R@1 {r['text_retrieval_recall@1']:.1%} (chance {rc['text_retrieval_recall@1']:.2%}), "
      f"R@10 {r['image_retrieval_recall@10']:.1%} / {r['text_retrieval_recall@10']:.1%}")
print("files: runs/demo-tiny/{config.toml,metrics.jsonl,eval.jsonl,tb/,report.html,model.safetensors,eval.json}")
PY
