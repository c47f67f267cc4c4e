from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune.cli import main

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = REPO.parent / "shared" / "data" / "fashion-mnist"
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"no Fashion-MNIST at {FASHION_MNIST}")


def test_quickstart_prunes_within_budget(quickstart):
    """Slow (about a minute): the quickstart config end to end, in a subprocess."""
    assert quickstart.process.returncode == 0, quickstart.process.stderr[-3000:]
    summary = quickstart.summary
    assert summary is not None, "pruning_summary.json was not written"
    base, final = summary["baseline"], summary["final"]
    outcome = f"summary: {summary}"
    assert len(summary["layers"]) == 8
    assert 1 - final["macs"] / base["macs"] >= 0.30, outcome
    assert final["val_acc"] >= base["val_acc"] - summary["b"], outcome
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
    args = ["fit", "--config", "configs/vgg16_fashion_mnist_prune.yaml", "--trainer.max_epochs", "1"]
    with pytest.raises(MisconfigurationException, match="the schedule needs max_epochs >= 23"):
        main([*args, "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])


CONFIGS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("configs/*.yaml"), *REPO.glob("examples/*.yaml")])


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: lightning_prune.data." in printed
    if "prune" in Path(config).stem or "quickstart" in config or "cifar10" in config:
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
