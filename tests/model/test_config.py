"""ModelConfig: the presets carry the design's numbers, and bad values fail by name."""

import pytest

from modularforge import ModelConfig


def test_seed_preset_is_the_design_documents_reference_model():
    config = ModelConfig.seed()
    assert (config.d_model, config.n_heads, config.n_layers, config.d_ff) == (512, 8, 4, 2048)
    assert (config.vocab_size, config.max_seq_len) == (16384, 512)
    assert config.head_dim == 64


def test_tiny_preset_is_smaller_in_every_size():
    tiny, seed = ModelConfig.tiny(), ModelConfig.seed()
    for name in ("d_model", "n_layers", "d_ff", "vocab_size", "max_seq_len"):
        assert getattr(tiny, name) < getattr(seed, name), name


def test_preset_lookup_by_name_and_unknown_name():
    assert ModelConfig.preset("seed") == ModelConfig.seed()
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*\['seed', 'tiny'\]"):
        ModelConfig.preset("huge")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("d_model", 0, r"d_model must be a positive int \(>= 1\), got 0"),
        ("n_heads", -2, r"n_heads must be a positive int \(>= 1\), got -2"),
        ("n_layers", 2.5, r"n_layers must be a positive int, got 2.5"),
        ("vocab_size", True, r"vocab_size must be a positive int, got True"),
        ("d_ff", "2048", r"d_ff must be a positive int, got '2048'"),
        ("max_seq_len", -1, r"max_seq_len must be a positive int"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\), got 1.0"),
        ("expert_dropout", -0.1, r"expert_dropout must be in \[0, 1\), got -0.1"),
        ("n_heads", 7, r"d_model \(512\) must be divisible by n_heads \(7\)"),
        ("layer_norm_eps", 0.0, r"layer_norm_eps must be a float > 0"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.seed().replace(**{field: value})


def test_odd_d_model_is_refused_for_sinusoidal_positions():
    with pytest.raises(ValueError, match="d_model must be even"):
        ModelConfig(d_model=9, n_heads=3)


def test_dict_round_trip_and_unknown_keys():
    config = ModelConfig.tiny()
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['d_fff'\]"):
        ModelConfig.from_dict({**config.to_dict(), "d_fff": 3})
