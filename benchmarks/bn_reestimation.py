"""What BatchNorm re-estimation does to a candidate's score: one layer of a trained checkpoint keeps its k
filters of largest L1 norm, and the candidate is scored on validation batches with the model's BatchNorm
statistics and with the later statistics re-estimated on training batches (`CandidateScorer(calibration=...)`).
Prints JSON: the accuracy (points) per kept count, each way.

    PYTHONPATH=. python benchmarks/bn_reestimation.py --checkpoint benchmarks/work/vgg16w025_fm/baseline.ckpt \\
        --layer features.24 --keep 32 48 64 80
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from lightning_prune import ImageClassifier
from lightning_prune.engine import scoring, surgery
from lightning_prune.zoo.data import FashionMNISTDataModule


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained ImageClassifier checkpoint (Fashion-MNIST)")
    p.add_argument("--data-dir", default="../shared/data/fashion-mnist")
    p.add_argument("--layer", default="features.24")
    p.add_argument("--keep", type=int, nargs="+", default=[32, 48, 64, 80])
    p.add_argument("--reward-batches", type=int, default=6)
    p.add_argument("--calibration-batches", type=int, default=8)
    args = p.parse_args(argv)

    module = ImageClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu")
    dm = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128, seed=0)
    dm.setup("fit")
    batches = list(itertools.islice(iter(dm.val_dataloader()), args.reward_batches))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calibration = [x for x, _ in itertools.islice(iter(dm.train_dataloader()), args.calibration_batches)]
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
    print(json.dumps({"checkpoint": args.checkpoint, "layer": args.layer, "filters": weight.shape[0], **results}))


if __name__ == "__main__":
    main()
