"""The per-layer routers of a mixture, and the one number that says whether they can learn.

A router is one linear map from the residual stream to a score per expert. What it
*reads* matters as much as the map. The residual stream of a trained trunk is large:
at d_model 128 its norm is in the hundreds, so even a router whose weights start at
std 0.02 produces scores that differ by several units, and its softmax is nearly
one-hot before any training. A saturated softmax has almost no gradient (the top-1
straight-through gradient scales with 1 - p), so the routing stays where the random
initialisation put it.

The fix is the one every transformer block already uses: normalise the input.
`router_input="layernorm"` (the default) feeds the router LayerNorm(x) *without* a
learned gain or bias, because a gain and bias in front of a linear map are redundant:
W (g * x_hat + b) = (W diag g) x_hat + W b, which the linear map can learn itself. So
the fix adds no parameters and no state, and a router file records which input its
weights were trained on (`router_input` in its metadata; files from before the option
say nothing and read the raw stream).

`router_entropy` measures the symptom: the mean entropy of the routers' probabilities.
A router that can still learn starts near ln(n_experts) (uniform); the saturated one
starts near 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from modularforge.model.init import normal_init_

__all__ = [
    "ROUTER_INIT_STD",
    "ROUTER_INPUTS",
    "SUPPORTED_TOP_K",
    "Router",
    "UniformRouter",
    "check_router_input",
    "router_entropy",
]

#: The routing widths this package supports: Switch-style top-1 and Mixtral-style top-2.
SUPPORTED_TOP_K = (1, 2)
#: Standard deviation of the router's initial weights: near-uniform probabilities on a
#: normalised input, but not exactly equal, so that experts are not tied.
ROUTER_INIT_STD = 0.02
#: What a router reads: the LayerNorm-ed residual stream (default) or the raw stream.
ROUTER_INPUTS = ("layernorm", "raw")
RouterInput = Literal["layernorm", "raw"]


def check_top_k(top_k: object, n_experts: int) -> int:
    """`top_k` as an int the mixture supports, or a ValueError that names it."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k not in SUPPORTED_TOP_K:
        raise ValueError(f"top_k must be one of {SUPPORTED_TOP_K}, got {top_k!r}")
    if top_k > n_experts:
        raise ValueError(f"top_k ({top_k}) cannot exceed the number of experts ({n_experts})")
    return top_k


def check_router_input(router_input: object) -> RouterInput:
    """`router_input` if it is one of `ROUTER_INPUTS`, else a ValueError that lists them."""
    if router_input not in ROUTER_INPUTS:
        raise ValueError(f"router_input must be one of {ROUTER_INPUTS}, got {router_input!r}")
    return cast(RouterInput, router_input)


class RouterScores(nn.Module):
    """Linear(d_model, n_experts) on the (optionally normalised) residual stream."""

    def __init__(self, d_model: int, n_experts: int, router_input: RouterInput) -> None:
        super().__init__()
        if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"n_experts must be an int >= 1, got {n_experts!r}")
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be an int >= 1, got {d_model!r}")
        self.n_experts = n_experts
        self.router_input: RouterInput = check_router_input(router_input)
        self.linear = nn.Linear(d_model, n_experts)
        normal_init_(self.linear.weight, std=ROUTER_INIT_STD)
        nn.init.zeros_(self.linear.bias)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Residual stream (B, T, C) -> softmax over experts (B, T, E)."""
        if self.router_input == "layernorm":
            x = F.layer_norm(x, (x.shape[-1],))  # no gain or bias: the linear map absorbs them
        return torch.softmax(self.linear(x), dim=-1)


class Router(RouterScores):
    """One layer's router: scores, softmax, top-k, renormalised weights."""

    def __init__(
        self, d_model: int, n_experts: int, top_k: int, router_input: RouterInput = "layernorm"
    ) -> None:
        super().__init__(d_model, n_experts, router_input)
        self.top_k = check_top_k(top_k, n_experts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual stream (B, T, C) -> weights (B, T, k), indices (B, T, k), probs (B, T, E).

        k = 1 uses the straight-through gate (see `modularforge.mixture.moe`).
        """
        probs = self.probabilities(x)  # (B, T, E)
        # A stable descending sort breaks ties towards the lowest expert index;
        # torch.topk makes no promise about ties.
        order = torch.sort(probs.detach(), dim=-1, descending=True, stable=True).indices
        indices = order[..., : self.top_k]  # (B, T, k)
        chosen = probs.gather(-1, indices)  # (B, T, k)
        if self.top_k == 1:
            weights = chosen / chosen.detach()  # value exactly 1, gradient of log p
        else:
            weights = chosen / chosen.sum(dim=-1, keepdim=True)  # (B, T, k), sums to 1
        return weights, indices, probs


class UniformRouter(nn.Module):
    """Every expert on every token with weight 1/n: the untrained average a router must beat.

    It returns what `Router` returns, with k = n_experts, so the mixture runs it
    unchanged. It has no parameters: there is nothing to train or to save.
    """

    def __init__(self, n_experts: int) -> None:
        super().__init__()
        if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"n_experts must be an int >= 1, got {n_experts!r}")
        self.n_experts = n_experts
        self.top_k = n_experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual stream (B, T, C) -> weights (B, T, E), indices (B, T, E), probs (B, T, E)."""
        batch, time = x.shape[:2]
        probs = x.new_full((batch, time, self.n_experts), 1.0 / self.n_experts)  # (B, T, E)
        indices = torch.arange(self.n_experts, device=x.device).expand(batch, time, -1)
        return probs, indices, probs


@torch.no_grad()
def router_entropy(moe: nn.Module, batches: Iterable[torch.Tensor]) -> list[float]:
    """Per layer, the mean entropy (nats) of the routers' probabilities over `batches` of ids.

    ln(n_experts) is a uniform router; 0 is one that has already decided. Read in eval
    mode through a forward hook, so the mixture's own forward is what is measured.
    """
    routers = list(moe.routers)
    totals = [0.0] * len(routers)
    count = 0
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        router.register_forward_hook(lambda _m, _i, out, idx=idx: captured.__setitem__(idx, out[2]))
        for idx, router in enumerate(routers)
    ]
    was_training = moe.training
    moe.eval()
    try:
        device = next(moe.parameters()).device
        for input_ids in batches:
            moe(input_ids.to(device))
            for idx, probs in captured.items():
                entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)  # (B, T)
                totals[idx] += float(entropy.sum())
            count += input_ids.numel()
    finally:
        for hook in hooks:
            hook.remove()
        moe.train(was_training)
    if count == 0:
        raise ValueError("router_entropy saw no tokens; pass at least one batch of token ids")
    return [total / count for total in totals]


def uniform_entropy(n_experts: int) -> float:
    """ln(n_experts): the entropy of a router that has not decided anything yet."""
    return math.log(n_experts)
