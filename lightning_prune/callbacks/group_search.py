"""`GroupSearch`: one channel group's agent, trained on the held-out reward batches, and the order it gives."""

from __future__ import annotations

from typing import Any

import torch

from lightning_prune.callbacks.options import RLOptions
from lightning_prune.callbacks.session import Session
from lightning_prune.engine import data, scoring, surgery
from lightning_prune.io import tracking
from lightning_prune.search.agents import LayerSearch
from lightning_prune.search.reward import reward_values


class GroupSearch:
    """The agent of group `name` (Huang et al., 2018): each update samples `options.num_samples` keep/remove masks
    over the group's filters, scores each on the reward batches (the group's outputs masked, the BatchNorm layers
    after it re-estimated), and takes a REINFORCE step with the reward of each mask against `b`.

    Args:
        run: the step's session (network, scores shared across ranks).
        name: the group, by the name of its root convolution.
        floor: filters a mask keeps at least (`min_keep`).
        options: the search's settings.
        b: the drop, in points of the metric, the reward accepts.
        seed: seeds the agent and its samples.
    """

    def __init__(self, run: Session, name: str, floor: int, options: RLOptions, b: float, seed: int) -> None:
        self.run, self.name, self.options, self.b = run, name, options, b
        weight = run.network.get_submodule(name).weight
        self.agent = LayerSearch(
            weight, floor, seed=seed, lr=options.agent_lr, entropy_coef=options.entropy_coef,
            init_keep=options.init_keep, prior_scale=options.l1_prior,
        )  # fmt: skip
        self.width = weight.shape[0]

    def order(
        self, graph: Any, batches: list[data.Batch], calibration: list[torch.Tensor], position: tuple[int, int]
    ) -> list[int]:
        """The group's filters, least likely kept first (rank 0's agent, on every rank); `position` is the group's
        index and the number of groups, for progress and logs."""
        run, options = self.run, self.options
        maps = surgery.output_channel_maps(run.network, graph, self.name)
        scorer = scoring.CandidateScorer(
            run.network, maps, batches, run.context, options.cache, options.max_cache_mb, calibration=calibration,
            score=run.callback.score,
        )  # fmt: skip
        with scorer, tracking.SearchTracker(run.trainer, self.name, *position, options.agent_updates) as track:
            p_star = scorer.accuracy()
            for update in range(options.agent_updates):
                masks = self.agent.sample(options.num_samples)
                scores = run.shared(lambda i, m=masks: scorer.accuracy(m[i]), len(masks), self.name)
                rewards = reward_values(options.reward, scores, masks.sum(1).tolist(), self.width, p_star, self.b)
                self.agent.update(masks, rewards)
                track.update(update, rewards, self.agent.probs())
        probs = run.trainer.strategy.broadcast(self.agent.probs(), src=0)
        return torch.argsort(probs, stable=True).tolist()
