"""What each system of the mixture study cost: tokens and FLOPs per phase, parameters, inference.

Comparing systems at equal *tokens* is only half the bookkeeping: a phase-2 step on
a frozen trunk does fewer matmuls than a dense step (no weight gradients for the
trunk), and a mixing step that runs every expert on every token does more. So every
arm records, per training phase, its steps, tokens and FLOPs, counted the same way
for every arm, with the package's convention (`flops`):

* only matmuls count: every Linear (the attention's QKV and output projections, the
  experts' fc1/fc2, the routers) and the tied LM head, plus attention's two batched
  matmuls (q k^T and p v) over the full T x T score matrix;
* a Linear with N tokens and weight (out, in) costs 2*N*in*out for its forward, the
  same again for its input gradient when autograd needs one (something before it
  trains) and again for its weight gradient when its weight trains; attention's
  backward is four matmuls of the forward's size when its inputs need gradients;
* AdamW, LayerNorm, GELU, softmax and the embedding lookup (an index, not a matmul)
  are not counted, on any arm.

`training_step_flops` follows autograd's rule for which gradients exist, layer by
layer, from the set of trainable groups; `tests/measure/test_mixture_accounting.py` checks
it to the FLOP against `flops.count_flops` on real steps of every phase.

Experts run per token: a top-k mixture needs k experts per token; soft routing needs
all of them (every expert weighted on every token), so it pays for all. The package's
`MixtureOfExperts` runs every expert on every token and gathers the chosen outputs,
which for top-k is an implementation shortcut, not what the method costs; the
accounting counts what the method costs (`experts_per_token`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from modularforge.model.config import ModelConfig
from modularforge.model.expert import expert_ffn_parameter_count

__all__ = [
    "GROUPS",
    "arm_accounting",
    "experts_per_token",
    "inference_flops_per_token",
    "parameter_counts",
    "phase_step_flops",
    "training_step_flops",
]

#: Weight groups a training step can train.
GROUPS = ("embedding", "attention", "output_norm", "experts", "router")


def training_step_flops(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    trainable: Collection[str],
    experts_run: int = 1,
    n_router_outputs: int = 0,
) -> int:
    """Matmul FLOPs of one training step (forward + backward) with `trainable` groups training.

    `experts_run` FFNs run on every token in every layer; `n_router_outputs` > 0 adds a
    router (d_model -> n_router_outputs) per layer, fed the residual stream after attention.
    Gradients exist where autograd makes them: a weight gradient for a trainable weight,
    an input gradient when the input depends on something trainable.
    """
    unknown = set(trainable) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown trainable groups {sorted(unknown)}; choose from {GROUPS}")
    if experts_run < 1 or n_router_outputs < 0:
        raise ValueError(f"need experts_run >= 1 and n_router_outputs >= 0, got "
                         f"{experts_run}, {n_router_outputs}")  # fmt: skip
    if "router" in trainable and n_router_outputs == 0:
        raise ValueError("'router' is trainable but the step has no router (n_router_outputs=0)")
    n = batch_size * seq_len
    d, f = config.d_model, config.d_ff

    def linear(d_in: int, d_out: int, weight_grad: bool, input_grad: bool) -> int:
        return 2 * n * d_in * d_out * (1 + int(weight_grad) + int(input_grad))

    attention_matmul = 2 * batch_size * seq_len * seq_len * d  # one of q k^T, p v (all heads)
    train_attention = "attention" in trainable  # includes each block's own LayerNorm
    train_experts = "experts" in trainable  # includes each FFN's own LayerNorm
    train_router = "router" in trainable
    grad = "embedding" in trainable  # does the residual stream depend on a trainable weight?
    total = 0
    for _ in range(config.n_layers):
        # attention: LayerNorm -> QKV -> q k^T, p v -> projection
        into_qkv = grad or train_attention  # a trainable LayerNorm makes its output need a grad
        total += linear(d, 3 * d, train_attention, into_qkv)
        total += attention_matmul * (2 + (4 if into_qkv else 0))
        total += linear(d, d, train_attention, into_qkv)
        grad = grad or train_attention
        # experts: LayerNorm -> fc1 -> GELU -> fc2, each of `experts_run`
        into_fc1 = grad or train_experts
        total += experts_run * (linear(d, f, train_experts, into_fc1)
                                + linear(f, d, train_experts, into_fc1))  # fmt: skip
        if n_router_outputs:
            total += linear(d, n_router_outputs, train_router, grad)
        grad = grad or train_experts or train_router
    # final LayerNorm -> tied LM head (its weight is the embedding)
    into_head = grad or "output_norm" in trainable
    total += linear(d, config.vocab_size, "embedding" in trainable, into_head)
    return total


def experts_per_token(routing: str, n_experts: int) -> int:
    """FFNs a token runs through in one layer: k for top-k, all of them for soft routing."""
    table = {"top1": 1, "top2": 2, "soft": n_experts, "oracle": 1, "dense": 1}
    if routing not in table:
        raise ValueError(f"unknown routing {routing!r}; choose one of {sorted(table)}")
    return min(table[routing], n_experts)


def inference_flops_per_token(
    config: ModelConfig, seq_len: int, experts_run: int = 1, n_router_outputs: int = 0
) -> int:
    """Forward matmul FLOPs per token with a context of `seq_len` (full T x T scores, averaged)."""
    return training_step_flops(config, 1, seq_len, (), experts_run, n_router_outputs) // seq_len


def parameter_counts(config: ModelConfig, n_experts: int, n_routers: int = 0) -> dict[str, int]:
    """Parameters of the trunk, of the experts and of the routers (router = Linear with bias)."""
    d = config.d_model
    attention = config.n_layers * (2 * d + (d * 3 * d + 3 * d) + (d * d + d))
    trunk = config.vocab_size * d + attention + 2 * d  # embedding (= head) + attention + final norm
    experts = n_experts * config.n_layers * expert_ffn_parameter_count(config)
    routers = config.n_layers * (d * n_routers + n_routers) if n_routers else 0
    return {"trunk": trunk, "experts": experts, "routers": routers,
            "total": trunk + experts + routers}  # fmt: skip


#: Trainable groups of each kind of step.
PHASE_TRAINABLE = {
    "dense": ("embedding", "attention", "output_norm", "experts"),
    "expert": ("experts",),
    "router": ("router",),
    "router+attention+norms": ("router", "attention", "output_norm"),
    "all": ("router", "embedding", "attention", "output_norm", "experts"),
}


def phase_step_flops(
    config: ModelConfig, batch_size: int, seq_len: int, phase: str,
    routing: str = "soft", n_experts: int = 1,
) -> int:  # fmt: skip
    """FLOPs of one step of a phase: "dense" (phase 1), "expert", or a mixing choice."""
    if phase not in PHASE_TRAINABLE:
        raise ValueError(f"unknown phase {phase!r}; choose one of {sorted(PHASE_TRAINABLE)}")
    if phase in ("dense", "expert"):
        return training_step_flops(config, batch_size, seq_len, PHASE_TRAINABLE[phase])
    run = experts_per_token(routing, n_experts)
    return training_step_flops(config, batch_size, seq_len, PHASE_TRAINABLE[phase], run, n_experts)


def arm_accounting(
    settings: Mapping[str, Any], arm: str, steps: int | None = None
) -> dict[str, Any]:
    """Phases (steps, tokens, FLOPs), totals, parameters and inference FLOPs of one study arm.

    `settings` is a study's stored settings (`MixtureStudySettings` as a dict); studies
    written before routing was a setting used soft routing with the generalist.
    `steps` is the step count of a "dense_eqflops" arm (stored with it).
    """
    config = ModelConfig.preset(settings["preset"])
    batch, seq = settings["batch_size"], settings["seq_len"]
    per_step = batch * seq
    n_domains = len(settings["domains"])
    routing = settings.get("routing", "soft")
    n_mix = n_domains + int(settings.get("generalist", True))

    def phase(name: str, kind: str, n_steps: int, n_experts: int = 1) -> dict[str, Any]:
        flops = phase_step_flops(config, batch, seq, kind, routing, n_experts)
        return {"phase": name, "steps": n_steps, "tokens": n_steps * per_step,
                "flops": n_steps * flops}  # fmt: skip

    p1 = settings["phase1_steps"]
    experts = phase(f"experts ({n_domains} x {settings['expert_steps']} steps)", "expert",
                    n_domains * settings["expert_steps"])  # fmt: skip
    if arm in ("dense", "dense_eqflops", "phase1"):
        n_steps = {"dense": settings["budget_steps"], "phase1": p1, "dense_eqflops": steps}[arm]
        if n_steps is None:
            raise ValueError("a dense_eqflops arm needs its steps (stored with the arm)")
        phases = [phase("dense" if arm != "phase1" else "phase 1", "dense", n_steps)]
        params, run, routers = parameter_counts(config, 1), 1, 0
    elif arm in ("fresh_oracle", "branched_oracle"):
        phases = [phase("phase 1", "dense", p1), experts]
        params, run, routers = parameter_counts(config, n_domains), 1, 0
    elif arm in ("mix_router", "mix_shared"):
        shared = settings.get("shared_trainable", "router+attention+norms")
        kind = "router" if arm == "mix_router" else shared
        phases = [phase("phase 1", "dense", p1), experts,
                  phase(f"mixing ({kind})", kind, settings["mixing_steps"], n_mix)]  # fmt: skip
        params = parameter_counts(config, n_mix, n_mix)
        run, routers = experts_per_token(routing, n_mix), n_mix
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return {
        "phases": phases,
        "tokens": sum(p["tokens"] for p in phases),
        "flops": sum(p["flops"] for p in phases),
        "params": params["total"],
        "active_params": params["trunk"]
        + params["routers"]
        + run * config.n_layers * expert_ffn_parameter_count(config),
        "inference_flops_per_token": inference_flops_per_token(config, seq, run, routers),
    }
