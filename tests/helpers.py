"""Tiny shared fixtures: small classifiers, the embedded data, fast Trainers and a fast pruning callback."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger

from lightning_prune import ImageClassifier, RLOptions, RLPruneCallback
from lightning_prune.zoo.data import EmbeddedFashionMNISTDataModule

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*number of training batches.*logging interval.*")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: Conv groups pruned in the fast tests, per built-in model (each a different kind of coupling).
LAYERS = {
    "vgg11": ["features.4", "features.8"],
    "resnet56": ["conv1", "layer3.0.conv1"],  # the residual stream of stage 1, then a block's inner conv
    "mobilenetv2_small": ["features.2.conv.1.0", "features.3.conv.2.0"],  # depthwise, then a projection
    "inception_small": ["inception1.branch1.0", "inception1.branch2.1.0"],  # two slices of a concatenation
}


def load_benchmark(name: str) -> ModuleType:
    """The script `benchmarks/<name>.py` as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the duration: these tiny models gain little from more, lose much when the cores
    are shared, and results (hence decisions) do not depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_classifier(name: str = "vgg11", width: float = 0.125, **kwargs: Any) -> ImageClassifier:
    """A small built-in network on 1x32x32 images (the embedded Fashion-MNIST)."""
    return ImageClassifier(name, num_classes=10, in_channels=1, model_kwargs={"width": width}, **kwargs)


def tiny_data(batch_size: int = 32, **kwargs: Any) -> EmbeddedFashionMNISTDataModule:
    """The Fashion-MNIST subset shipped in the package (no download)."""
    return EmbeddedFashionMNISTDataModule(batch_size=batch_size, num_workers=0, **kwargs)


def fast_callback(**kwargs: Any) -> RLPruneCallback:
    """Few, cheap agent updates and two probes of one training batch per cycle, pruning at epoch 1. The default
    `b=50` with `min_keep=0.5` cuts every layer to about half: a tiny model's score on one check batch moves by
    several points with a training batch, so only a large `b` makes the level certain. Keyword arguments override
    the callback's arguments or its `RLOptions` fields."""
    arguments: dict[str, Any] = {"b": 50.0, "layers": LAYERS["vgg11"], "start_epoch": 1, "min_keep": 0.5}
    options: dict[str, Any] = {
        "num_samples": 4,
        "agent_updates": 2,
        "reward_batches": 1,
        "check_batches": 1,
        "probes": 2,
        "probe_batches": 1,
    }
    for key, value in kwargs.items():
        (options if key in RL_OPTIONS else arguments)[key] = value
    return RLPruneCallback(**arguments, options=RLOptions(**options))


RL_OPTIONS = {f.name for f in dataclasses.fields(RLOptions)}


#: A quiet CPU Trainer on a few batches (`fast_trainer`; the user-module tests build the same under `lightning`).
FAST_TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 3,
    "limit_train_batches": 3,
    "limit_val_batches": 1,
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
}


def fast_trainer(root: Path, callbacks: list[Callback] | None = None, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer on a few batches; keyword arguments override the defaults."""
    options = {**FAST_TRAINER, "default_root_dir": str(root), **kwargs}
    return pl.Trainer(callbacks=callbacks or [], **options)


def steps(module: ImageClassifier) -> list:
    """The module's pruning plan as plain data."""
    return module.plan.state()["steps"]


def training_state(trainer: pl.Trainer, module: ImageClassifier) -> dict[str, Any]:
    """A copy of what a pruning step and the training after it change: the module's tensors (parameters and
    buffers, with their shapes), its plan, the parameters the optimizer holds, its state and hyperparameters, and
    the LR schedulers' state."""
    optimizer = trainer.optimizers[0]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {
        "tensors": {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)},
        "plan": copy.deepcopy(steps(module)),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "optimizes_every_parameter": held == {id(p) for p in module.parameters()},
        "schedulers": [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
    }


def same(a: Any, b: Any) -> bool:
    """Exact equality of nested dicts, lists and tensors (dtype, shape and values)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (
            torch.is_tensor(a)
            and torch.is_tensor(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class AfterPruning(Callback):
    """Snapshots the pruned layers' weights at the start of epoch `epoch`, right after RLPruneCallback's cut
    (list it after the pruning callback)."""

    def __init__(self, layers: list[str], epoch: int) -> None:
        self.layers, self.epoch = layers, epoch
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: ImageClassifier) -> None:
        if trainer.current_epoch == self.epoch:
            self.weights = {n: pl_module.model.get_submodule(n).weight.detach().clone() for n in self.layers}


def check_pruned_and_trained(
    trainer: pl.Trainer, module: ImageClassifier, sizes: dict[str, int], snapshot: AfterPruning
) -> None:
    """Every layer of `sizes` lost filters, training changed it after the last cut, the optimizer holds every
    trainable parameter, and the output shape is unchanged."""
    assert [s[0] for s in steps(module)] == list(sizes)
    for layer, size in sizes.items():
        weight = module.model.get_submodule(layer).weight.detach()
        assert weight.shape[0] < size
        assert weight.shape == snapshot.weights[layer].shape
        assert not torch.equal(weight, snapshot.weights[layer]), f"{layer} stopped training after the cut"
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in module.parameters() if p.requires_grad)
    module.eval()
    with torch.no_grad():
        x = torch.randn(2, 1, 32, 32, dtype=next(module.parameters()).dtype)
        assert module(x).shape == (2, 10)


# -- runs shared by the checkpoint and distributed tests (also run as subprocesses: see the bottom) ----------

#: The pruning run that the checkpoint tests interrupt and resume: both layers cut at the start of epoch 1 of 3.
RESUME_LAYERS = LAYERS["vgg11"]

#: `b` of that run: far above any drop a tiny model can measure on one batch.
RESUME_B = 50.0


def resume_run(root: Path, ckpt_path: str | None = None, loggers: list | None = None) -> tuple[ImageClassifier, Any]:
    """Seeded run of a tiny VGG that prunes two layers mid-fit and saves a checkpoint every epoch
    (`epoch=N.ckpt` and `last.ckpt` under `root/ckpt`). Returns the module and the callback."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    pl.seed_everything(0)
    module = tiny_classifier()
    callback = fast_callback(b=RESUME_B, layers=RESUME_LAYERS)
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", filename="{epoch}", save_top_k=-1, save_last=True)
    trainer = fast_trainer(
        root, [callback, checkpoints], enable_checkpointing=True, logger=loggers or False, limit_train_batches=2
    )
    trainer.fit(module, datamodule=tiny_data(), ckpt_path=ckpt_path)
    return module, callback


class PauseInSearch(Logger):
    """A logger that, once the agent of layer `layer_index` reports an update, touches `marker` and waits
    (so that a test can kill the process while that agent is training)."""

    def __init__(self, marker: Path, layer_index: int) -> None:
        super().__init__()
        self.marker, self.layer_index = marker, layer_index

    @property
    def name(self) -> str:
        return "pause"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if metrics.get("prune/layer_index") == self.layer_index:
            self.marker.touch()
            time.sleep(120)


class WriteRankResult(Callback):
    """At the end of fit, each rank writes its pruning plan and parameter checksum to `root/rank<N>.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def on_fit_end(self, trainer: pl.Trainer, pl_module: ImageClassifier) -> None:
        result = {"steps": steps(pl_module), "checksum": param_checksum(pl_module)}
        (self.root / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def param_checksum(module: torch.nn.Module) -> float:
    """Sum of every parameter in float64."""
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def distributed_run(root: Path, strategy: str, devices: int) -> tuple[ImageClassifier, pl.Trainer]:
    """The run the DDP tests compare: two layers cut mid-fit, their orders learned on masks whose scores the ranks
    share and the level chosen on probes whose held-out batches they share; every rank reads all the training data
    in the same order (no distributed sampler), so any number of processes computes the same updates."""
    pl.seed_everything(0)
    module = tiny_classifier()
    callback = fast_callback(b=50.0)
    trainer = fast_trainer(
        root,
        [callback, WriteRankResult(root)],
        strategy=strategy,
        devices=devices,
        use_distributed_sampler=False,
        limit_train_batches=2,
    )
    pl.seed_everything(0)  # DDP's setup re-seeds from the global seed: do the same for one process
    trainer.fit(module, datamodule=tiny_data())
    return module, trainer


def main(argv: list[str]) -> None:
    """Subprocess entry: `helpers.py kill ROOT THREADS` or `helpers.py ddp|ddp_spawn ROOT`."""
    mode, root = argv[0], Path(argv[1])
    if mode == "kill":
        torch.set_num_threads(int(argv[2]))
        resume_run(root, loggers=[PauseInSearch(root / "searching", layer_index=1)])
    else:
        module, trainer = distributed_run(root, mode, devices=2)
        if trainer.global_rank == 0:  # with ddp_spawn: the main process, which reloaded the workers' weights
            (root / "main.json").write_text(json.dumps({"steps": steps(module), "checksum": param_checksum(module)}))


if __name__ == "__main__":
    main(sys.argv[1:])
