"""The settings a user rarely changes, grouped so that the callbacks' constructors stay short.

`RLPruneCallback(b=1.0, options=RLOptions(probe_batches=200))`, or in a LightningCLI config::

    - class_path: lightning_prune.RLPruneCallback
      init_args:
        b: 1.0
        options:
          probe_batches: 200

Each options object validates itself when it is built, so a bad value fails before any training, with a message
naming the field. The checks of the callbacks' own arguments use the same helpers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune.engine.importance import CRITERIA
from lightning_prune.engine.metric import Unpack
from lightning_prune.search.reward import REWARDS


def is_int(value: Any) -> bool:
    """An int, not a bool (True would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool nor a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_min_keep(value: Any) -> bool:
    """A valid `min_keep`: a count (int >= 1) or a fraction (float in (0, 1)); a fraction of 1 would keep every
    filter."""
    return (is_int(value) and value >= 1) or (isinstance(value, float) and 0 < value < 1)


def check(owner: str, checks: Iterable[tuple[bool, str]]) -> None:
    """Raise the first failed check's message, prefixed by `owner`."""
    for ok, message in checks:
        if not ok:
            raise MisconfigurationException(f"{owner}: {message}")


def _counts(options: Any, names: Iterable[str], least: int = 1) -> list[tuple[bool, str]]:
    """Each named field is an int >= `least`."""
    return [
        (is_int(getattr(options, n)) and getattr(options, n) >= least, f"options.{n}={getattr(options, n)!r} must be "
         f">= {least} (an int)") for n in names
    ]  # fmt: skip


def _numbers(options: Any, names: Iterable[str]) -> None:
    """Each named field is a number, checked before the range checks (which would fail with a bare TypeError)."""
    wrong = [f"options.{n}={getattr(options, n)!r}" for n in names if not is_number(getattr(options, n))]
    check(type(options).__name__, [(not wrong, f"{', '.join(wrong)} must be a number (an int or a float)")])


@dataclass
class ScoringOptions:
    """What both callbacks share: which batches are scored and how they are read. The callbacks read their batches
    from the datasets themselves, so the Trainer's `limit_val_batches` does not limit them: `reward_batches` (and
    `check_batches`) do.

    Args:
        num_samples: candidates sampled and scored per update of the search (K: masks of an agent, or
            distributions).
        reward_batches: validation batches each candidate is scored on (the first ones of the split, in order).
        calibration_batches: training batches on which the BatchNorm layers after a cut re-estimate their
            statistics, for each candidate and after each cut (0: never).
        unpack_batch: splits a batch into `(inputs, target)` (None: the batch is that pair).
        ignore_index: target value the default metric does not count (e.g. a segmentation's void label).
    """

    num_samples: int = 8
    reward_batches: int = 4
    calibration_batches: int = 4
    unpack_batch: Unpack | None = None
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        check(type(self).__name__, [
            *_counts(self, ["num_samples", "reward_batches"]),
            *_counts(self, ["calibration_batches"], least=0),
            (self.unpack_batch is None or callable(self.unpack_batch),
             f"options.unpack_batch={self.unpack_batch!r} must be callable"),
            (self.ignore_index is None or is_int(self.ignore_index),
             f"options.ignore_index={self.ignore_index!r} must be an int or None"),
        ])  # fmt: skip


@dataclass
class RLOptions(ScoringOptions):
    """The agents' search (`RLPruneCallback`), beyond the scoring settings above.

    Args:
        agent_updates: policy-gradient updates per layer.
        agent_lr: Adam learning rate of the agents.
        entropy_coef: entropy bonus weight in the agents' loss.
        reward: "huang" (logarithmic efficiency term) or "yang" (linear, N / kept).
        init_keep: keep probability of every filter before the first update.
        l1_prior: weight of the filters' standardised L1 norms in the agents' keep logits (0: the ranking is
            learned from the rewards alone; > 0: the agent starts from the L1 ranking and its updates learn where
            to depart from it).
        probes: levels the controller measures before it chooses one (each a cut, a training cycle and a held-out
            reading, the first also a cycle four times as long; undone afterwards).
        probe_batches: training steps of a probe's cycle (None: one epoch's training batches).
        check_batches: validation batches, after the reward batches, on which the probes' and the final drop
            are measured against the unpruned network (None: all the rest of the validation split). The search
            never scores them.
        cache: score candidates by running only the part of the network after the cached prefix.
        max_cache_mb: memory bound of that cache; above it the full forward is used.
    """

    agent_updates: int = 3
    agent_lr: float = 0.01
    entropy_coef: float = 0.0
    reward: Literal["huang", "yang"] = "huang"
    init_keep: float = 0.8
    l1_prior: float = 2.0
    probes: int = 3
    probe_batches: int | None = None
    check_batches: int | None = None
    cache: bool = True
    max_cache_mb: float = 1024.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _numbers(self, ["agent_lr", "entropy_coef", "init_keep", "l1_prior", "max_cache_mb"])
        check(type(self).__name__, [
            *_counts(self, ["agent_updates", "probes"]),
            (self.probe_batches is None or (is_int(self.probe_batches) and self.probe_batches >= 1),
             f"options.probe_batches={self.probe_batches!r} must be >= 1 (an int; None: one epoch's batches)"),
            (self.check_batches is None or (is_int(self.check_batches) and self.check_batches >= 1),
             f"options.check_batches={self.check_batches!r} must be >= 1 (an int; None: the rest of the split)"),
            (self.reward in REWARDS, f"options.reward={self.reward!r} is unknown: use one of {sorted(REWARDS)}"),
            (0 < self.init_keep < 1, f"options.init_keep={self.init_keep} must be in (0, 1)"),
            (self.l1_prior >= 0, f"options.l1_prior={self.l1_prior} must be >= 0 (0 turns the L1-norm prior off)"),
            (self.agent_lr > 0 and math.isfinite(self.agent_lr), f"options.agent_lr={self.agent_lr} must be > 0"),
            (self.entropy_coef >= 0, f"options.entropy_coef={self.entropy_coef} must be >= 0"),
            (self.max_cache_mb >= 0, f"options.max_cache_mb={self.max_cache_mb} must be >= 0"),
        ])  # fmt: skip


@dataclass
class DistributionOptions(ScoringOptions):
    """The distribution search (`DistributionPruneCallback`), beyond the scoring settings above.

    Args:
        criterion: filters removed inside a group: "l1" (smallest L1 norm) or "taylor" (smallest first-order
            Taylor `|w * grad|`, accumulated on `taylor_batches` training batches).
        alpha: weight of the MACs reduction in Q (>= 0).
        beta: weight of the params reduction in Q (>= 0).
        updates: distribution updates per step.
        elite_size: best samples kept (the distribution moves toward their mean).
        noise: std of the log-normal noise of a sample.
        epsilon: probability that a sample is uniformly random instead (first update), in [0, 1].
        epsilon_decay: epsilon's factor per update, in (0, 1].
        lr: fraction of the way toward the elites' mean per update, in (0, 1].
        clip: largest relative change of an entry of the distribution per update, in (0, 1).
        taylor_batches: training batches the Taylor criterion accumulates over.
    """

    reward_batches: int = 2
    criterion: Literal["l1", "taylor"] = "l1"
    alpha: float = 0.2
    beta: float = 0.0
    updates: int = 4
    elite_size: int = 4
    noise: float = 0.3
    epsilon: float = 0.3
    epsilon_decay: float = 0.9
    lr: float = 0.5
    clip: float = 0.2
    taylor_batches: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _numbers(self, ["alpha", "beta", "noise", "epsilon", "epsilon_decay", "lr", "clip"])
        check(type(self).__name__, [
            (self.criterion in CRITERIA, f"options.criterion={self.criterion!r} is unknown: use one of {CRITERIA}"),
            (self.alpha >= 0, f"options.alpha={self.alpha} must be >= 0 (weight of the MACs reduction in Q)"),
            (self.beta >= 0, f"options.beta={self.beta} must be >= 0 (weight of the params reduction in Q)"),
            *_counts(self, ["updates", "elite_size", "taylor_batches"]),
            (self.noise >= 0, f"options.noise={self.noise} must be >= 0"),
            (0 <= self.epsilon <= 1, f"options.epsilon={self.epsilon} must be in [0, 1] (a probability)"),
            (0 < self.epsilon_decay <= 1, f"options.epsilon_decay={self.epsilon_decay} must be in (0, 1]"),
            (0 < self.lr <= 1, f"options.lr={self.lr} must be in (0, 1]"),
            (0 < self.clip < 1, f"options.clip={self.clip} must be in (0, 1)"),
        ])  # fmt: skip
