#!/usr/bin/env python3
"""Writes tests/data/optim/adamw_ref.json: torch.optim.AdamW trajectories with global-norm
clipping and transformers' learning-rate schedules, for the Rust optimizer tests.

Each run: float32 parameters of a few shapes (one of odd length, so vectorized loops have
a tail), 5 steps; at every step a fixed random gradient (scaled so that some steps clip
and some do not) is clipped with torch.nn.utils.clip_grad_norm_, then AdamW
(single-tensor CPU path, foreach=False) steps with the lr of a transformers LambdaLR
schedule. Recorded per step: the lr used, the gradients before clipping, the total norm
clip_grad_norm_ returned, and parameters / exp_avg / exp_avg_sq after the step.
Schedules: transformers' get_{constant,linear,cosine}_schedule_with_warmup factors.

Usage: python3 scripts/make_optim_refs.py  (needs torch and transformers)
"""
import json
import os

import torch
import transformers
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "optim", "adamw_ref.json")
SHAPES = [[6, 8], [8, 6], [19]]
STEPS = 5


def floats(t):
    # float32 values written as the exact doubles they are
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def make_schedule(opt, spec):
    kind = spec["type"]
    if kind == "constant":
        return get_constant_schedule_with_warmup(opt, spec["warmup_steps"])
    if kind == "linear":
        return get_linear_schedule_with_warmup(opt, spec["warmup_steps"], spec["total_steps"])
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(opt, spec["warmup_steps"], spec["total_steps"], spec["num_cycles"])
    raise ValueError(kind)


def run(seed, lr, betas, eps, weight_decay, max_norm, schedule, grad_scales):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float32)) for s in SHAPES]
    init = [floats(p) for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
    sched = make_schedule(opt, schedule)
    steps = []
    for k in range(STEPS):
        grads = [torch.randn(s, generator=gen, dtype=torch.float32) * grad_scales[k] for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        lr_used = opt.param_groups[0]["lr"]
        total_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        sched.step()
        steps.append(
            {
                "lr": lr_used,
                "grads": [floats(g) for g in grads],
                "grad_norm": float(total_norm),
                "clipped_grads": [floats(p.grad) for p in params],
                "params": [floats(p) for p in params],
                "exp_avg": [floats(opt.state[p]["exp_avg"]) for p in params],
                "exp_avg_sq": [floats(opt.state[p]["exp_avg_sq"]) for p in params],
            }
        )
    return {
        "lr": lr,
        "betas": list(betas),
        "eps": eps,
        "weight_decay": weight_decay,
        "max_norm": max_norm,
        "schedule": schedule,
        "shapes": SHAPES,
        "init_params": init,
        "steps": steps,
    }


def schedule_values():
    specs = [
        {"type": "constant", "warmup_steps": 0},
        {"type": "constant", "warmup_steps": 4},
        {"type": "linear", "warmup_steps": 0, "total_steps": 10},
        {"type": "linear", "warmup_steps": 3, "total_steps": 10},
        {"type": "linear", "warmup_steps": 10, "total_steps": 10},
        {"type": "cosine", "warmup_steps": 0, "total_steps": 12, "num_cycles": 0.5},
        {"type": "cosine", "warmup_steps": 5, "total_steps": 23, "num_cycles": 0.5},
        {"type": "cosine", "warmup_steps": 2, "total_steps": 9, "num_cycles": 1.5},
    ]
    out = []
    base_lr = 3e-4
    for spec in specs:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=base_lr)
        sched = make_schedule(opt, spec)
        lrs = []
        for _ in range(spec.get("total_steps", 8) + 4):  # past the end too
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out.append({"schedule": spec, "base_lr": base_lr, "lrs": lrs})
    return out


def main():
    runs = [
        # large lr and decay so that every term is visible; clipping on steps 0, 2, 3
        run(1, 1e-2, (0.9, 0.999), 1e-8, 0.1, 1.0, {"type": "linear", "warmup_steps": 2, "total_steps": 6},
            [0.3, 0.01, 1.0, 0.2, 0.05]),
        # torch's defaults (weight_decay 0.01) with a cosine schedule and a tight clip
        run(2, 1e-3, (0.9, 0.999), 1e-8, 0.01, 0.5,
            {"type": "cosine", "warmup_steps": 1, "total_steps": 5, "num_cycles": 0.5},
            [0.05, 0.2, 0.001, 0.5, 0.02]),
        # no decay, other betas, no clipping in effect, constant schedule
        run(3, 5e-3, (0.8, 0.99), 1e-6, 0.0, 1e6, {"type": "constant", "warmup_steps": 0},
            [1.0, 1.0, 1.0, 1.0, 1.0]),
    ]
    doc = {
        "note": "torch.optim.AdamW (foreach=False, CPU single-tensor path) after "
        "torch.nn.utils.clip_grad_norm_; lr from transformers schedules; float32 values",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "runs": runs,
        "schedules": schedule_values(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    print(f"wrote {OUT}: {len(runs)} runs, {len(doc['schedules'])} schedules, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
