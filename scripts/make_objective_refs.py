#!/usr/bin/env python3
"""Writes tests/data/objective/kto_ref.json: KTO losses and gradients from torch autograd.

The loss follows TRL's KTOTrainer.kto_loss (loss_type "kto") and get_batch_loss_metrics:
  kl = clamp(mean(policy_KL_logps - reference_KL_logps).detach(), min=0)   (0 without KL data)
  desirable:   desirable_weight   * (1 - sigmoid(beta * (logratio - kl)))
  undesirable: undesirable_weight * (1 - sigmoid(beta * (kl - logratio)))
  loss = mean over all examples
Gradients are d loss / d policy_logps (autograd, KL detached as TRL does), in float64.

Usage: python3 scripts/make_objective_refs.py  (needs torch)
"""
import json
import os

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "objective", "kto_ref.json")


def kto_reference(beta, wd, wu, policy, ref, labels, policy_kl, ref_kl):
    policy = torch.tensor(policy, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor(ref, dtype=torch.float64)
    desirable = torch.tensor(labels, dtype=torch.bool)
    if policy_kl:
        kl = (torch.tensor(policy_kl, dtype=torch.float64) - torch.tensor(ref_kl, dtype=torch.float64)).mean().detach()
        kl = kl.clamp(min=0)
    else:
        kl = torch.zeros((), dtype=torch.float64)
    chosen_logratios = policy[desirable] - ref[desirable]
    rejected_logratios = policy[~desirable] - ref[~desirable]
    chosen_losses = 1 - F.sigmoid(beta * (chosen_logratios - kl))
    rejected_losses = 1 - F.sigmoid(beta * (kl - rejected_logratios))
    losses = torch.cat((wd * chosen_losses, wu * rejected_losses), 0)
    loss = losses.nanmean()
    loss.backward()
    # per-example losses back in input order
    per_example = torch.empty(len(labels), dtype=torch.float64)
    per_example[desirable] = (wd * chosen_losses).detach()
    per_example[~desirable] = (wu * rejected_losses).detach()
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    metrics = {"kl": kl.item(), "count/chosen": int(desirable.sum()), "count/rejected": int((~desirable).sum())}
    if chosen_rewards.numel():
        metrics["rewards/chosen"] = chosen_rewards.mean().item()
        metrics["logps/chosen"] = policy[desirable].detach().mean().item()
    if rejected_rewards.numel():
        metrics["rewards/rejected"] = rejected_rewards.mean().item()
        metrics["logps/rejected"] = policy[~desirable].detach().mean().item()
    if chosen_rewards.numel() and rejected_rewards.numel():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return {
        "loss": loss.item(),
        "per_example": per_example.tolist(),
        "d_policy_logps": policy.grad.tolist(),
        "metrics": metrics,
    }


def main():
    gen = torch.Generator().manual_seed(20240601)

    def uniform(n, lo, hi):
        return (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)).tolist()

    cases = []
    # (beta, desirable_weight, undesirable_weight, n, kl_shift, label pattern)
    settings = [
        (0.1, 1.0, 1.0, 8, +6.0, "mixed"),  # KL estimate > 0
        (0.1, 1.0, 1.33, 7, -6.0, "mixed"),  # KL estimate < 0: clamped to 0
        (0.5, 2.0, 1.0, 5, +2.0, "up"),  # thumbs up only
        (0.05, 1.0, 3.0, 6, +1.0, "down"),  # thumbs down only
        (0.2, 1.0, 1.0, 6, None, "mixed"),  # no KL data (calculate_KL = False)
    ]
    for beta, wd, wu, n, kl_shift, pattern in settings:
        ref = uniform(n, -150.0, -5.0)
        policy = [r + d for r, d in zip(ref, uniform(n, -25.0, 25.0))]
        if pattern == "mixed":
            labels = [bool(x > 0.5) for x in uniform(n, 0.0, 1.0)]
            labels[0], labels[1] = True, False
        else:
            labels = [pattern == "up"] * n
        if kl_shift is None:
            policy_kl, ref_kl = [], []
        else:
            # mismatched completions: completion i paired with prompt i-1 (TRL's +1 offset)
            ref_kl = uniform(n, -300.0, -50.0)
            policy_kl = [r + d for r, d in zip(ref_kl, uniform(n, kl_shift - 4.0, kl_shift + 4.0))]
        case = {
            "beta": beta,
            "desirable_weight": wd,
            "undesirable_weight": wu,
            "policy_logps": policy,
            "ref_logps": ref,
            "desirable": labels,
            "policy_kl_logps": policy_kl,
            "ref_kl_logps": ref_kl,
        }
        case.update(kto_reference(beta, wd, wu, policy, ref, labels, policy_kl, ref_kl))
        cases.append(case)

    doc = {
        "note": "TRL KTOTrainer.kto_loss (loss_type kto) replicated in torch float64; "
        "d_policy_logps = d(mean loss)/d(policy_logps) by autograd with the KL estimate detached",
        "torch": torch.__version__,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
