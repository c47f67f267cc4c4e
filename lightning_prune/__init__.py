"""lightning-prune: learned filter pruning for PyTorch Lightning that physically shrinks the model."""

from lightning_prune.callback import RLPruneCallback
from lightning_prune.distill import DistillationCallback
from lightning_prune.distribution_callback import DistributionPruneCallback
from lightning_prune.module import ImageClassifier

__all__ = ["DistillationCallback", "DistributionPruneCallback", "ImageClassifier", "RLPruneCallback"]
__version__ = "0.1.0"
