"""The pruning history of a model as plain data: saved in checkpoints, replayed on load.

A plan is the input shape the model was traced with, the list of torch-pruning history steps
`[layer name, is_out_channels, removed indices]`, each in the index space current at that step, and the
unpruned convolutions' widths (compared before a replay; absent from plans saved before they were recorded).
Only strings, booleans and integers: checkpoints load with `torch.load(path, weights_only=True)`.

The plan of a LightningModule is kept in its state dict under `_extra_state` (what `nn.Module` calls a
module's extra state), so a checkpoint carries the pruned structure, and loading rebuilds the pruned shapes
before any weight is copied:
- a module with the `Prunable` mixin does this itself, in every loading path (`load_from_checkpoint`,
  `Trainer.fit(ckpt_path=...)`, a plain `load_state_dict`);
- any other module gets the same behaviour from `carry` (the pruning callbacks call it at setup), and
  `load_module(cls, path)` loads its checkpoints in a fresh process.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_prune.engine import surgery
from lightning_prune.engine.surgery import Step

VERSION = 1
#: The state-dict key of a module's extra state, where its plan is saved.
PLAN_KEY = "_extra_state"

M = TypeVar("M", bound=nn.Module)


@dataclass
class PruningPlan:
    """Input shape used for tracing, the ordered pruning steps applied to the model and the output widths of its
    convolutions before the first step (None: not recorded)."""

    input_shape: list[int]
    steps: list[Step] = field(default_factory=list)
    widths: dict[str, int] | None = None

    def state(self) -> dict[str, Any]:
        state = {
            "version": VERSION,
            "input_shape": list(self.input_shape),
            "steps": [[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in self.steps],
        }
        if self.widths is not None:
            state["widths"] = {str(k): int(v) for k, v in self.widths.items()}
        return state

    @classmethod
    def from_state(cls, state: Any) -> PruningPlan:
        """Validate and read a saved plan.

        Raises:
            ValueError: the object is not a pruning plan of a version this package reads, or it is corrupt.
        """
        if not isinstance(state, dict) or state.get("version") != VERSION:
            found = (
                f"a dict with keys {sorted(map(str, state))[:5]}" if isinstance(state, dict) else type(state).__name__
            )
            raise ValueError(
                f"Not a lightning-prune pruning plan (version {VERSION}): got {found}. Load a checkpoint saved by "
                "`lightning_prune.ImageClassifier` with this version of the package."
            )
        shape, steps = state.get("input_shape"), state.get("steps")
        if not (isinstance(shape, (list, tuple)) and len(shape) >= 2 and all(_is_int(d) and d > 0 for d in shape)):
            raise ValueError(f"Corrupt pruning plan: `input_shape` must be a list of positive ints, got {shape!r}")
        if not isinstance(steps, list) or not all(_is_step(s) for s in steps):
            bad = next((s for s in steps if not _is_step(s)), None) if isinstance(steps, list) else steps
            raise ValueError(
                f"Corrupt pruning plan: `steps` must be a list of [layer name, is_out, [channel indices]], got {bad!r}"
            )
        widths = state.get("widths")
        if widths is not None and not (
            isinstance(widths, dict) and all(isinstance(k, str) and _is_int(v) for k, v in widths.items())
        ):
            raise ValueError(f"Corrupt pruning plan: `widths` must map layer names to ints, got {widths!r}")
        steps = [[s[0], s[1], [int(i) for i in s[2]]] for s in steps]
        return cls(input_shape=[int(d) for d in shape], steps=steps, widths=widths)

    def pending(self, target: PruningPlan) -> list[Step]:
        """Steps of `target` that this plan has not applied yet.

        Raises:
            ValueError: this plan is not a prefix of `target` (the model was pruned differently).
        """
        mine, theirs = self.state()["steps"], target.state()["steps"]
        if theirs[: len(mine)] != mine:
            raise ValueError(
                f"The model was already pruned ({len(mine)} steps) differently from the saved plan "
                f"({len(theirs)} steps): load the checkpoint into a freshly built, unpruned model"
            )
        return theirs[len(mine) :]

    @property
    def layers(self) -> list[str]:
        return [name for name, _, _ in self.steps]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_step(step: Any) -> bool:
    return (
        isinstance(step, (list, tuple))
        and len(step) == 3
        and isinstance(step[0], str)
        and isinstance(step[1], bool)
        and isinstance(step[2], (list, tuple))
        and all(_is_int(i) for i in step[2])
    )


# -- a module's plan --------------------------------------------------------------------------------------------


def network_of(module: nn.Module) -> nn.Module:
    """The submodule a module's plan names layers in: `module.pruning_root` (e.g. "model"), else the module."""
    return module.get_submodule(getattr(module, "pruning_root", ""))


def plan_of(module: nn.Module) -> PruningPlan | None:
    """The plan of `module`, None before it is made prunable."""
    return module.__dict__.get("_pruning_plan")


def apply_state(module: nn.Module, state: Any) -> None:
    """Bring `module` to the saved plan `state`: replay the steps it lacks on its network, tried on a copy first
    (a plan of another network leaves the module untouched), then adopt the plan.

    Raises:
        ValueError: `state` is not a plan, or does not fit this network.
    """
    target = PruningPlan.from_state(state)
    current = plan_of(module) or PruningPlan(input_shape=target.input_shape)
    if current.input_shape[1:] != target.input_shape[1:]:
        raise ValueError(
            f"The checkpoint's model was traced with input shape {target.input_shape[1:]} but this module "
            f"expects {current.input_shape[1:]}: build it with the same input size (ImageClassifier: in_channels and "
            "image_size)"
        )
    todo = current.pending(target)
    if todo:
        network = network_of(module)
        check_widths(network, current.widths if current.steps else widths_of(network), target)
        replayed_state(network, todo, target.input_shape)
        surgery.replay(network, todo, surgery.example_input(network, target.input_shape))
    module.__dict__["_pruning_plan"] = target


def widths_of(network: nn.Module) -> dict[str, int]:
    """The output width of every convolution of `network`, by name."""
    return {name: m.out_channels for name, m in network.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def check_widths(network: nn.Module, widths: dict[str, int] | None, target: PruningPlan) -> None:
    """The widths the `target` plan was recorded on must be those of the network before its first step.

    Raises:
        ValueError: they differ (the network was built with other widths), naming the first layers that do.
    """
    if widths is None or target.widths is None:
        return  # a plan saved before widths were recorded
    differ = [
        f"{k}: checkpoint {v}, this model {widths.get(k)}" for k, v in target.widths.items() if widths.get(k) != v
    ]
    if differ:
        shown = "; ".join(differ[:5]) + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise ValueError(
            f"The checkpoint's pruning plan was recorded on a {type(network).__name__} of other widths ({shown}): "
            "build the module with the arguments it was saved with (e.g. its width) before loading it"
        )


def replayed_state(network: nn.Module, steps: list[Step], input_shape: list[int]) -> dict[str, torch.Tensor]:
    """State dict of a copy of `network` with `steps` applied.

    Raises:
        ValueError: a step does not fit this network.
    """
    model = copy.deepcopy(network)
    try:
        if steps:
            surgery.replay(model, steps, surgery.example_input(model, input_shape))
    except (ValueError, TypeError, IndexError, RuntimeError) as err:
        raise ValueError(
            f"The checkpoint's pruning plan does not fit this {type(network).__name__}: {err}. Load it into the "
            "network it was saved from."
        ) from err
    return model.state_dict()


class Prunable:
    """Mixin for a LightningModule whose checkpoints carry its pruning plan: with it,
    `MyModule.load_from_checkpoint(path)` rebuilds the pruned shapes in a fresh process.

    Example::

        class MyModule(Prunable, L.LightningModule): ...

    Set `pruning_root` to the name of the submodule the plan's layer names start from ("" for the module).
    """

    pruning_root: str = ""

    @property
    def plan(self) -> PruningPlan | None:
        """The pruning history applied to this module (None: never pruned nor loaded from a pruned checkpoint)."""
        return plan_of(self)

    @plan.setter
    def plan(self, plan: PruningPlan | None) -> None:
        self.__dict__["_pruning_plan"] = plan

    def get_extra_state(self) -> dict[str, Any] | None:
        plan = plan_of(self)
        return plan.state() if plan is not None else None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.setdefault(prefix + PLAN_KEY, None)  # saved before the mixin was added: an unpruned model
        super()._load_from_state_dict(state_dict, prefix, *args)

    def set_extra_state(self, state: Any) -> None:
        """Rebuild the saved pruned shapes before the weights are loaded (`load_state_dict` calls this first)."""
        if state is not None:
            apply_state(self, state)


def attach(module: nn.Module, input_shape: list[int]) -> PruningPlan:
    """Make `module` carry a plan traced with `input_shape` (kept if it has one), saved in its state dict and
    replayed by `load_state_dict` (see `carry`)."""
    carry(module)
    plan = plan_of(module)
    if plan is None:
        plan = PruningPlan(input_shape=list(input_shape))
        module.__dict__["_pruning_plan"] = plan
    return plan


def carry(module: nn.Module) -> None:
    """Make `module` save its plan (once it has one) in its state dict and replay a saved plan when its state dict
    is loaded: through the `Prunable` mixin, else through state-dict hooks on the instance."""
    if not isinstance(module, Prunable) and not module.__dict__.get("_plan_hooks"):
        module.register_state_dict_post_hook(_save_plan)
        module.register_load_state_dict_pre_hook(_load_plan)
        module.__dict__["_plan_hooks"] = True


def _save_plan(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    plan = plan_of(module)
    if plan is not None:
        state_dict[prefix + PLAN_KEY] = plan.state()


def _load_plan(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    state = state_dict.pop(prefix + PLAN_KEY, None)
    if state is not None:
        apply_state(module, state)


def load_module(cls: type[M], path: str | Path, **kwargs: Any) -> M:
    """Load a checkpoint of a pruned LightningModule of class `cls` in any process, with or without the
    `Prunable` mixin: the module is built from the checkpoint's hyper-parameters (and `kwargs`, as
    `load_from_checkpoint` takes them), its pruned shapes rebuilt, and its weights loaded (`weights_only=True`).
    """
    loader: Callable[..., M] = cls.load_from_checkpoint
    if not issubclass(cls, Prunable):
        loader = type(cls.__name__, (Prunable, cls), {"__module__": cls.__module__}).load_from_checkpoint
    kwargs.setdefault("map_location", "cpu")
    return loader(path, weights_only=True, **kwargs)


def prune(module: nn.Module, name: str, idxs: list[int], graph: Any = None, optimizers: list | tuple = ()) -> Step:
    """Physically remove output channels `idxs` of layer `name` of the module's network (and every coupled
    tensor), with `optimizers` following the new parameters, and record the step in the module's plan.

    Raises:
        ValueError: the module has no plan (`attach` it first) or the step does not fit.
    """
    plan = plan_of(module)
    if plan is None:
        raise ValueError(f"{type(module).__name__} has no pruning plan: call `plan.attach` first")
    network = network_of(module)
    if not plan.steps and plan.widths is None:
        plan.widths = widths_of(network)
    if graph is None:
        graph = surgery.build_graph(network, surgery.example_input(network, plan.input_shape))
    step = surgery.prune_step(network, graph, [name, True, list(idxs)], optimizers)
    plan.steps.append(step)
    return step
