"""Train a small VGG-11 on the Fashion-MNIST subset shipped with lightning-prune and prune it while it trains.

    python examples/train_and_prune.py

The same run as `lightning-prune fit --config configs/quickstart.yaml`, in plain Python: about 2 minutes on
2 CPU cores, no download. It prints the summary, tests the pruned network and exports it to ONNX.
"""

from pathlib import Path

import pytorch_lightning as pl

from lightning_prune import ImageClassifier, RLPruneCallback
from lightning_prune.data import EmbeddedFashionMNISTDataModule
from lightning_prune.export import export_model


def main() -> None:
    pl.seed_everything(0)
    datamodule = EmbeddedFashionMNISTDataModule(batch_size=64, val_size=1000)
    model = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.25}, scheduler="step")
    # Train the dense network until it converges (the learning rate drops at epochs 15 and 22), then prune in steps
    # of 2 fine-tuning epochs each while the measured drop is clearly below b, and fine-tune to the end.
    pruner = RLPruneCallback(b=1.0, start_epoch=22, finetune_epochs=2, monitor="val_acc")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=30,
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
