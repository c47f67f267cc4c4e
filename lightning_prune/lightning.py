"""The ready-made module for users of `import lightning as L`: `ImageClassifier` on `lightning.LightningModule`."""

from __future__ import annotations

import lightning as L

from lightning_prune.module import ImageClassifierBase


class ImageClassifier(ImageClassifierBase, L.LightningModule):
    __doc__ = ImageClassifierBase.__doc__
