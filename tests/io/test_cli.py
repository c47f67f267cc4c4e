from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.engine import plan
from lightning_prune.io.cli import main

REPO = Path(__file__).resolve().parents[2]
FASHION_MNIST = REPO.parent / "shared" / "data" / "fashion-mnist"
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"no Fashion-MNIST at {FASHION_MNIST}")


def test_quickstart_prunes_within_budget(quickstart):
    """Slow (about a minute): the quickstart config end to end, in a subprocess, on less compute (conftest's
    `QUICKSTART_OVERRIDES`). Three probes measure what levels cost, the level predicted within b is cut; the
    shipped dense network is pruned and its held-out score ends within b + 0.3 of the dense one's."""
    assert quickstart.process.returncode == 0, quickstart.process.stderr[-3000:]
    summary = quickstart.summary
    assert summary is not None, "pruning_summary.json was not written"
    base, final = summary["baseline"], summary["final"]
    outcome = f"summary: {summary}"
    assert [len(p["readings"]) for p in summary["probes"]] == [2, 1, 1], outcome
    level = summary["level"]
    assert level["predicted"] + level["margin"] <= summary["b"] + 1e-9 and level["ratio"] > 0, outcome
    assert final["macs"] < base["macs"] and final["params"] < base["params"], outcome
    assert final["check"] >= base["check"] - summary["b"] - 0.3, outcome  # the quickstart's promise
    assert final["val_acc"] > 30.0, outcome  # chance is 10%
    assert (quickstart.log_dir / "config.yaml").is_file()
    assert quickstart.checkpoint is not None


@needs_fashion_mnist
def test_fashion_mnist_config_runs(run_cli, tmp_path):
    """Slow (about 20 s): the dense Fashion-MNIST config on the shared data, one short epoch."""
    process = run_cli(
        "fit",
        "--config",
        "configs/vgg16_fashion_mnist.yaml",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "20",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert list(tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt"))


@needs_fashion_mnist
def test_pruning_config_refuses_too_few_epochs(tmp_path):
    config = "configs/vgg16_fashion_mnist_prune.yaml"
    callbacks = yaml.safe_load((REPO / config).read_text())["trainer"]["callbacks"]
    (prune,) = [c["init_args"] for c in callbacks if c["class_path"] == "lightning_prune.RLPruneCallback"]
    needed = prune["start_epoch"] + 1  # the pruning epoch and one of fine-tuning
    args = ["fit", "--config", config, "--trainer.max_epochs", "1"]
    with pytest.raises(MisconfigurationException, match=f"the schedule needs max_epochs >= {needed}"):
        main([*args, "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])


CONFIGS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("configs/*.yaml"), *REPO.glob("examples/*.yaml")])


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: lightning_prune.data." in printed
    if "prune" in Path(config).stem or "quickstart" in config and "dense" not in config or "cifar10" in config:
        assert "class_path: lightning_prune.RLPruneCallback" in printed


def test_help_names_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "export", "report"):
        assert name in out
    assert "predict" not in out


def test_tool_without_checkpoint_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report"])
    assert exit_info.value.code == 2
    assert "checkpoint" in capsys.readouterr().err


def _callback_config(tmp_path: Path, init_args: str) -> str:
    """A fit config whose RLPruneCallback has `init_args` (a YAML mapping)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n  logger: false\n  callbacks:\n    - class_path: lightning_prune.RLPruneCallback\n"
        f"      init_args: {init_args}\n"
        "model:\n  model: vgg11\n  in_channels: 1\n  model_kwargs: {width: 0.125}\n"
        "data:\n  class_path: lightning_prune.zoo.data.EmbeddedFashionMNISTDataModule\n"
    )
    return str(config)


@pytest.mark.parametrize(
    ("init_args", "extra", "expected"),
    [
        ("{b: -1}", [], ["RLPruneCallback: b=-1"]),  # the callback's own message, from its constructor
        ("{options: {num_samples: 2.5}}", [], ["options", "num_samples", "2.5"]),  # the parser's, at the failed key
        ("{num_samples: 2}", [], ["num_samples", "is not accepted"]),  # an option given as an argument
        ("{options: {agent_updates: 0}}", [], ["RLOptions: options.agent_updates=0 must be >= 1"]),
        ("{layers: features.0}", [], ["layers", "features.0"]),
        ("{}", ["--model.lr", "-1"], ["lr must be positive"]),  # the model's constructor
        ("{}", ["--trainer.bogus", "1"], ["unrecognized arguments: --trainer.bogus"]),
    ],
)
def test_config_error_comes_first(tmp_path, capsys, monkeypatch, init_args, extra, expected):
    monkeypatch.setattr(sys, "argv", ["lightning-prune"])  # as run from a shell (pytest's own arguments warn)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", _callback_config(tmp_path, init_args), *extra])
    assert exit_info.value.code == 2
    *before, error, pointer = capsys.readouterr().err.splitlines()
    assert all("seed" in line.lower() for line in before), before  # Lightning's seeding notice, then the error
    assert error.startswith("lightning-prune fit: error: ")
    assert all(text in error for text in expected), error
    assert "lightning-prune fit --help" in pointer


def test_config_error_in_debug_mode_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    with pytest.raises(ValueError, match="Does not validate against any of the Union subtypes"):
        main(["fit", "--config", _callback_config(tmp_path, "{b: -1}")])


def test_missing_subcommand_is_one_error_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-prune"])
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith('lightning-prune: error: expected "subcommand"')


USER_MODULE = '''
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.engine.plan import Prunable


class TinyNet(pl.LightningModule):
    """A user's own classifier, unknown to lightning_prune."""

    def __init__(self, width: int = 8, num_classes: int = 3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RootedNet(Prunable, TinyNet):
    """The same with the `Prunable` mixin, its plan naming layers of `net`."""

    pruning_root = "net"
'''


@pytest.fixture(scope="module")
def user_checkpoints(tmp_path_factory):
    """Checkpoints of `USER_MODULE`'s two classes, each pruned by `engine.plan` and trained one step; the
    module file lies in the returned folder."""
    root = tmp_path_factory.mktemp("user")
    (root / "usernet.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root))
    try:
        usernet = importlib.import_module("usernet")
    finally:
        sys.path.remove(str(root))
    data = DataLoader(TensorDataset(torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))), batch_size=4)
    for cls, layer in ((usernet.TinyNet, "net.0"), (usernet.RootedNet, "0")):
        module = cls()
        plan.attach(module, [1, 1, 16, 16])
        plan.prune(module, layer, [0, 2, 5])
        trainer = pl.Trainer(
            accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
        )
        trainer.fit(module, data)
        trainer.save_checkpoint(root / f"{cls.__name__}.ckpt")
    del sys.modules["usernet"]  # the tests import it afresh, from the current folder
    return root


@pytest.mark.parametrize(("name", "layer"), [("TinyNet", "net.0"), ("RootedNet", "0")])
def test_report_and_export_of_a_user_module(user_checkpoints, monkeypatch, capsys, name, layer):
    monkeypatch.chdir(user_checkpoints)  # `usernet` imports from the current folder, as a user's own code would
    monkeypatch.setattr(sys, "path", list(sys.path))
    checkpoint, model_class = f"{name}.ckpt", f"usernet.{name}"
    assert main(["report", checkpoint, "--model-class", model_class, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == name
    assert [(lay["name"], lay["before"], lay["after"]) for lay in data["layers"]] == [(layer, 8, 5)]
    assert 0 < data["macs"]["after"] < data["macs"]["before"]
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt"), ("exported-program", "pt2")):
        assert main(["export", checkpoint, "--model-class", model_class, "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert f"Wrote {fmt} model to {name}.{suffix}" in out
        assert float(out.rsplit(": ", 1)[1]) < 1e-5  # the exported file's outputs match PyTorch's


@pytest.mark.parametrize(
    ("model_class", "expected"),
    [
        ("no_such_package.Net", "does not import"),
        ("torch.nn.NoSuchClass", "module 'torch.nn' has no 'NoSuchClass'"),
        ("torch.nn.Linear", "is not a LightningModule class"),
        ("ImageClassifier", "is not a dotted path"),
    ],
)
def test_bad_model_class_is_a_clear_error(tiny_checkpoints, capsys, model_class, expected):
    assert main(["report", str(tiny_checkpoints["pruned"]), "--model-class", model_class]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-prune report: error: --model-class {model_class!r}") and expected in err
    assert err.count("\n") == 1


def test_wrong_model_class_names_the_flag(user_checkpoints, tiny_checkpoints, monkeypatch, capsys):
    monkeypatch.chdir(user_checkpoints)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert (
        main(["export", str(tiny_checkpoints["pruned"]), "--format", "onnx", "--model-class", "usernet.TinyNet"]) == 2
    )
    err = capsys.readouterr().err
    assert "Cannot rebuild the TinyNet" in err and "--model-class" in err and err.count("\n") == 1
    assert main(["report", "TinyNet.ckpt"]) == 2
    assert "--model-class" in capsys.readouterr().err
