"""What BatchNorm re-estimation does to a candidate's score: one layer of a trained checkpoint keeps its k
filters of largest L1 norm, and the candidate is scored on validation batches with the model's BatchNorm
statistics and with the later statistics re-estimated on training batches (`CandidateScorer(calibration=...)`).
With `--recovery-steps N`, each candidate is also scored by `scoring.RecoveryScorer`: removed physically from a
copy, re-estimated, trained for N SGD steps on training batches (`--recovery-lr`) and scored again, which is what
a short fine-tune wins back of the drop the reward sees (and what `RLPruneCallback(recovery_steps=N)` decides
by). Prints JSON: the accuracy (points) per kept count, each way.

With `--p-star-draws N`, the unpruned model is instead scored after recovery on N draws of training batches,
drawn as `RLPruneCallback` draws them for its layers (seeds 0..N-1) and scored on the whole validation split:
how much `p*` (one draw, or the mean of `p_star_draws`) moves with the draw.

    PYTHONPATH=. python benchmarks/bn_reestimation.py --checkpoint benchmarks/work/vgg16w025_fm/baseline.ckpt \\
        --layer features.24 --keep 32 48 64 80 --recovery-steps 60
    PYTHONPATH=. python benchmarks/bn_reestimation.py --checkpoint benchmarks/work/vgg16w025_fm/baseline.ckpt \\
        --recovery-steps 60 --p-star-draws 8
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from lightning_prune import ImageClassifier, scoring, surgery
from lightning_prune.data import FashionMNISTDataModule


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained ImageClassifier checkpoint (Fashion-MNIST)")
    p.add_argument("--data-dir", default="../shared/data/fashion-mnist")
    p.add_argument("--layer", default="features.24")
    p.add_argument("--keep", type=int, nargs="+", default=[32, 48, 64, 80])
    p.add_argument("--reward-batches", type=int, default=6)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--recovery-steps", type=int, default=0, help="SGD steps of the recovered score (0: none)")
    p.add_argument("--recovery-lr", type=float, default=0.001)
    p.add_argument("--p-star-draws", type=int, default=0, help="score the unpruned model on this many recovery draws")
    args = p.parse_args(argv)
    if args.p_star_draws:
        return p_star_draws(args)

    module = ImageClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu")
    dm = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128, seed=0)
    dm.setup("fit")
    batches = list(itertools.islice(iter(dm.val_dataloader()), args.reward_batches))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calibration = [x for x, _ in itertools.islice(iter(dm.train_dataloader()), args.calibration_batches)]
        training = list(itertools.islice(iter(dm.train_dataloader()), args.recovery_steps))
    model = module.model
    graph = surgery.build_graph(model, surgery.example_input(model, module.plan.input_shape))
    maps = surgery.output_channel_maps(model, graph, args.layer)
    weight = model.get_submodule(args.layer).weight
    order = weight.detach().flatten(1).abs().sum(1).argsort(descending=True)
    masks = {}
    for k in args.keep:
        masks[k] = torch.zeros(weight.shape[0], dtype=torch.bool)
        masks[k][order[:k]] = True
    results = {}
    for label, inputs in (("as_is", []), ("reestimated", calibration)):
        with scoring.CandidateScorer(model, maps, batches, calibration=inputs) as scorer:
            results[label] = {"unpruned": scorer.accuracy(), **{str(k): scorer.accuracy(m) for k, m in masks.items()}}
    if args.recovery_steps:
        label = f"recovered_{args.recovery_steps}_steps"
        inputs = surgery.example_input(model, module.plan.input_shape)
        recovery = scoring.RecoveryScorer(model, args.layer, inputs, calibration, training, batches, args.recovery_lr)
        results[label] = {"unpruned": recovery.accuracy(), **{str(k): recovery.accuracy(m) for k, m in masks.items()}}
    print(json.dumps({"checkpoint": args.checkpoint, "layer": args.layer, "filters": weight.shape[0], **results}))


def p_star_draws(args: argparse.Namespace) -> None:
    if not args.recovery_steps:
        raise SystemExit("--p-star-draws scores recovered models: pass --recovery-steps N (> 0) as well")
    module = ImageClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu")
    dm = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128, seed=0)
    dm.setup("fit")
    val, train = list(dm.val_dataloader()), dm.train_dataloader()
    model = module.model
    inputs = surgery.example_input(model, module.plan.input_shape)
    with scoring.CandidateScorer(
        model, surgery.output_channel_maps(model, surgery.build_graph(model, inputs), args.layer), val
    ) as scorer:
        plain = scorer.accuracy()
    scores = []
    for seed in range(args.p_star_draws):
        calibration = [x for x, _ in scoring.drawn_batches(train, args.calibration_batches, seed)]
        training = scoring.drawn_batches(train, args.recovery_steps, seed, shuffle=True)
        recovery = scoring.RecoveryScorer(
            model, args.layer, inputs, calibration, training, val, args.recovery_lr, seed=seed
        )
        scores.append(recovery.accuracy())
    mean = sum(scores) / len(scores)
    print(json.dumps({"checkpoint": args.checkpoint, "unrecovered": plain, "recovered": scores, "mean": mean}))


if __name__ == "__main__":
    main()
