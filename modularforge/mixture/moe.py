"""A mixture of experts: the frozen trunk, several trained experts, and a learned router per layer.

Phase 2 produces experts that were each trained alone against the same frozen
trunk. Here they are combined: in every layer a small router (one linear map from
the residual stream to one score per expert) picks the top-k experts for each
token, and the layer adds their weighted outputs to the residual stream:

    x = shared.apply_attention(x, i)
    x = x + sum_k w_k * experts[e_k][i].transform(x)

Routing decisions, gate weights and their gradients:

* probabilities: `probs = softmax(router(x))` over the experts;
* selection: the k most probable experts. Ties are broken towards the lowest
  expert index (a stable sort, so the choice is deterministic);
* weights, forward: the chosen probabilities renormalised to sum to 1. With
  k = 1 that is exactly 1, so the chosen expert runs at the scale it was trained
  at and a mixture that always picks expert j *is* the trainer model with expert
  j (tests check this bit for bit);
* weights, backward: for k >= 2 the renormalised weights are differentiable and
  their true gradient is used. For k = 1 the renormalised weight is the constant 1
  and its true gradient is zero: the router would never learn. We therefore use
  the straight-through gate `w = p / stop_gradient(p)`: its value is exactly 1,
  and its gradient is that of `log p`, so a chosen expert whose output lowers the
  loss has its probability raised, and one that raises the loss is pushed down
  until another expert wins the token. The Switch Transformer instead multiplies
  the output by `p` itself, which gives the same gradient direction (scaled by p)
  but also scales the expert's *output* by p (1/n_experts at a uniform start),
  which would damage experts that were trained with a weight of 1.

Computation: a production MoE dispatches each token only to its chosen experts.
Here experts are few and small, so every expert runs on every token and the
chosen outputs are gathered; the result equals the sparse definition exactly,
the cost is n_experts FFNs per layer instead of k.

Load balancing (Switch Transformer): with `aux_loss_weight > 0`, a training
forward stores `aux_loss_weight * mean over layers of n_experts * sum_i f_i P_i`
in `self.auxiliary_loss`, where f_i is the fraction of tokens whose top-1 choice
is expert i and P_i the mean router probability of expert i. It equals 1 for a
perfectly balanced router and n_experts when every token goes to one expert.
`modularforge.training.train.fit` adds it to the loss.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointError,
    SharedMismatchError,
    _load_checked_tensors,
    _read_checkpoint_header,
    check_format_version,
    expert_fingerprint,
    load_expert,
    load_shared,
    shared_fingerprint,
)
from modularforge.mixture.routers import (
    ROUTER_INIT_STD,
    ROUTER_INPUTS,
    SUPPORTED_TOP_K,
    Router,
    RouterInput,
    UniformRouter,
    check_router_input,
    check_top_k,
)
from modularforge.model.config import ModelConfig
from modularforge.model.inputs import check_attention_mask, check_input_ids
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import DomainData, eval_batches
from modularforge.training.train import TrainingHistory, TrainSettings, fit, resolve_device

__all__ = [
    "ROUTER_INIT_STD",
    "ROUTER_INPUTS",
    "SUPPORTED_TOP_K",
    "MixtureOfExperts",
    "Router",
    "UniformRouter",
    "load_mixture",
    "load_router",
    "routing_fractions",
    "save_router",
    "train_router",
    "uniform_mixture",
]


class MixtureOfExperts(nn.Module):
    """The frozen shared trunk + n experts, combined per layer and per token by routers."""

    def __init__(
        self,
        shared: SharedComponents,
        experts: Sequence[nn.ModuleList],
        top_k: int = 1,
        aux_loss_weight: float = 0.0,
        router_input: RouterInput = "layernorm",
    ) -> None:
        super().__init__()
        config = shared.config
        experts = list(experts)
        if not experts:
            raise ValueError("a mixture needs at least one expert, got none")
        for e, expert in enumerate(experts):
            if not isinstance(expert, nn.ModuleList) or len(expert) != config.n_layers:
                length = len(expert) if isinstance(expert, nn.ModuleList) else "not a ModuleList"
                raise ValueError(
                    f"expert {e} must be an nn.ModuleList with one FFN per layer "
                    f"({config.n_layers}), got {type(expert).__name__} ({length})"
                )
        check_top_k(top_k, len(experts))
        if (
            isinstance(aux_loss_weight, bool)
            or not isinstance(aux_loss_weight, (int, float))
            or not math.isfinite(aux_loss_weight)
            or aux_loss_weight < 0
        ):
            raise ValueError(
                f"aux_loss_weight must be a finite float >= 0, got {aux_loss_weight!r}"
            )
        self.config: ModelConfig = config
        self.n_experts = len(experts)
        self.top_k = top_k
        self.aux_loss_weight = float(aux_loss_weight)
        self.router_input: RouterInput = check_router_input(router_input)
        self.shared = shared
        self.experts = nn.ModuleList(experts)
        self.routers = nn.ModuleList(
            Router(config.d_model, self.n_experts, top_k, router_input)
            for _ in range(config.n_layers)
        )
        self.auxiliary_loss: torch.Tensor | None = None
        self.last_routing: list[torch.Tensor] = []
        self._experts_frozen = False

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""
        input_ids = check_input_ids(input_ids, self.config)
        attention_mask = check_attention_mask(attention_mask, input_ids)
        want_aux = self.training and self.aux_loss_weight > 0
        aux_terms = []
        routing = []
        x = self.shared.embed(input_ids)  # (B, T, C)
        for layer_idx in range(self.config.n_layers):
            x = self.shared.apply_attention(x, layer_idx, attention_mask)  # (B, T, C)
            weights, indices, probs = self.routers[layer_idx](x)  # (B,T,k) (B,T,k) (B,T,E)
            outputs = torch.stack(
                [expert[layer_idx].transform(x) for expert in self.experts]
            )  # (E, B, T, C)
            index = indices.permute(2, 0, 1)[..., None].expand(-1, -1, -1, x.shape[-1])
            chosen = outputs.gather(0, index)  # (k, B, T, C)
            x = x + (weights.permute(2, 0, 1)[..., None] * chosen).sum(dim=0)  # (B, T, C)
            routing.append(indices.detach())
            if want_aux:
                aux_terms.append(self._load_balancing(probs, indices[..., 0], attention_mask))
        self.last_routing = routing
        self.auxiliary_loss = (
            self.aux_loss_weight * torch.stack(aux_terms).mean() if want_aux else None
        )
        return self.shared.predict(x)  # (B, T, vocab)

    def _load_balancing(
        self, probs: torch.Tensor, top1: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Switch loss n_experts * sum_i f_i P_i for one layer (padding positions ignored)."""
        one_hot = nn.functional.one_hot(top1, self.n_experts).to(probs.dtype)  # (B, T, E)
        if attention_mask is None:
            fraction = one_hot.mean(dim=(0, 1))  # (E,)
            mean_prob = probs.mean(dim=(0, 1))  # (E,)
        else:
            mask = attention_mask.to(probs.dtype)[..., None]  # (B, T, 1)
            count = mask.sum().clamp_min(1.0)
            fraction = (one_hot * mask).sum(dim=(0, 1)) / count
            mean_prob = (probs * mask).sum(dim=(0, 1)) / count
        return self.n_experts * (fraction * mean_prob).sum()

    def router_parameters(self) -> Iterator[nn.Parameter]:
        """The routers' parameters, and only those: what router training optimizes."""
        yield from self.routers.parameters()

    def freeze_experts(self) -> MixtureOfExperts:
        """No gradients for the experts, and eval mode (no dropout) even under `.train()`."""
        for parameter in self.experts.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None
        self._experts_frozen = True
        self.experts.train(False)
        return self

    def train(self, mode: bool = True) -> MixtureOfExperts:
        """Like `nn.Module.train`, except that frozen experts stay in eval mode."""
        super().train(mode)
        if self._experts_frozen:
            self.experts.train(False)
        return self

    @classmethod
    def from_trainer_models(
        cls,
        models: Sequence[ModuleTrainerModel],
        top_k: int = 1,
        aux_loss_weight: float = 0.0,
        router_input: RouterInput = "layernorm",
    ) -> MixtureOfExperts:
        """Combine trained experts; expert e of the mixture is `models[e].experts`.

        All models must hold the very same `SharedComponents` object: experts
        trained against different trunks cannot share one.
        """
        models = list(models)
        if not models:
            raise ValueError("from_trainer_models needs at least one ModuleTrainerModel")
        shared = models[0].shared
        for e, model in enumerate(models):
            if model.shared is not shared:
                raise ValueError(
                    f"model {e} (expert_idx {model.expert_idx}) holds a different "
                    "SharedComponents object than model 0; all experts of a mixture must "
                    "be trained against (and loaded with) one shared trunk"
                )
        return cls(shared, [m.experts for m in models], top_k, aux_loss_weight, router_input)


def uniform_mixture(models: Sequence[ModuleTrainerModel]) -> MixtureOfExperts:
    """The experts averaged with equal weights in every layer, with no router at all.

    x = x + (1/n) * sum_e experts[e][i].transform(x). The baseline that tells whether a
    trained router adds anything over simply averaging what the experts say.
    """
    moe = MixtureOfExperts.from_trainer_models(models, top_k=1)
    moe.routers = nn.ModuleList(UniformRouter(moe.n_experts) for _ in range(moe.config.n_layers))
    moe.top_k = moe.n_experts
    return moe


def load_mixture(
    shared_path: str | os.PathLike[str],
    expert_paths: Sequence[str | os.PathLike[str]],
    top_k: int = 1,
    *,
    aux_loss_weight: float = 0.0,
) -> MixtureOfExperts:
    """Load a trunk and its experts (checked by `modularforge.files.checkpoint`) into a mixture.

    The routers are freshly initialised; load trained ones with `load_router`.
    """
    shared = load_shared(shared_path)
    models = [load_expert(path, shared) for path in expert_paths]
    return MixtureOfExperts.from_trainer_models(models, top_k, aux_loss_weight)


# --------------------------------------------------------------------------- router files

#: Metadata fields of a router file that must equal the mixture's, in this order.
_ROUTER_SHAPE_FIELDS = ("n_experts", "top_k", "n_layers", "d_model")


def _router_metadata(moe: MixtureOfExperts) -> dict[str, object]:
    return {
        "kind": "router",
        "format_version": FORMAT_VERSION,
        "n_experts": moe.n_experts,
        "top_k": moe.top_k,
        "n_layers": moe.config.n_layers,
        "d_model": moe.config.d_model,
        "router_input": moe.router_input,
        "shared_fingerprint": shared_fingerprint(moe.shared),
        "expert_fingerprints": [expert_fingerprint(expert) for expert in moe.experts],
    }


def save_router(moe: MixtureOfExperts, path: str | os.PathLike[str]) -> Path:
    """Write the routers alone (safetensors + JSON metadata, atomically); return the path.

    The file is small (n_layers * (d_model + 1) * n_experts numbers) and holds no
    expert or trunk weights; its metadata records what it fits (expert count,
    top-k, layers, width), the fingerprint of the trunk it was trained on, and
    the fingerprint of each expert it routes to, in order: router column e only
    means something for the expert that was at position e during training.
    """
    tensors = {
        f"routers.{name}": t.detach().to("cpu").contiguous().clone()
        for name, t in moe.routers.state_dict().items()
    }
    header = {METADATA_KEY: json.dumps(_router_metadata(moe), sort_keys=True)}
    return atomic_write_bytes(path, safetensors_save(tensors, header))


def load_router(moe: MixtureOfExperts, path: str | os.PathLike[str]) -> MixtureOfExperts:
    """Copy router weights from `path` into `moe` (in place) after checking they fit; return it.

    Refused with `CheckpointError` (a `ValueError`) naming both values when the
    file's kind, expert count, top-k, layer count or width differ from the
    mixture's; with `SharedMismatchError` when the routers were trained on
    another trunk; and with `CheckpointError` naming each position whose expert
    is not the one the routers were trained with (permuted, duplicated or
    replaced experts). Never unpickles anything.
    """
    path = Path(path)
    info = _read_checkpoint_header(path)
    meta = info["metadata"]
    if meta.get("kind") != "router":
        raise CheckpointError(
            f"{path}: expected a checkpoint of kind 'router', but its metadata says "
            f"kind={meta.get('kind')!r}"
        )
    check_format_version(path, meta.get("format_version"), "router")
    expected = _router_metadata(moe)
    # Files from before the option have no router_input: their routers read the raw stream.
    try:
        router_input = check_router_input(meta.get("router_input", "raw"))
    except ValueError as error:
        raise CheckpointError(f"{path}: router metadata {error}") from None
    missing = [f for f in expected if f not in meta and f != "router_input"]
    if missing:
        raise CheckpointError(f"{path}: router metadata is missing field(s) {missing}")
    mismatches = [
        f"{field}: file {meta[field]!r}, mixture {expected[field]!r}"
        for field in _ROUTER_SHAPE_FIELDS
        if meta[field] != expected[field]
    ]
    if mismatches:
        raise CheckpointError(
            f"{path}: the routers were saved for a different mixture: {'; '.join(mismatches)}"
        )
    if meta["shared_fingerprint"] != expected["shared_fingerprint"]:
        raise SharedMismatchError(
            f"{path}: the routers were trained on different shared weights (fingerprint "
            f"{str(meta['shared_fingerprint'])[:12]}..., this mixture's trunk is "
            f"{str(expected['shared_fingerprint'])[:12]}...); load the trunk they were trained with"
        )
    _check_expert_order(path, meta["expert_fingerprints"], expected["expert_fingerprints"])
    wanted = {f"routers.{name}": t for name, t in moe.routers.state_dict().items()}
    tensors = _load_checked_tensors(path, info["tensors"], wanted)
    moe.routers.load_state_dict(
        {name.removeprefix("routers."): t for name, t in tensors.items()}, strict=True
    )
    moe.router_input = router_input  # the weights mean something only on the input they saw
    for router in moe.routers:
        router.router_input = router_input
    return moe


def _check_expert_order(path: Path, trained: object, present: list[str]) -> None:
    """Each mixture position must hold the expert the routers were trained with there.

    Names every wrong position and what it holds instead: another trained expert
    (the list was permuted), one already used elsewhere (duplicated), or one the
    routers never saw (replaced, e.g. retrained).
    """
    if not isinstance(trained, list) or not all(isinstance(h, str) for h in trained):
        raise CheckpointError(f"{path}: router metadata expert_fingerprints must be a list of str")
    if len(trained) != len(present):
        raise CheckpointError(
            f"{path}: router metadata lists {len(trained)} expert fingerprints for "
            f"{len(present)} experts"
        )
    problems = []
    for position, (want, have) in enumerate(zip(trained, present, strict=True)):
        if want == have:
            continue
        if present.count(have) > 1:
            why = f"a duplicate of the expert at position {present.index(have)}"
        elif have in trained:
            why = f"the expert the routers knew at position {trained.index(have)} (permuted)"
        else:
            why = "an expert the routers were never trained with (replaced or retrained)"
        problems.append(f"expert {position} is {have[:12]}..., {why}; expected {want[:12]}...")
    if problems:
        raise CheckpointError(
            f"{path}: the mixture's experts are not the ones these routers were trained with: "
            + "; ".join(problems)
            + ". Load the experts in the order they had when the routers were trained"
        )


# --------------------------------------------------------------------------- training


def train_router(
    moe: MixtureOfExperts,
    data: DomainData,
    settings: TrainSettings,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
) -> TrainingHistory:
    """Train the routers only: trunk and experts are frozen and in eval mode (no dropout).

    Uses `modularforge.training.train.fit`, which optimizes whatever requires a gradient,
    so only the router parameters reach the optimizer; the load-balancing loss is
    added when `moe.aux_loss_weight > 0`.
    """
    moe.shared.freeze()
    moe.freeze_experts()
    for parameter in moe.router_parameters():
        parameter.requires_grad_(True)
    moe.to(resolve_device(settings.device))
    return fit(
        moe,
        data,
        settings,
        description=f"routers ({moe.n_experts} experts, top-{moe.top_k}, {data.name})",
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
    )


@torch.no_grad()
def routing_fractions(
    moe: MixtureOfExperts,
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> torch.Tensor:
    """(n_layers, n_experts): the share of tokens whose top-1 choice is each expert.

    Read over the same fixed, non-overlapping windows as validation
    (`modularforge.training.data.eval_batches`), in eval mode; each row sums to 1.
    """
    device = next(moe.parameters()).device
    was_training = moe.training
    moe.eval()
    counts = torch.zeros(moe.config.n_layers, moe.n_experts, dtype=torch.float64)
    try:
        for inputs, _ in eval_batches(tokens, batch_size, seq_len, max_batches):
            moe(inputs.to(device))
            for layer_idx, indices in enumerate(moe.last_routing):
                top1 = indices[..., 0].reshape(-1).cpu()
                counts[layer_idx] += torch.bincount(top1, minlength=moe.n_experts).double()
    finally:
        moe.train(was_training)
    total = counts.sum(dim=1, keepdim=True)
    if not bool((total > 0).all()):
        raise ValueError("routing_fractions saw no tokens; check tokens, seq_len and max_batches")
    return (counts / total).float()
