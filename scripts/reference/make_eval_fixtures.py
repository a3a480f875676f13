"""Reference fixtures for trainer/tests/eval_parity.rs (zero-shot + retrieval metrics).

Runs clip_benchmark 1.6.2's own metric code (zero_shot_classifier, the zero-shot
`evaluate`, the retrieval `evaluate`) on seeded random embeddings, through a fake
model whose encoders look embeddings up by index, and saves the embeddings plus
the metrics clip_benchmark reports.

Run from the repository root (needs the reference env, no network):
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_eval_fixtures.py
Writes trainer/tests/fixtures/eval_embeddings.safetensors and
trainer/tests/fixtures/eval_expected.json.
"""
import json
import math
import os

import torch
from safetensors.torch import save_file

from clip_benchmark.metrics import zeroshot_classification as zsc
from clip_benchmark.metrics import zeroshot_retrieval as zsr

def _accuracy_numpy2(output, target, topk=(1,)):
    """clip_benchmark 1.6.2's `accuracy` (same topk/eq counting), ending in `.item()`:
    its `float(array_of_shape_(1,))` is an error under NumPy >= 2.4, which .venv-ref has."""
    hits = output.topk(max(topk), 1, True, True)[1].t().eq(target.view(1, -1))
    return [hits[:k].float().sum().item() / len(target) for k in topk]


zsc.accuracy = _accuracy_numpy2

OUT_DIR = os.path.join("trainer", "tests", "fixtures")
DIM = 16
gen = torch.Generator().manual_seed(20240611)


def randn(*shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


class LookupModel:
    """encode_image / encode_text return stored, unnormalised embeddings by row index."""

    def __init__(self, image_table, text_table):
        self.image_table = image_table
        self.text_table = text_table

    def encode_image(self, idx):
        return self.image_table[idx]

    def encode_text(self, idx):
        return self.text_table[idx]


class StringTokenizer:
    """Maps each text to its row in the text table (stands in for BPE + encoder)."""

    def __init__(self, texts):
        self.row = {t: i for i, t in enumerate(texts)}
        assert len(self.row) == len(texts), "texts must be unique"

    def __call__(self, texts):
        return torch.tensor([self.row[t] for t in texts], dtype=torch.long)


class Labelled:
    """The loader object clip_benchmark's zero-shot evaluate reads `.dataset.classes` from."""

    def __init__(self, batches, classes):
        self.batches = batches
        self.dataset = type("Dataset", (), {"classes": classes})()

    def __iter__(self):
        return iter(self.batches)


def batches_of(n, size):
    return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]


def zeroshot_case(name, classnames, templates, counts, proto_weight, text_noise):
    """Image features: class prototype + noise, random scale; texts: prototype + template offset + noise."""
    num_classes = len(classnames)
    protos = randn(num_classes, DIM)
    template_offsets = randn(len(templates), DIM) * 0.8
    # (C, T, E) text embeddings with uneven norms, so per-template normalisation matters.
    text_emb = protos[:, None, :] + template_offsets[None] + text_noise * randn(num_classes, len(templates), DIM)
    text_emb = text_emb * (0.5 + 3.0 * torch.rand(num_classes, len(templates), 1, generator=gen))
    labels = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    image_emb = proto_weight * protos[labels] + randn(len(labels), DIM)
    image_emb = image_emb * (0.2 + 5.0 * torch.rand(len(labels), 1, generator=gen))

    texts = [t.format(c=c) for c in classnames for t in templates]
    model = LookupModel(image_emb, text_emb.reshape(-1, DIM))
    tokenizer = StringTokenizer(texts)
    classifier = zsc.zero_shot_classifier(model, tokenizer, classnames, templates, "cpu", amp=False)
    loader = Labelled([(idx, labels[idx]) for idx in batches_of(len(labels), 16)], classnames)
    metrics = zsc.evaluate(model, loader, tokenizer, classnames, templates, "cpu", amp=False)
    tensors = {
        f"{name}.image_features": image_emb.contiguous(),
        f"{name}.text_embeddings": text_emb.contiguous(),
        f"{name}.classifier": classifier.contiguous(),
        f"{name}.labels": labels.contiguous(),
    }
    acc5 = metrics["acc5"]
    expected = {
        "classnames": classnames,
        "templates": templates,
        "acc1": metrics["acc1"],
        "acc5": None if math.isnan(acc5) else acc5,
        "mean_per_class_recall": float(metrics["mean_per_class_recall"]),
    }
    return tensors, expected


def retrieval_case(name, captions_per_image, caption_noise, batch_size, ks):
    num_images = len(captions_per_image)
    image_emb = randn(num_images, DIM)
    text_to_image = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(captions_per_image)])
    text_emb = image_emb[text_to_image] + caption_noise * randn(len(text_to_image), DIM)
    text_emb = text_emb * (0.3 + 2.0 * torch.rand(len(text_to_image), 1, generator=gen))
    image_emb = image_emb * (0.3 + 2.0 * torch.rand(num_images, 1, generator=gen))

    texts = [f"caption {j}" for j in range(len(text_to_image))]
    model = LookupModel(image_emb, text_emb)
    tokenizer = StringTokenizer(texts)
    batches = []
    for idx in batches_of(num_images, batch_size):
        captions = [[texts[j] for j in range(len(texts)) if text_to_image[j] == i] for i in idx.tolist()]
        batches.append((idx, captions))
    metrics = zsr.evaluate(model, batches, tokenizer, "cpu", amp=False, recall_k_list=ks)
    tensors = {
        f"{name}.image_features": image_emb.contiguous(),
        f"{name}.text_features": text_emb.contiguous(),
        f"{name}.text_to_image": text_to_image.contiguous(),
    }
    return tensors, {"ks": ks, "metrics": metrics}


def main():
    tensors, expected = {}, {}
    # 8 class names, one never occurs (balanced accuracy averages over occurring classes only),
    # uneven counts down to 2 samples.
    t, e = zeroshot_case(
        "zeroshot",
        ["cat", "dog", "red car", "tree", "bicycle", "the moon", "lighthouse", "teapot"],
        ["a photo of a {c}.", "a blurry photo of the {c}.", "art of a {c}", "{c}", "a {c} in the wild.", "itap of a {c}."],
        counts=[20, 12, 9, 8, 5, 3, 3, 0],
        proto_weight=0.45,
        text_noise=1.0,
    )
    tensors.update(t)
    expected["zeroshot"] = e
    # Fewer than 5 classes: clip_benchmark reports acc5 as NaN (null here).
    t, e = zeroshot_case(
        "zeroshot_small",
        ["apple", "pear", "plum"],
        ["a photo of a {c}.", "a {c}."],
        counts=[9, 7, 4],
        proto_weight=0.35,
        text_noise=1.0,
    )
    tensors.update(t)
    expected["zeroshot_small"] = e
    # 45 images with 1-3 captions each (uneven), noisy enough that recall@1 is well inside (0, 1).
    counts = torch.randint(1, 4, (45,), generator=gen).tolist()
    t, e = retrieval_case("retrieval", counts, caption_noise=2.6, batch_size=16, ks=[1, 5, 10])
    tensors.update(t)
    expected["retrieval"] = e
    # One caption per image.
    t, e = retrieval_case("retrieval_single", [1] * 30, caption_noise=2.2, batch_size=8, ks=[1, 5, 10])
    tensors.update(t)
    expected["retrieval_single"] = e

    os.makedirs(OUT_DIR, exist_ok=True)
    save_file(tensors, os.path.join(OUT_DIR, "eval_embeddings.safetensors"))
    with open(os.path.join(OUT_DIR, "eval_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
