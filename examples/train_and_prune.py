"""Prune a small VGG-11, trained on the Fashion-MNIST subset shipped with lightning-prune, with a budget b = 1.

    python examples/train_and_prune.py

The same run as `lightning-prune fit --config configs/quickstart.yaml`, in plain Python: about 30 seconds on
2 CPU cores, no download. It prints the summary, tests the pruned network and exports it to ONNX.
"""

from pathlib import Path

import pytorch_lightning as pl

import lightning_prune
from lightning_prune import ImageClassifier, RLPruneCallback
from lightning_prune.io.export import export_model
from lightning_prune.zoo.data import EmbeddedFashionMNISTDataModule


def main() -> None:
    pl.seed_everything(0)
    datamodule = EmbeddedFashionMNISTDataModule(batch_size=64, val_size=1000)
    # The dense network, trained to convergence by configs/quickstart_dense.yaml, fine-tuned at a fifth of its rate.
    weights = Path(lightning_prune.__file__).parent / "data" / "assets" / "quickstart_dense.ckpt"
    model = ImageClassifier(
        "vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.25}, lr=0.01, weights=str(weights)
    )
    # Learn the filter order, probe what levels cost, cut to the largest level predicted within b, fine-tune.
    pruner = RLPruneCallback(b=1.0, monitor="val_acc")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=8,
        callbacks=[pruner],
        default_root_dir="runs/example",
        log_every_n_steps=10,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule)
    onnx_path = export_model(model.model.cpu(), "onnx", Path(trainer.log_dir) / "pruned.onnx", model.plan.input_shape)
    print(f"Pruned network exported to {onnx_path}")


if __name__ == "__main__":
    main()
