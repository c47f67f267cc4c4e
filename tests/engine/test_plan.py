"""Tests of `lightning_prune.engine.plan`: plain-data state, validation of saved plans, and pending steps."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_prune.engine import surgery
from lightning_prune.engine.plan import PLAN_KEY, VERSION, Prunable, PruningPlan, attach, carry, plan_of, prune
from lightning_prune.zoo.models import build_model


def _recorded_plan() -> PruningPlan:
    """A plan whose steps come straight from torch-pruning's history (as `ImageClassifier.prune` records them)."""
    model = build_model("resnet20", num_classes=10, in_channels=1, width=0.25)
    plan = PruningPlan(input_shape=[1, 1, 32, 32])
    inputs = surgery.example_input(model, plan.input_shape)
    graph = surgery.build_graph(model, inputs)
    for step in (["conv1", True, [2]], ["layer2.0.conv1", True, [0, 5, 3]]):
        plan.steps.append(surgery.prune_step(model, graph, step))
    return plan


def test_state_is_plain_data_loadable_with_weights_only(tmp_path) -> None:
    plan = _recorded_plan()
    state = plan.state()
    assert state == {
        "version": VERSION,
        "input_shape": [1, 1, 32, 32],
        "steps": [["conv1", True, [2]], ["layer2.0.conv1", True, [0, 3, 5]]],
    }
    torch.save(state, tmp_path / "plan.pt")
    loaded = torch.load(tmp_path / "plan.pt", weights_only=True)
    assert loaded == state
    restored = PruningPlan.from_state(loaded)
    assert restored == PruningPlan.from_state(state)
    assert restored.state() == state
    assert restored.layers == ["conv1", "layer2.0.conv1"]


def _valid() -> dict:
    return {"version": VERSION, "input_shape": [1, 3, 32, 32], "steps": [["features.0", True, [1, 2]]]}


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (None, "Not a lightning-prune pruning plan"),
        ([1, 2, 3], "Not a lightning-prune pruning plan"),
        ({"weight": torch.zeros(2)}, "keys \\['weight'\\]"),
        ({**_valid(), "version": VERSION + 1}, "Not a lightning-prune pruning plan"),
        ({**_valid(), "input_shape": None}, "input_shape"),
        ({**_valid(), "input_shape": [1, 3, "32", 32]}, "input_shape"),
        ({**_valid(), "input_shape": [1, 3, 0, 32]}, "input_shape"),
        ({**_valid(), "steps": "features.0"}, "steps"),
        ({**_valid(), "steps": [["features.0", True]]}, "steps"),
        ({**_valid(), "steps": [[3, True, [1]]]}, "steps"),
        ({**_valid(), "steps": [["features.0", "yes", [1]]]}, "steps"),
        ({**_valid(), "steps": [["features.0", True, [1.5]]]}, "steps"),
        ({**_valid(), "steps": [["features.0", True, "12"]]}, "steps"),
    ],
)
def test_from_state_rejects_garbage(state, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PruningPlan.from_state(state)


def test_from_state_accepts_tuples() -> None:
    state = {"version": VERSION, "input_shape": (1, 3, 32, 32), "steps": [("a", True, (3, 1))]}
    plan = PruningPlan.from_state(state)
    assert plan.input_shape == [1, 3, 32, 32] and plan.steps == [["a", True, [3, 1]]]


def test_pending_returns_missing_steps_and_raises_on_divergence() -> None:
    full = PruningPlan([1, 3, 32, 32], [["a", True, [1]], ["b", True, [0, 2]], ["c", True, [5]]])
    assert PruningPlan([1, 3, 32, 32]).pending(full) == full.state()["steps"]
    assert PruningPlan([1, 3, 32, 32], [["a", True, [1]]]).pending(full) == [["b", True, [0, 2]], ["c", True, [5]]]
    assert full.pending(full) == []
    for diverged in ([["a", True, [2]]], [["b", True, [0, 2]]], full.steps + [["d", True, [0]]]):
        with pytest.raises(ValueError, match="freshly built, unpruned model"):
            PruningPlan([1, 3, 32, 32], diverged).pending(full)


class _Net(pl.LightningModule):
    """A user's module without the mixin."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, width, 3), nn.Conv2d(width, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


class _PrunableNet(Prunable, _Net):
    """The same module after the user added the mixin."""


def test_a_dense_checkpoint_saved_before_the_mixin_was_added_loads_as_unpruned(tmp_path) -> None:
    dense = _Net()
    torch.save({"state_dict": dense.state_dict(), "pytorch-lightning_version": pl.__version__}, tmp_path / "d.ckpt")
    loaded = _PrunableNet.load_from_checkpoint(tmp_path / "d.ckpt", weights_only=True)
    assert loaded.plan is None and torch.equal(loaded.conv1.weight, dense.conv1.weight)


def _pruned_state(cls: type[_Net]) -> dict:
    net = cls()
    attach(net, [1, 3, 8, 8])
    prune(net, "conv1", [0, 1])
    return net.state_dict()


@pytest.mark.parametrize("cls", [_Net, _PrunableNet])
def test_a_plan_recorded_on_other_widths_names_them_and_leaves_the_module_untouched(cls: type[_Net]) -> None:
    state = _pruned_state(cls)
    assert state[PLAN_KEY]["widths"] == {"conv1": 8, "conv2": 4}
    wider = cls(width=16)
    carry(wider)
    before = copy.deepcopy(wider.state_dict())
    with pytest.raises(ValueError, match="other widths \\(conv1: checkpoint 8, this model 16\\)"):
        wider.load_state_dict(state)
    assert plan_of(wider) is None and same_tensors(wider.state_dict(), before)


def test_a_plan_saved_without_widths_still_loads() -> None:
    state = _pruned_state(_PrunableNet)
    del state[PLAN_KEY]["widths"]
    net = _PrunableNet()
    net.load_state_dict(state)
    assert net.conv1.out_channels == 6 and net.plan.widths is None


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
