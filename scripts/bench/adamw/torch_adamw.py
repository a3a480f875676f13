"""torch.optim.AdamW over open_clip's model of the same name, as open_clip_train builds it
(decay on ≥2-D weights but gains, biases and logit_scale), in its three implementations:
for-loop (the CPU default), foreach, and fused. Gradients are set once per step outside the
timed region; one JSON line per implementation, median seconds per step.

    .venv-ref/bin/python scripts/bench/adamw/torch_adamw.py --model ViT-B-32 --threads 2 --rounds 5
"""
import argparse
import json
import statistics
import time

import open_clip
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="ViT-B-32")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--rounds", type=int, default=5)
args = ap.parse_args()
torch.set_num_threads(args.threads)


def build():
    torch.manual_seed(0)
    model = open_clip.create_model(args.model)
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    decay = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    plain = [p for n, p in named if exclude(n, p) and p.requires_grad]
    return model, [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.2}]


variants = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
runs = {}
for name, flags in variants.items():
    model, groups = build()
    opt = torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, **flags)
    runs[name] = (model, opt, [])
params = sum(p.numel() for p in runs["fused"][0].parameters())
for step in range(args.rounds + 1):
    for name, (model, opt, times) in runs.items():
        torch.manual_seed(1000 + step)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        start = time.perf_counter()
        opt.step()
        if step > 0:
            times.append(time.perf_counter() - start)
for name, (_, _, times) in runs.items():
    print(json.dumps({"impl": f"torch.optim.AdamW {name}", "model": args.model, "params": params,
                      "threads": args.threads, "step_s": round(statistics.median(times), 5)}))
