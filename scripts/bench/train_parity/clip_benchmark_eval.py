"""CLIP_benchmark 1.6.2's zero-shot classification and retrieval metrics for open_clip-loadable
folders (`open_clip_config.json` + `open_clip_model.safetensors`, as `ferroclip export` writes
them and as `export_open_clip` below makes them from an open_clip_train checkpoint).

Each folder is loaded with open_clip's own `local-dir:` loader, its eval transform and
tokenizer; the eval shards are read with webdataset and handed to clip_benchmark's
`zeroshot_classification.evaluate` and `zeroshot_retrieval.evaluate` unchanged (apart from
the NumPy >= 2.4 fix of its `accuracy`, as in scripts/reference/make_eval_fixtures.py).

    clip_benchmark_eval.py --zeroshot SHARDS --classnames F --templates F --retrieval SHARDS \
        --out results.json DIR [DIR ...]
    clip_benchmark_eval.py --convert epoch_N.pt --model-config M.json --out DIR
"""
import argparse
import json
import os

import open_clip
import torch
import webdataset as wds
from clip_benchmark.metrics import zeroshot_classification as zsc
from clip_benchmark.metrics import zeroshot_retrieval as zsr
from safetensors.torch import save_file


def _accuracy_numpy2(output, target, topk=(1,)):
    """clip_benchmark 1.6.2's `accuracy`, ending in `.item()` (its `float(array)` fails on NumPy >= 2.4)."""
    hits = output.topk(max(topk), 1, True, True)[1].t().eq(target.view(1, -1))
    return [hits[:k].float().sum().item() / len(target) for k in topk]


zsc.accuracy = _accuracy_numpy2


def export_open_clip(checkpoint: str, model_config: str, out: str) -> None:
    """An open_clip_train checkpoint (`epoch_N.pt`, DDP's `module.` prefix or not) as the
    `local-dir:` folder `ferroclip export` writes: the same two files, the same layout."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    state = {k.removeprefix("module."): v.contiguous() for k, v in state.items()}
    os.makedirs(out, exist_ok=True)
    save_file(state, os.path.join(out, "open_clip_model.safetensors"))
    with open(model_config) as f:
        model_cfg = json.load(f)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def _lines(data: bytes) -> list:
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


def _shards(spec: str) -> list:
    if os.path.isdir(spec):
        return sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.endswith(".tar"))
    return spec


class Batches:
    """Preprocessed batches, iterable again for every model (the loader clip_benchmark reads
    `.dataset.classes` from): every folder here shares one eval transform, so the images are
    decoded and transformed once."""

    def __init__(self, batches, classes=None):
        self.batches = batches
        self.dataset = type("Dataset", (), {"classes": classes})()

    def __iter__(self):
        return iter(self.batches)


def load_batches(spec: str, second: str, convert, preprocess, batch_size: int) -> list:
    dataset = (
        wds.WebDataset(_shards(spec), shardshuffle=False, empty_check=False)
        .decode("pilrgb")
        .to_tuple("png;jpg;jpeg;webp", second)
        .map_tuple(preprocess, convert)
    )
    rows, batches = [], []
    for row in dataset:
        rows.append(row)
        if len(rows) == batch_size:
            batches.append(rows)
            rows = []
    if rows:
        batches.append(rows)
    return [(torch.stack([r[0] for r in b]), [r[1] for r in b]) for b in batches]


def evaluate_folders(folders: list, args) -> dict:
    results, data, data_key = {}, None, None
    for folder in folders:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device="cpu")
        model.eval()
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        key = repr(preprocess)
        if key != data_key:
            data_key, data = key, {}
            if args.zeroshot:
                batches = load_batches(args.zeroshot, "cls", int, preprocess, args.batch_size)
                data["zeroshot"] = [(images, torch.tensor(labels)) for images, labels in batches]
            if args.retrieval:
                data["retrieval"] = load_batches(args.retrieval, "txt", _lines_of_text, preprocess, args.batch_size)
        out = {}
        if args.zeroshot:
            classnames = _lines(open(args.classnames, "rb").read())
            templates = _lines(open(args.templates, "rb").read())
            loader = Batches(data["zeroshot"], classnames)
            metrics = zsc.evaluate(model, loader, tokenizer, classnames, templates, "cpu", amp=False)
            out["zeroshot"] = {k: float(v) for k, v in metrics.items()}
        if args.retrieval:
            metrics = zsr.evaluate(model, Batches(data["retrieval"]), tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
            out["retrieval"] = {k: float(v) for k, v in metrics.items()}
        results[folder] = out
    return results


def _lines_of_text(text: str) -> list:
    return [line.strip() for line in text.splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*")
    p.add_argument("--convert", help="an open_clip_train checkpoint to export (with --model-config, --out)")
    p.add_argument("--model-config")
    p.add_argument("--zeroshot")
    p.add_argument("--classnames")
    p.add_argument("--templates")
    p.add_argument("--retrieval")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.convert:
        export_open_clip(args.convert, args.model_config, args.out)
        return
    results = evaluate_folders(args.folders, args)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
