"""Korthikanti et al.'s activation formula beside this package's count, term by term.

Korthikanti et al. (2022, section 4.1) count the bytes one transformer layer saves
for its backward pass as sbh(34 + 5as/h): s tokens per sequence, b sequences,
h the width, a the attention heads, in 16-bit precision, with 1-byte dropout
masks and an MLP four times as wide as the model. Chapter 2 adjusts that formula
one assumption at a time (float32, full-size masks, this FFN, the LayerNorm
statistics, the expert's extra dropout) until it equals what
`memory.activation_breakdown` counts for the same layer, so the reader sees
which difference comes from where, and then sets it beside the design's own
step (frozen trunk, fused attention), where most of those terms are gone.
"""

from __future__ import annotations

from modularforge.measure.memory import MB, activation_breakdown
from modularforge.model.config import ModelConfig

_FP32_BYTES = 4  # LayerNorm keeps its mean and 1/std in float32
_LAYER = 1  # the layer compared: layer 0 saves less when the trunk is frozen

#: The arm that matches Korthikanti et al.'s assumptions: every weight trains,
#: dropout everywhere, attention on the math path (the softmax is stored).
KORTHIKANTI_SETTINGS = {"frozen": False, "attention_path": "math", "trunk_dropout": True}
#: The design's step: frozen trunk, fused attention, no trunk dropout.
DESIGN_SETTINGS = {"frozen": True, "attention_path": "fused", "trunk_dropout": False}


def korthikanti_layer_bytes(
    seq_len: int,
    batch_size: int,
    d_model: int,
    n_heads: int,
    d_ff: int | None = None,
    element_bytes: int = 2,
    mask_bytes: int = 1,
) -> int:
    """One layer's saved activations as Korthikanti et al. count them, in bytes.

    With the defaults (16-bit, 1-byte masks, `d_ff = 4 * d_model`) this is
    sbh(34 + 5as/h): attention 11sbh + 5as^2b, MLP 19sbh, two LayerNorms 4sbh.
    The other arguments rescale the terms they belong to.
    """
    s, b, h, a = seq_len, batch_size, d_model, n_heads
    f = 4 * h if d_ff is None else d_ff
    e, m = element_bytes, mask_bytes
    # Two LayerNorm inputs, QKV input, Q, K, V, the projection's input and fc1's
    # input: eight (s, b, h) tensors; plus two dropout masks (attention output, MLP).
    width_terms = s * b * h * (8 * e + 2 * m)
    ffn_terms = 2 * s * b * f * e  # GELU input and fc2 input
    # Softmax output, its dropout mask and the dropped probabilities: (b, a, s, s) each.
    quadratic_terms = a * s * s * b * (2 * e + m)
    return width_terms + ffn_terms + quadratic_terms


def model_layer_bytes(config: ModelConfig, batch_size: int, seq_len: int, **settings) -> int:
    """What `activation_breakdown` counts for one layer (attention + expert) of this model."""
    parts = activation_breakdown(config, batch_size, seq_len, **settings)
    return parts[f"attention {_LAYER}"] + parts[f"expert {_LAYER}"]


def korthikanti_rows(config: ModelConfig, batch_size: int, seq_len: int) -> list[dict]:
    """Korthikanti's formula, adjusted one assumption at a time, then this model's own count.

    Each row adds one difference to the row above; the last adjusted row equals
    `activation_breakdown` for the same setting (checked here and in the tests),
    and the final row is the design's step at the same batch.
    """
    if config.n_layers < 2:
        raise ValueError(f"the comparison uses layer {_LAYER}; n_layers must be >= 2")
    if config.dropout <= 0:
        raise ValueError(
            "Korthikanti et al.'s formula assumes dropout; use a config with dropout > 0"
        )
    s, b, h, a, f = seq_len, batch_size, config.d_model, config.n_heads, config.d_ff
    rows: list[tuple[str, int]] = [
        ("Korthikanti et al.: sbh(34 + 5as/h), 16-bit", s * b * h * 34 + 5 * a * s * s * b)
    ]
    rows.append(("float32 activations, 1-byte masks", korthikanti_layer_bytes(s, b, h, a, None, 4)))
    rows.append(
        ("dropout masks as float32 tensors", korthikanti_layer_bytes(s, b, h, a, None, 4, 4))
    )
    rows.append((f"this FFN's width, d_ff = {f}", korthikanti_layer_bytes(s, b, h, a, f, 4, 4)))
    total = rows[-1][1]
    total += 2 * 2 * b * s * _FP32_BYTES
    rows.append(("+ LayerNorm mean and 1/std (2 LayerNorms)", total))
    if config.expert_dropout > 0:
        total += b * s * f * 4
        rows.append(("+ the expert's dropout mask after GELU", total))
    else:
        total -= b * s * h * 4
        rows.append(("- the expert has no dropout: no mask after fc2", total))
    if b == 1:
        total += 2 * b * s * h * 4
        rows.append(("+ batch 1: v keeps the whole qkv output alive", total))
    model = model_layer_bytes(config, b, s, **KORTHIKANTI_SETTINGS)
    if model != total:  # the adjusted formula must be this model's count, to the byte
        raise AssertionError(f"adjusted formula {total} != activation_breakdown {model}")
    rows.append(("= this model, everything training, math attention", model))
    rows.append(
        (
            "the design: frozen trunk, fused attention",
            model_layer_bytes(config, b, s, **DESIGN_SETTINGS),
        )
    )
    return [{"per layer": name, "bytes": n, "MB": n / MB} for name, n in rows]
