"""lightning-prune: learned filter pruning for PyTorch Lightning that physically shrinks the model."""

from lightning_prune.callbacks.distillation import DistillationCallback
from lightning_prune.callbacks.distribution import DistributionPruneCallback
from lightning_prune.callbacks.options import DistributionOptions, RLOptions, ScoringOptions
from lightning_prune.callbacks.rl import RLPruneCallback
from lightning_prune.engine.plan import Prunable, load_module
from lightning_prune.zoo.module import ImageClassifier

__all__ = [
    "DistillationCallback",
    "DistributionOptions",
    "DistributionPruneCallback",
    "ImageClassifier",
    "Prunable",
    "RLOptions",
    "RLPruneCallback",
    "ScoringOptions",
    "load_module",
]
__version__ = "0.1.0"
