"""How far a layer's agent moves when its rewards carry no signal: each of `--updates` REINFORCE updates of
`policy.LayerSearch` gets K rewards drawn from a standard normal, as if every sampled mask scored alike up to
noise. An agent that ends confident here ranks filters by noise. Prints JSON per agent learning rate and L1-norm
prior (`RLOptions(agent_lr=..., l1_prior=...)`), averaged over the convolutions of the model and `--seeds`
seeds: the spread of the logit change from the start (`logit_shift_std`), the share of filters ending with a keep
probability below 0.01 or above 0.99 (`saturated`), and the rank correlation of the final keep probabilities with
the filters' L1 norms (`l1_rank_corr`; 1 with a strong prior that the updates left in place).

    PYTHONPATH=. python benchmarks/agent_noise.py --checkpoint benchmarks/work/vgg16w025_fm/baseline.ckpt
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch import nn

from lightning_prune import ImageClassifier
from lightning_prune.search.agents import LayerSearch, l1_prior


def rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (0 where either side is constant)."""
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    if a.unique().numel() == 1 or b.unique().numel() == 1:
        return 0.0
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def drift(weight: torch.Tensor, lr: float, prior: float, args: argparse.Namespace, seed: int) -> dict[str, float]:
    """One agent trained on noise rewards: its logit shift, saturation and agreement with the L1 ranking."""
    search = LayerSearch(weight, min_keep=1, seed=seed, lr=lr, init_keep=args.init_keep, prior_scale=prior)
    noise = torch.Generator().manual_seed(10_000 + seed)
    start = search.probs().logit(eps=1e-6)
    for _ in range(args.updates):
        search.update(search.sample(args.num_samples), torch.randn(args.num_samples, generator=noise))
    probs = search.probs()
    return {
        "logit_shift_std": float((probs.logit(eps=1e-6) - start).std()),
        "saturated": float(((probs < 0.01) | (probs > 0.99)).float().mean()),
        "l1_rank_corr": rank_corr(probs, l1_prior(weight, 1.0)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a trained ImageClassifier checkpoint (default: an untrained VGG-16 x0.25)")
    p.add_argument("--agent-lr", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    p.add_argument("--l1-prior", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    p.add_argument("--updates", type=int, default=15)
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--init-keep", type=float, default=0.8)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    if args.checkpoint:
        module = ImageClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu")
    else:
        module = ImageClassifier("vgg16", model_kwargs={"width": 0.25})
    weights = [m.weight.detach() for m in module.model.modules() if isinstance(m, nn.Conv2d)]
    rows = []
    for lr in args.agent_lr:
        for prior in args.l1_prior:
            runs = [drift(w, lr, prior, args, s) for w in weights for s in range(args.seeds)]
            row = {k: round(statistics.mean(r[k] for r in runs), 3) for k in runs[0]}
            rows.append({"agent_lr": lr, "l1_prior": prior, **row})
    print(json.dumps({"updates": args.updates, "num_samples": args.num_samples, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
