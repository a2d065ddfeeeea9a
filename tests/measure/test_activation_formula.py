"""Korthikanti et al.'s per-layer formula, and its adjustment to this model, to the byte."""

from __future__ import annotations

import pytest

from modularforge import ModelConfig
from modularforge.measure.activation_formula import (
    DESIGN_SETTINGS,
    KORTHIKANTI_SETTINGS,
    korthikanti_layer_bytes,
    korthikanti_rows,
    model_layer_bytes,
)
from modularforge.measure.memory import activation_breakdown


@pytest.mark.parametrize(
    ("s", "b", "h", "a"), [(512, 16, 512, 8), (2048, 1, 1024, 16), (64, 3, 128, 4)]
)
def test_defaults_are_the_papers_sbh_34_plus_5as_over_h(s: int, b: int, h: int, a: int) -> None:
    # sbh(34 + 5as/h), multiplied out so that it stays an integer.
    assert korthikanti_layer_bytes(s, b, h, a) == s * b * h * 34 + 5 * a * s * s * b


def test_float32_with_full_masks_is_the_paper_times_two_except_the_masks() -> None:
    s, b, h, a = 128, 2, 256, 4
    # 34 sbh = 32 sbh of values + 2 sbh of 1-byte masks; the quadratic 5 = 4 + 1.
    assert korthikanti_layer_bytes(s, b, h, a, element_bytes=4, mask_bytes=4) == (
        s * b * h * (2 * 32 + 4 * 2) + a * s * s * b * (2 * 4 + 4)
    )


TINY = ModelConfig.tiny().replace(dropout=0.1, expert_dropout=0.1)  # the preset has none
CONFIGS = {
    "seed": ModelConfig.seed(),
    "tiny with dropout": TINY,
    "no expert dropout": TINY.replace(expert_dropout=0.0),
    "narrow FFN": TINY.replace(d_ff=3 * TINY.d_model),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(("batch", "seq"), [(1, 32), (2, 64), (4, 16)])
def test_adjusted_formula_equals_activation_breakdown(name: str, batch: int, seq: int) -> None:
    config = CONFIGS[name]
    rows = korthikanti_rows(config, batch, seq)
    parts = activation_breakdown(config, batch, seq, **KORTHIKANTI_SETTINGS)
    model = parts["attention 1"] + parts["expert 1"]
    assert rows[-2]["bytes"] == model
    assert rows[-1]["bytes"] == model_layer_bytes(config, batch, seq, **DESIGN_SETTINGS)
    # Negative control: the formula adjusted only for precision and masks misses
    # the LayerNorm statistics and the expert's masks, so it is not the count.
    precision_only = korthikanti_layer_bytes(seq, batch, config.d_model, config.n_heads, None, 4, 4)
    assert precision_only != model


def test_the_design_saves_the_quadratic_term_at_the_chapters_batch() -> None:
    config = ModelConfig.seed()
    rows = korthikanti_rows(config, 16, 512)
    everything, design = rows[-2]["bytes"], rows[-1]["bytes"]
    quadratic = 3 * config.n_heads * 512 * 512 * 16 * 4  # three (B, heads, T, T) float32 tensors
    assert everything - design > quadratic


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TINY.replace(n_layers=1), "n_layers"),
        (ModelConfig.tiny().replace(dropout=0.0), "dropout"),
    ],
)
def test_rows_refuse_configs_the_comparison_does_not_fit(config: ModelConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        korthikanti_rows(config, 2, 16)
