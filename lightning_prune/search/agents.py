"""Per-layer pruning agents (Huang et al. 2018) and their REINFORCE update.

An agent reads a layer's filter weights (one row per filter, standardised over the layer) and outputs a keep
probability per filter, optionally offset by a fixed prior: the filters' standardised L1 norms (Li et al. 2017),
so the agent starts from the rule-based ranking and learns where to depart from it. Each update samples K
keep/remove masks, receives one reward per mask, and takes a policy-gradient step with the mean reward of the K
samples as baseline (optionally with an entropy bonus).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def filter_features(weight: torch.Tensor) -> torch.Tensor:
    """Filters as rows (N x C*k*k), standardised over the whole layer, on the CPU in float32."""
    rows = weight.detach().flatten(1).float().cpu()
    return (rows - rows.mean()) / (rows.std(correction=0) + 1e-8)


def l1_prior(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Keep-logit offsets: `scale` times each filter's L1 norm, standardised over the layer (0 where all are equal)."""
    norms = weight.detach().flatten(1).abs().sum(1).float().cpu()
    return scale * (norms - norms.mean()) / (norms.std(correction=0) + 1e-8)


class LayerAgent(nn.Module):
    """Maps each filter's weights to its keep probability.

    Args:
        in_features: weights per filter (C*k*k).
        hidden: hidden units of the two-layer network.
        init_keep: keep probability of every filter before any update.
    """

    def __init__(self, in_features: int, hidden: int = 64, init_keep: float = 0.9) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, math.log(init_keep / (1 - init_keep)))

    def forward(self, features: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net(features).squeeze(-1)
        return torch.sigmoid(logits if prior is None else logits + prior)


def sample_masks(probs: torch.Tensor, k: int, generator: torch.Generator, min_keep: int) -> torch.Tensor:
    """K boolean keep-masks drawn from `probs`; where a draw keeps fewer than `min_keep`, the most likely
    removed filters are kept as well."""
    masks = torch.rand(k, probs.numel(), generator=generator) < probs.detach()
    order = torch.argsort(probs.detach(), descending=True)[:min_keep]
    short = masks.sum(1) < min_keep
    masks[short.nonzero().squeeze(1)[:, None], order[None, :]] = True
    return masks


def log_prob(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Log-probability of each mask (rows) under independent Bernoulli keep probabilities."""
    p = probs.clamp(1e-6, 1 - 1e-6)
    return torch.where(masks, p.log(), (1 - p).log()).sum(-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean Bernoulli entropy of the keep probabilities."""
    p = probs.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log()).mean()


def reinforce_loss(
    probs: torch.Tensor, masks: torch.Tensor, rewards: torch.Tensor, entropy_coef: float = 0.0
) -> torch.Tensor:
    """REINFORCE with the mean reward of the samples as baseline (advantages scaled by their spread)."""
    advantage = rewards - rewards.mean()
    if rewards.numel() > 1 and advantage.abs().max() > 0:
        advantage = advantage / (advantage.std() + 1e-8)
    return -(advantage * log_prob(probs, masks)).mean() - entropy_coef * entropy(probs)


class LayerSearch:
    """The agent of one layer with its optimizer and random stream: sample, update, save, resume.

    Args:
        weight: the layer's filter weights (N x C x k x k).
        min_keep: filters that every sample and the decision keep.
        seed: seeds the sampling stream and the agent's initial weights.
        lr: Adam learning rate of the agent.
        entropy_coef: weight of the entropy bonus.
        init_keep: initial keep probability.
        prior_scale: weight of the L1-norm prior in the keep logits (0: every filter starts at `init_keep`).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        min_keep: int,
        seed: int,
        lr: float = 0.05,
        entropy_coef: float = 0.0,
        init_keep: float = 0.9,
        prior_scale: float = 0.0,
    ) -> None:
        self.min_keep = min_keep
        self.entropy_coef = entropy_coef
        self.generator = torch.Generator().manual_seed(seed)
        # trainable tensors even when created in a validation hook (inference mode)
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            self.features = filter_features(weight)
            self.prior = l1_prior(weight, prior_scale)
            torch.manual_seed(seed)
            self.agent = LayerAgent(self.features.shape[1], init_keep=init_keep)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=lr)
        self.updates = 0

    def probs(self) -> torch.Tensor:
        with torch.no_grad():
            return self.agent(self.features, self.prior)

    def sample(self, k: int) -> torch.Tensor:
        return sample_masks(self.probs(), k, self.generator, self.min_keep)

    def update(self, masks: torch.Tensor, rewards: torch.Tensor) -> None:
        with torch.enable_grad(), torch.inference_mode(False):
            # clones: masks/rewards made in inference mode cannot be saved for backward
            loss = reinforce_loss(
                self.agent(self.features, self.prior), masks.clone(), rewards.float().clone(), self.entropy_coef
            )
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copied tensors): later updates do not change a state taken earlier."""
        return {
            "agent": copy.deepcopy(self.agent.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])
