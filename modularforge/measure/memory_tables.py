"""The design document's memory table beside the one computed from the live model.

Chapter 2 checks the document's "Memory Budget Proof" line by line:
`doc_vs_model_rows` sets the two tables side by side, `shared_count_readings` and
`unfrozen_readings` try the readings of the architecture that could have produced
the document's "18M" and "516 MB", and `budget_table` prints a budget at any shape.
"""

from __future__ import annotations

from typing import Any

from modularforge.measure.memory import (
    DOC_ADAMW_MB,
    DOC_BUDGET_MB,
    DOC_EXPERT_MB,
    DOC_EXPERT_PARAMS,
    DOC_SHARED_MB,
    DOC_SHARED_PARAMS,
    DOC_UNFROZEN_MB,
    MB,
    memory_budget,
    parameter_counts,
)
from modularforge.measure.memory_format import (
    ADAMW_FP32_BYTES_PER_TRAINED_PARAM,
    CATEGORIES,
    DOC_UNFROZEN_ADAMW_MB,
    DOC_UNFROZEN_GRADS_MB,
    mb,
)
from modularforge.model.config import ModelConfig

# --- The document's table beside the model's --------------------------------------------


def doc_static_total_mb() -> int:
    """The document's ~205 MB, rebuilt from its own lines: 72 + 33 + 33 (grads) + 67."""
    return DOC_SHARED_MB + DOC_EXPERT_MB + DOC_EXPERT_MB + DOC_ADAMW_MB


def doc_unfrozen_by_its_own_sentence_mb() -> int:
    """205 + 72 (shared grads) + 144 (shared AdamW): what the document's sentence adds up to."""
    return DOC_BUDGET_MB + DOC_UNFROZEN_GRADS_MB + DOC_UNFROZEN_ADAMW_MB


def doc_vs_model_rows(config: ModelConfig) -> list[dict[str, Any]]:
    """The document's table, line by line, beside the same lines computed for `config`.

    Static memory only (batch 1 x 1: activations are treated in their own section).
    """
    counts = parameter_counts(config)
    budget = memory_budget(config, 1, 1, frozen=True)
    return [
        {
            "line": "shared (frozen)",
            "doc params": DOC_SHARED_PARAMS,
            "model params": counts.shared,
            "doc MB": float(DOC_SHARED_MB),
            "model MB": mb(budget.params_frozen),
        },
        {
            "line": "expert (trainable)",
            "doc params": DOC_EXPERT_PARAMS,
            "model params": counts.expert,
            "doc MB": float(DOC_EXPERT_MB),
            "model MB": mb(budget.params_trainable),
        },
        {
            "line": "expert gradients",
            "doc params": DOC_EXPERT_PARAMS,
            "model params": counts.expert,
            "doc MB": float(DOC_EXPERT_MB),
            "model MB": mb(budget.grads),
        },
        {
            "line": "AdamW states (2 per param)",
            "doc params": 2 * DOC_EXPERT_PARAMS,
            "model params": 2 * counts.expert,
            "doc MB": float(DOC_ADAMW_MB),
            "model MB": mb(budget.optimizer_state),
        },
        {
            "line": "total (static)",
            "doc params": None,
            "model params": counts.total,
            "doc MB": float(DOC_BUDGET_MB),
            "model MB": mb(budget.static),
        },
    ]


def layers_for_doc_shared(config: ModelConfig) -> float:
    """Attention layers a tied trunk would need to reach the document's 18M (not an integer)."""
    counts = parameter_counts(config)
    rest = DOC_SHARED_PARAMS - counts.token_embedding - counts.output_norm
    return rest / counts.attention_per_layer


def vocab_for_doc_shared(config: ModelConfig) -> float:
    """Vocabulary a tied trunk with this config's layers would need to reach 18M."""
    counts = parameter_counts(config)
    return (DOC_SHARED_PARAMS - counts.attention - counts.output_norm) / config.d_model


def trunk_for_doc_unfrozen() -> float:
    """Trunk parameters that 516 MB implies at 16 B per trained param, with an 8.4M expert."""
    return DOC_UNFROZEN_MB * MB / ADAMW_FP32_BYTES_PER_TRAINED_PARAM - DOC_EXPERT_PARAMS


def shared_count_readings(config: ModelConfig) -> list[dict[str, Any]]:
    """Every reading of the architecture we could think of that might give "18M shared".

    Each row says how far it lands from the document's figure. The last two rows
    solve for the layer count and the vocabulary that a tied 18M trunk would
    need, to show how far from the real configuration they are.
    """
    counts = parameter_counts(config)
    untied_head = config.vocab_size * config.d_model  # a separate (vocab, d_model) output matrix
    learned_positions = config.max_seq_len * config.d_model
    readings = [
        ("as built: LM head tied to the embedding", counts.shared),
        ("LM head untied (its own vocab x d_model matrix)", counts.shared + untied_head),
        (
            "untied head + learned positions",
            counts.shared + untied_head + learned_positions,
        ),
        ("shared trunk + one expert (the trainer model)", counts.total),
    ]
    rows = [
        {
            "reading": name,
            "params": params,
            "params - 18M": params - DOC_SHARED_PARAMS,
            "off by %": 100.0 * (params - DOC_SHARED_PARAMS) / DOC_SHARED_PARAMS,
        }
        for name, params in readings
    ]
    layers_needed = layers_for_doc_shared(config)
    vocab_needed = vocab_for_doc_shared(config)
    rows.append(
        {
            "reading": f"tied, with {layers_needed:.2f} layers instead of {config.n_layers}",
            "params": DOC_SHARED_PARAMS,
            "params - 18M": 0,
            "off by %": 0.0,
        }
    )
    rows.append(
        {
            "reading": f"tied, with a vocabulary of {vocab_needed:,.0f} instead of "
            f"{config.vocab_size:,}",
            "params": DOC_SHARED_PARAMS,
            "params - 18M": 0,
            "off by %": 0.0,
        }
    )
    return rows


def unfrozen_readings(config: ModelConfig) -> list[dict[str, Any]]:
    """Ways to reach the document's "516 MB without freezing", and the ratio each gives.

    The ratio column divides by the document's 205 MB, except for the model's
    own row, which divides by the model's own frozen static total.
    """
    counts = parameter_counts(config)
    frozen = memory_budget(config, 1, 1, frozen=True)
    unfrozen = memory_budget(config, 1, 1, frozen=False)
    per = ADAMW_FP32_BYTES_PER_TRAINED_PARAM
    untied = counts.shared + config.vocab_size * config.d_model
    doc_sentence = doc_unfrozen_by_its_own_sentence_mb()
    doc_counts = (DOC_SHARED_PARAMS + DOC_EXPERT_PARAMS) * per / MB
    doc_twice = doc_sentence + DOC_EXPERT_MB + DOC_ADAMW_MB
    untied_mb = (untied + counts.expert) * per / MB
    shared_needed = trunk_for_doc_unfrozen()
    rows = [
        ("document's own sentence: 205 + 72 grads + 144 AdamW", doc_sentence, DOC_BUDGET_MB),
        ("document's counts, 16 B per param: (18M + 8.4M) x 16 B", doc_counts, DOC_BUDGET_MB),
        ("sentence + the expert's grads and AdamW a second time", doc_twice, DOC_BUDGET_MB),
        ("untied LM head, everything trained: (21.0M + 8.4M) x 16 B", untied_mb, DOC_BUDGET_MB),
        (
            f"16 B per param would need a {shared_needed / 1e6:.2f}M-param trunk",
            float(DOC_UNFROZEN_MB),
            DOC_BUDGET_MB,
        ),
        ("this model as built, static bytes (exact)", mb(unfrozen.static), None),
    ]
    return [
        {
            "reading": name,
            "unfrozen MB": float(total),
            "ratio": float(total / (base if base is not None else mb(frozen.static))),
        }
        for name, total, base in rows
    ]


# --- Budget tables ---------------------------------------------------------------------


def budget_table(
    config: ModelConfig, batch_size: int, seq_len: int, optimizer: str = "adamw"
) -> list[dict[str, Any]]:
    """Frozen vs unfrozen, by category, in MB; plus static and full totals.

    The numbers are `memory_budget`'s, so the bar chart and this table agree by
    construction (a test checks it).
    """
    frozen = memory_budget(config, batch_size, seq_len, frozen=True, optimizer=optimizer)
    unfrozen = memory_budget(config, batch_size, seq_len, frozen=False, optimizer=optimizer)
    rows = [
        {
            "category": label,
            "frozen MB": mb(getattr(frozen, attr)),
            "unfrozen MB": mb(getattr(unfrozen, attr)),
        }
        for attr, label, _ in CATEGORIES
    ]
    rows.append(
        {
            "category": "static total",
            "frozen MB": mb(frozen.static),
            "unfrozen MB": mb(unfrozen.static),
        }
    )
    rows.append(
        {"category": "total", "frozen MB": mb(frozen.total), "unfrozen MB": mb(unfrozen.total)}
    )
    return rows
