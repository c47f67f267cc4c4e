"""lightning-prune: learned filter pruning for PyTorch Lightning that physically shrinks the model."""

from lightning_prune.callback import RLPruneCallback
from lightning_prune.distill import DistillationCallback
from lightning_prune.distribution_callback import DistributionPruneCallback
from lightning_prune.module import ImageClassifier
from lightning_prune.options import DistributionOptions, RLOptions, ScoringOptions
from lightning_prune.plan import Prunable, load_module

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
