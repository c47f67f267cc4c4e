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
            ValueError: the object is not a pruning plan of a version this package reads.
        """
        if not isinstance(state, dict) or state.get("version") != VERSION:
            raise ValueError(
                f"Not a lightning-prune pruning plan (version {VERSION}): got {type(state).__name__} "
                f"{state if not isinstance(state, dict) else {k: state[k] for k in list(state)[:3]}}"
            )
        steps = state.get("steps")
        if not isinstance(steps, list) or not all(
            isinstance(s, (list, tuple)) and len(s) == 3 and isinstance(s[0], str) for s in steps
        ):
            raise ValueError("Corrupt pruning plan: `steps` must be a list of [layer name, is_out, indices]")
        return cls(input_shape=[int(d) for d in state["input_shape"]], steps=[list(s) for s in steps])

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
