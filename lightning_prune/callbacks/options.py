"""The settings a user rarely changes, grouped so that the callbacks' constructors stay short.

`RLPruneCallback(b=1.0, options=RLOptions(probe_batches=200))`, or in a LightningCLI config::

    - class_path: lightning_prune.RLPruneCallback
      init_args:
        b: 1.0
        options:
          probe_batches: 200

Every field is validated by the callback it is passed to, when that callback is constructed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning_prune.engine.metric import Unpack


@dataclass
class ScoringOptions:
    """What both callbacks share: which batches are scored and how they are read. The callbacks read their batches
    from the datasets themselves, so the Trainer's `limit_val_batches` does not limit them: `reward_batches` (and
    `check_batches`) do.

    Args:
        reward_batches: validation batches each candidate is scored on (the first ones of the split, in order).
        calibration_batches: training batches on which the BatchNorm layers after a cut re-estimate their
            statistics, for each candidate and after each cut (0: never).
        unpack_batch: splits a batch into `(inputs, target)` (None: the batch is that pair).
        ignore_index: target value the default metric does not count (e.g. a segmentation's void label).
        monitor_mode: "max" or "min": whether higher or lower `monitor` is better.
    """

    reward_batches: int = 4
    calibration_batches: int = 4
    unpack_batch: Unpack | None = None
    ignore_index: int | None = None
    monitor_mode: Literal["max", "min"] = "max"


@dataclass
class RLOptions(ScoringOptions):
    """The agents' search (`RLPruneCallback`), beyond the scoring settings above.

    Args:
        num_samples: masks sampled per agent update (K).
        agent_updates: policy-gradient updates per layer.
        reward: "huang" (logarithmic efficiency term) or "yang" (linear, N / kept).
        agent_lr: Adam learning rate of the agents.
        entropy_coef: entropy bonus weight in the agents' loss.
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

    num_samples: int = 8
    agent_updates: int = 3
    reward: Literal["huang", "yang"] = "huang"
    agent_lr: float = 0.01
    entropy_coef: float = 0.0
    init_keep: float = 0.8
    l1_prior: float = 2.0
    probes: int = 3
    probe_batches: int | None = None
    check_batches: int | None = None
    cache: bool = True
    max_cache_mb: float = 1024.0


@dataclass
class DistributionOptions(ScoringOptions):
    """The distribution search (`DistributionPruneCallback`), beyond the scoring settings above.

    Args:
        criterion: filters removed inside a group: "l1" (smallest L1 norm) or "taylor" (smallest first-order
            Taylor `|w * grad|`, accumulated on `taylor_batches` training batches).
        alpha: weight of the MACs reduction in Q (>= 0).
        beta: weight of the params reduction in Q (>= 0).
        num_samples: distributions sampled per update.
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
    num_samples: int = 8
    updates: int = 4
    elite_size: int = 4
    noise: float = 0.3
    epsilon: float = 0.3
    epsilon_decay: float = 0.9
    lr: float = 0.5
    clip: float = 0.2
    taylor_batches: int = 2
