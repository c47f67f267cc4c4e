"""The pruning history of a model as plain data: saved in checkpoints, replayed on load.

A plan is the input shape the model was traced with and the list of torch-pruning history steps
`[layer name, is_out_channels, removed indices]`, each in the index space current at that step. Only
strings, booleans and integers: checkpoints load with `torch.load(path, weights_only=True)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_prune.surgery import Step

VERSION = 1


@dataclass
class PruningPlan:
    """Input shape used for tracing and the ordered pruning steps applied to the model."""

    input_shape: list[int]
    steps: list[Step] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "input_shape": list(self.input_shape),
            "steps": [[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in self.steps],
        }

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
        return cls(input_shape=[int(d) for d in shape], steps=[[s[0], s[1], [int(i) for i in s[2]]] for s in steps])

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
