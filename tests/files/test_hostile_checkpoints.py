"""Hostile checkpoint files: forged sizes, edited configs, old formats, deep JSON, shuffled experts.

Each family parametrises one class of attack (issue 12, items 1, 9, 10, 12) over
many variants; the loaders must refuse every one with a `CheckpointError` that
names what is wrong, before building or allocating anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modularforge.chapters.ch07_faults_loading import (
    nested_json,
    rewrite_checkpoint,
    write_raw_checkpoint,
)
from modularforge.files import checkpoint
from modularforge.files.checkpoint import (
    FINGERPRINT_CONFIG_FIELDS,
    FORMAT_VERSION,
    UNSEEN_SIZE_FACTOR,
    CheckpointConfigError,
    CheckpointError,
    SharedMismatchError,
    expected_specs,
    load_expert,
    load_shared,
    read_metadata,
    save_expert,
    save_shared,
    shared_fingerprint,
    trunk_fingerprint,
)
from modularforge.mixture.moe import MixtureOfExperts, load_router, save_router
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel

CONFIG = ModelConfig.tiny().replace(vocab_size=256, max_seq_len=32)


def make_shared(config: ModelConfig = CONFIG, seed: int = 0) -> SharedComponents:
    torch.manual_seed(seed)
    return SharedComponents(config).freeze()


def make_expert(shared: SharedComponents, index: int = 0, seed: int = 10) -> ModuleTrainerModel:
    torch.manual_seed(seed + index)
    model = ModuleTrainerModel(shared, shared.config, index)
    with torch.no_grad():
        for parameter in model.experts.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.fixture
def shared_file(tmp_path: Path) -> Path:
    return save_shared(make_shared(), tmp_path / "shared.safetensors")


@pytest.fixture
def no_real_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the loader builds a real (non-`meta`) trunk or trainer model."""
    real_shared = checkpoint.SharedComponents

    def guarded_shared(config: ModelConfig) -> SharedComponents:
        if torch.empty(0).device.type != "meta":
            raise AssertionError(f"a real trunk was built from {config}")
        return real_shared(config)

    def no_trainer(*args: object, **kwargs: object) -> None:
        raise AssertionError("a real trainer model was built")

    monkeypatch.setattr(checkpoint, "SharedComponents", guarded_shared)
    monkeypatch.setattr(checkpoint, "ModuleTrainerModel", no_trainer)


# --------------------------------------------------------------------------- item 1: sizes

FORGED_SIZES = {
    # name: (config edit, forge the fingerprint too, error type, message fragment)
    "layers-1e6": ({"n_layers": 10**6}, True, CheckpointError, "n_layers: metadata says 1000000"),
    "layers-1e6-plain": ({"n_layers": 10**6}, False, CheckpointError, "the tensors have 2"),
    "layers-1": ({"n_layers": 1}, True, CheckpointError, "n_layers: metadata says 1,"),
    "layers-3": ({"n_layers": 3}, True, CheckpointError, "n_layers: metadata says 3,"),
    "layers-str": ({"n_layers": "2"}, True, CheckpointError, "n_layers: metadata says '2'"),
    "layers-neg": ({"n_layers": -1}, True, CheckpointError, "n_layers: metadata says -1"),
    "vocab-1e9": ({"vocab_size": 10**9}, True, CheckpointError, "vocab_size: metadata says"),
    "vocab-1": ({"vocab_size": 1}, True, CheckpointError, "vocab_size: metadata says 1,"),
    "width-2e20": ({"d_model": 2**20}, True, CheckpointError, "d_model: metadata says 1048576"),
    "width-and-layers": (
        {"d_model": 4096, "n_layers": 64},
        True,
        CheckpointError,
        "d_model: metadata says 4096",
    ),
    "positions-2e6": (
        {"max_seq_len": 2_000_000},
        True,
        CheckpointConfigError,
        "max_seq_len=2000000",
    ),
    "positions-1e12": ({"max_seq_len": 10**12}, True, CheckpointConfigError, "max_seq_len="),
    "positions-2e6-plain": ({"max_seq_len": 2_000_000}, False, CheckpointConfigError, "max_seq"),
    "ffn-1e9": ({"d_ff": 10**9}, True, CheckpointConfigError, "d_ff=1000000000"),
    "heads-1e6": ({"n_heads": 10**6}, True, CheckpointError, "invalid config"),
    "heads-zero": ({"n_heads": 0}, True, CheckpointError, "invalid config"),
    "positions-zero": ({"max_seq_len": 0}, True, CheckpointError, "invalid config"),
    "unknown-field": ({"n_experts": 10**9}, True, CheckpointError, "unknown ModelConfig fields"),
}


@pytest.mark.usefixtures("no_real_build")
@pytest.mark.parametrize("case", sorted(FORGED_SIZES))
def test_forged_sizes_are_refused_before_building(shared_file: Path, case: str) -> None:
    edit, forge, error, fragment = FORGED_SIZES[case]
    rewrite_checkpoint(shared_file, config=edit, refingerprint=forge)
    with pytest.raises(error) as raised:
        load_shared(shared_file)
    assert fragment in str(raised.value)
    assert str(shared_file) in str(raised.value)


FORGED_TENSORS = {
    "layer-gap": (
        lambda t: {
            **{k: v for k, v in t.items() if not k.startswith("attention.1.")},
            **{k.replace("attention.1.", "attention.7."): v for k, v in t.items() if "n.1." in k},
        },
        "not numbered 0..1",
    ),
    "no-embedding": (
        lambda t: {k: v for k, v in t.items() if k != "token_embedding.weight"},
        "'token_embedding.weight' is missing",
    ),
    "no-layers": (lambda t: {k: v for k, v in t.items() if "attention" not in k}, "no attention"),
    "embedding-vector": (
        lambda t: {**t, "token_embedding.weight": t["token_embedding.weight"].reshape(-1)},
        "not a matrix",
    ),
    "third-layer-tiny": (
        lambda t: {
            **t,
            **{k.replace(".1.", ".2."): v[:1].clone() for k, v in t.items() if ".1." in k},
        },
        "n_layers: metadata says 2, the tensors have 3",
    ),
    "qkv-shrunk": (
        lambda t: {**t, "attention.0.qkv.weight": t["attention.0.qkv.weight"][:6].clone()},
        "attention.0.qkv.weight: shape [6, 128] in checkpoint, model expects [384, 128]",
    ),
}


@pytest.mark.usefixtures("no_real_build")
@pytest.mark.parametrize("case", sorted(FORGED_TENSORS))
def test_tensors_inconsistent_with_metadata_are_refused_before_building(
    shared_file: Path, case: str
) -> None:
    edit, fragment = FORGED_TENSORS[case]
    rewrite_checkpoint(shared_file, tensors=edit, refingerprint=True)
    with pytest.raises(CheckpointError) as raised:
        load_shared(shared_file)
    assert fragment in str(raised.value)


EXPERT_TENSOR_EDITS = {
    "extra-layer": lambda t: {**t, "experts.2.fc1.weight": t["experts.1.fc1.weight"]},
    "huge-claim-small-data": lambda t: {**t, "experts.0.fc1.weight": torch.zeros(1, 1)},
    "missing-layer": lambda t: {k: v for k, v in t.items() if not k.startswith("experts.1.")},
    "wrong-dtype": lambda t: {**t, "experts.0.fc2.bias": t["experts.0.fc2.bias"].double()},
}


@pytest.mark.parametrize("case", sorted(EXPERT_TENSOR_EDITS))
def test_expert_tensors_are_checked_before_the_expert_is_built(
    tmp_path: Path, case: str, no_real_build: None
) -> None:
    shared = make_shared()
    path = save_expert(make_expert(shared), tmp_path / "expert.safetensors")
    rewrite_checkpoint(path, tensors=EXPERT_TENSOR_EDITS[case])
    with pytest.raises(CheckpointError, match="checkpoint tensors do not match the model"):
        load_expert(path, shared)


@pytest.mark.parametrize(
    "config",
    [ModelConfig.tiny(), ModelConfig.seed(), ModelConfig.tiny().replace(max_seq_len=8192)],
    ids=["tiny", "seed", "tiny-8k-context"],
)
def test_real_configs_are_within_the_unseen_size_bound(config: ModelConfig) -> None:
    """Positive control: the bound refuses forgeries, never a real preset."""
    specs = expected_specs(config, "shared")
    held = sum(torch.Size(spec["shape"]).numel() for spec in specs.values())
    checkpoint._check_unseen_sizes(Path("x"), config, specs)  # does not raise
    assert config.max_seq_len * config.d_model < UNSEEN_SIZE_FACTOR * held
    with pytest.raises(CheckpointConfigError, match="max_seq_len"):
        checkpoint._check_unseen_sizes(
            Path("x"), config.replace(max_seq_len=UNSEEN_SIZE_FACTOR * held), specs
        )


def test_expected_specs_match_a_real_model() -> None:
    shared = make_shared()
    real = {k: [list(v.shape), v.dtype] for k, v in shared.state_dict().items()}
    specs = expected_specs(CONFIG, "shared")
    assert {k: v["shape"] for k, v in specs.items()} == {k: v[0] for k, v in real.items()}
    expert = {
        f"experts.{k}": list(v.shape) for k, v in make_expert(shared).experts.state_dict().items()
    }
    assert {k: v["shape"] for k, v in expected_specs(CONFIG, "expert").items()} == expert


# --------------------------------------------------------------------------- item 10: fingerprint

OTHER_VALUES = {
    "d_model": 64,
    "n_heads": 2,
    "n_layers": 3,
    "d_ff": 256,
    "vocab_size": 512,
    "max_seq_len": 64,
    "dropout": 0.1,
    "expert_dropout": 0.1,
    "layer_norm_eps": 1e-3,
}


def test_every_config_field_is_fingerprinted() -> None:
    assert set(FINGERPRINT_CONFIG_FIELDS) == set(ModelConfig().to_dict()) == set(OTHER_VALUES)


@pytest.mark.parametrize("field", FINGERPRINT_CONFIG_FIELDS)
def test_fingerprint_changes_with_each_config_field_alone(field: str) -> None:
    shared = make_shared()
    weights = shared.state_dict()
    base = trunk_fingerprint(CONFIG.to_dict(), weights)
    assert base == shared_fingerprint(shared)
    changed = {**CONFIG.to_dict(), field: OTHER_VALUES[field]}
    assert trunk_fingerprint(changed, weights) != base


@pytest.mark.parametrize(
    "edit",
    [
        {"n_heads": 2},
        {"n_heads": 8},
        {"n_heads": 1},
        {"layer_norm_eps": 1e-3},
        {"layer_norm_eps": 1.0},
        {"max_seq_len": 16},
        {"max_seq_len": 64},
        {"dropout": 0.5},
        {"expert_dropout": 0.1},
        {"d_ff": 256},
    ],
    ids=lambda edit: "-".join(f"{k}={v}" for k, v in edit.items()),
)
def test_edited_config_in_a_shared_file_is_refused(shared_file: Path, edit: dict) -> None:
    rewrite_checkpoint(shared_file, config=edit)
    with pytest.raises(CheckpointError, match="does not match this file's config and weights"):
        load_shared(shared_file)


@pytest.mark.parametrize("edit", [{"n_heads": 2}, {"layer_norm_eps": 1e-3}, {"max_seq_len": 16}])
def test_expert_refuses_a_trunk_with_equal_weights_but_another_config(
    tmp_path: Path, edit: dict
) -> None:
    shared = make_shared()
    path = save_expert(make_expert(shared), tmp_path / "expert.safetensors")
    other = SharedComponents(CONFIG.replace(**edit))
    other.load_state_dict(shared.state_dict())  # the very same weights
    other.freeze()
    ids = torch.randint(0, CONFIG.vocab_size, (1, 8))
    model = ModuleTrainerModel(other, other.config, experts=make_expert(shared).experts)
    if "max_seq_len" not in edit:  # the computation really differs
        assert not torch.allclose(model.eval()(ids), make_expert(shared).eval()(ids))
    with pytest.raises(SharedMismatchError, match="different trunk config"):
        load_expert(path, other)


@pytest.mark.parametrize("kind", ["shared", "expert", "router"])
@pytest.mark.parametrize("version", [1, 0, -3, "2", 2.0, True, None, FORMAT_VERSION + 1])
def test_other_format_versions_are_refused_with_advice(
    tmp_path: Path, kind: str, version: object
) -> None:
    shared = make_shared()
    models = [make_expert(shared, i) for i in range(2)]
    moe = MixtureOfExperts.from_trainer_models(models)
    path = {
        "shared": lambda: save_shared(shared, tmp_path / "f.safetensors"),
        "expert": lambda: save_expert(models[0], tmp_path / "f.safetensors"),
        "router": lambda: save_router(moe, tmp_path / "f.safetensors"),
    }[kind]()
    rewrite_checkpoint(path, metadata={"format_version": version})
    load = {
        "shared": lambda: load_shared(path),
        "expert": lambda: load_expert(path, shared),
        "router": lambda: load_router(MixtureOfExperts.from_trainer_models(models), path),
    }[kind]
    with pytest.raises(CheckpointError) as raised:
        load()
    message = str(raised.value)
    if type(version) is int and version == 1:
        assert "old" in message and "Retrain it" in message and "re-save" in message
    elif type(version) is int and version == FORMAT_VERSION + 1:
        assert "upgrade modularforge" in message
    else:
        assert "unsupported" in message


# --------------------------------------------------------------------------- item 12: deep JSON

DEPTHS = [2_000, 100_000, 1_000_000]


def _deep_file(path: Path, where: str, depth: int) -> Path:
    deep = nested_json(depth)
    if where == "header-entry":
        return write_raw_checkpoint(path, '{"w": {"dtype": ' + deep + "}}")
    if where == "header-metadata":
        return write_raw_checkpoint(path, '{"__metadata__": ' + deep + "}")
    if where == "modularforge-value":
        return write_raw_checkpoint(path, {"__metadata__": {"modularforge": deep}})
    config = '{"kind": "shared", "format_version": 2, "config": ' + deep + "}"
    return write_raw_checkpoint(path, {"__metadata__": {"modularforge": config}})


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(
    "where", ["header-entry", "header-metadata", "modularforge-value", "config"]
)
@pytest.mark.parametrize("loader", ["load_shared", "read_metadata", "load_expert"])
def test_deeply_nested_json_is_a_checkpoint_error(
    tmp_path: Path, where: str, depth: int, loader: str
) -> None:
    path = _deep_file(tmp_path / "deep.safetensors", where, depth)
    load = {
        "load_shared": lambda: load_shared(path),
        "read_metadata": lambda: read_metadata(path),
        "load_expert": lambda: load_expert(path, make_shared()),
    }[loader]
    with pytest.raises(CheckpointError) as raised:
        load()
    assert str(path) in str(raised.value)
    if depth > 10_000:
        assert "nested too deeply" in str(raised.value)


# --------------------------------------------------------------------------- item 9: routers

ORDERS = {
    "same": (lambda m, extra: m, None),
    "swap-0-1": (lambda m, extra: [m[1], m[0], m[2]], "the expert the routers knew at position 1"),
    "reversed": (lambda m, extra: m[::-1], "expert 2 is"),
    "rotated": (lambda m, extra: [m[1], m[2], m[0]], "(permuted)"),
    "duplicate-0": (lambda m, extra: [m[0], m[0], m[2]], "a duplicate of the expert at position 0"),
    "all-same": (lambda m, extra: [m[2], m[2], m[2]], "duplicate"),
    "replaced-2": (lambda m, extra: [m[0], m[1], extra], "never trained with"),
    "replaced-0": (lambda m, extra: [extra, m[1], m[2]], "expert 0 is"),
}


def _nudged(model: ModuleTrainerModel) -> ModuleTrainerModel:
    """The same expert with one weight changed by 1e-6: a retrained or damaged copy."""
    copy = ModuleTrainerModel(model.shared, model.config, model.expert_idx)
    copy.experts.load_state_dict(model.experts.state_dict())
    with torch.no_grad():
        copy.experts[0].fc1.weight[0, 0] += 1e-6
    return copy


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_router_refuses_experts_it_was_not_trained_with(tmp_path: Path, order: str) -> None:
    shared = make_shared()
    models = [make_expert(shared, i) for i in range(3)]
    trained = MixtureOfExperts.from_trainer_models(models, top_k=2)
    path = save_router(trained, tmp_path / "router.safetensors")
    arrange, fragment = ORDERS[order]
    moe = MixtureOfExperts.from_trainer_models(arrange(models, _nudged(models[2])), top_k=2)
    if fragment is None:
        load_router(moe, path)
        assert torch.equal(moe.routers[0].linear.weight, trained.routers[0].linear.weight)
        return
    with pytest.raises(CheckpointError) as raised:
        load_router(moe, path)
    assert fragment in str(raised.value)
    assert "not the ones these routers were trained with" in str(raised.value)


@pytest.mark.parametrize(
    "value, fragment",
    [
        (None, "must be a list of str"),
        ("abc", "must be a list of str"),
        ([1, 2, 3], "must be a list of str"),
        (["a", "b"], "lists 2 expert fingerprints for 3"),
        (["a", "b", "c"], "never trained with"),
    ],
)
def test_router_expert_list_is_validated(tmp_path: Path, value: object, fragment: str) -> None:
    shared = make_shared()
    models = [make_expert(shared, i) for i in range(3)]
    path = save_router(MixtureOfExperts.from_trainer_models(models), tmp_path / "r.safetensors")
    rewrite_checkpoint(path, metadata={"expert_fingerprints": value})
    with pytest.raises(CheckpointError, match=fragment):
        load_router(MixtureOfExperts.from_trainer_models(models), path)


def test_router_file_records_and_requires_the_expert_list(tmp_path: Path) -> None:
    shared = make_shared()
    models = [make_expert(shared, i) for i in range(2)]
    path = save_router(MixtureOfExperts.from_trainer_models(models), tmp_path / "r.safetensors")
    recorded = read_metadata(path)["metadata"]["expert_fingerprints"]
    assert recorded == [checkpoint.expert_fingerprint(m.experts) for m in models]
    assert len(set(recorded)) == 2
    rewrite_checkpoint(path, drop=("expert_fingerprints",))
    with pytest.raises(CheckpointError, match=r"missing field\(s\) \['expert_fingerprints'\]"):
        load_router(MixtureOfExperts.from_trainer_models(models), path)


def test_the_build_guard_catches_a_real_build(shared_file: Path, no_real_build: None) -> None:
    """Negative control for `no_real_build`: an honest file does get built, and is caught."""
    with pytest.raises(AssertionError, match="a real trunk was built"):
        load_shared(shared_file)
