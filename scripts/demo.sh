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

say "training tiny CLIP on Google-style emoji (configs/train/demo.toml)"
start=$(date +%s)
$bin train --config configs/train/demo.toml "$@"
echo "training took $(( $(date +%s) - start )) s"

say "evaluating on Twitter-style emoji (held-out image style)"
$bin eval --checkpoint runs/demo-tiny \
  --zeroshot $data/shards/zeroshot --classnames $data/classnames.txt --templates $data/templates.txt \
  --retrieval $data/shards/retrieval --out runs/demo-tiny/eval.json
