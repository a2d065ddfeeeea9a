"""Expert and shared checkpoints: round trips, refusals with named causes, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modularforge.files import atomic
from modularforge.files.atomic import atomic_write_bytes, remove_stale_temp_files
from modularforge.files.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointConfigError,
    CheckpointError,
    SharedMismatchError,
    load_expert,
    load_shared,
    read_metadata,
    save_expert,
    save_shared,
    shared_fingerprint,
)
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel

SEED_EXPERT_PARAMS = 8_402_944  # 4 layers x (LN 1,024 + fc1 1,050,624 + fc2 1,049,088)


# --------------------------------------------------------------------------- helpers


def make_shared(config: ModelConfig | None = None, seed: int = 0) -> SharedComponents:
    torch.manual_seed(seed)
    return SharedComponents(config or ModelConfig.tiny()).freeze()


def make_model(shared: SharedComponents, expert_idx: int = 0, seed: int = 1) -> ModuleTrainerModel:
    torch.manual_seed(seed)
    model = ModuleTrainerModel(shared, shared.config, expert_idx)
    # Non-default LayerNorm and bias values, so a load that silently kept the fresh
    # init (ones / zeros) would not give equal logits.
    with torch.no_grad():
        for parameter in model.experts.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def sample_ids(config: ModelConfig, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (2, 16), generator=generator)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def rewrite(path: Path, *, tensors=None, metadata=None) -> None:
    """Rewrite a valid checkpoint with edited tensors and/or edited modularforge metadata."""
    current = load_file(path)
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
    if tensors is not None:
        current = tensors(current)
    if metadata is not None:
        meta = metadata(meta)
    save_file(current, path, metadata={METADATA_KEY: json.dumps(meta)})


@pytest.fixture
def shared() -> SharedComponents:
    return make_shared()


@pytest.fixture
def expert_file(tmp_path: Path, shared: SharedComponents) -> Path:
    return save_expert(make_model(shared, expert_idx=3), tmp_path / "expert.safetensors")


# --------------------------------------------------------------------------- round trips


def test_expert_round_trip_gives_identical_logits(tmp_path: Path, shared: SharedComponents) -> None:
    original = make_model(shared, expert_idx=3).eval()
    path = save_expert(original, tmp_path / "expert.safetensors")
    loaded = load_expert(path, shared).eval()
    ids = sample_ids(shared.config)
    with torch.no_grad():
        expected, actual = original(ids), loaded(ids)
        fresh = ModuleTrainerModel(shared, shared.config).eval()(ids)
    assert loaded.expert_idx == 3
    assert torch.equal(actual, expected)
    assert not torch.equal(fresh, expected)  # the weights really came from the file
    assert loaded.shared is shared


def test_expert_file_holds_only_expert_tensors_and_metadata(expert_file: Path) -> None:
    info = read_metadata(expert_file)
    names = list(info["tensors"])
    config = ModelConfig.tiny()
    assert len(names) == 6 * config.n_layers  # norm, fc1, fc2: weight + bias each
    assert all(name.startswith("experts.") for name in names)
    assert not any("shared" in name or "embedding" in name for name in names)
    assert "experts.0.fc1.weight" in names
    assert info["tensors"]["experts.1.fc2.weight"] == {"dtype": "F32", "shape": [128, 512]}
    meta = info["metadata"]
    assert meta["kind"] == "expert"
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert meta["expert_idx"] == 3
    assert meta["config"] == {"d_model": 128, "d_ff": 512, "n_layers": 2, "expert_dropout": 0.0}
    assert meta["full_config"] == config.to_dict()
    assert meta["shared_fingerprint"] == shared_fingerprint(make_shared())
    assert info["file_size"] == expert_file.stat().st_size


def test_seed_expert_file_size_is_its_parameters_in_float32(tmp_path: Path) -> None:
    shared = make_shared(ModelConfig.seed())
    path = save_expert(ModuleTrainerModel(shared, shared.config), tmp_path / "seed.safetensors")
    size = path.stat().st_size
    assert size - header_length(path) - 8 == SEED_EXPERT_PARAMS * 4 == 33_611_776
    assert 33_600_000 < size < 33_700_000  # "about 33.6 MB": the header is a few KB
    assert read_metadata(path)["n_parameters"] == SEED_EXPERT_PARAMS


def test_shared_round_trip_is_tied_frozen_and_fingerprint_stable(tmp_path: Path) -> None:
    original = make_shared().unfreeze()
    with torch.no_grad():  # move the LayerNorms off their ones/zeros init
        for parameter in original.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    original.eval()
    path = save_shared(original, tmp_path / "shared.safetensors")
    loaded = load_shared(path)

    names = list(read_metadata(path)["tensors"])
    assert [name for name in names if "embedding" in name] == ["token_embedding.weight"]
    assert not any("positions" in name or "lm_head" in name for name in names)
    assert loaded.config == original.config
    assert loaded.is_frozen
    assert loaded.lm_head_weight is loaded.token_embedding.weight
    assert shared_fingerprint(loaded) == shared_fingerprint(original)
    x = torch.randn(2, 5, original.config.d_model)
    assert torch.equal(loaded.predict(x), original.predict(x))
    # predict reads the embedding: changing it changes the logits (the tie is live).
    with torch.no_grad():
        loaded.token_embedding.weight[0].add_(1.0)
    assert not torch.equal(loaded.predict(x), original.predict(x))
    assert not load_shared(path, freeze=False).is_frozen


def test_fingerprint_is_deterministic_and_sensitive() -> None:
    first, same = make_shared(seed=0), make_shared(seed=0)
    fingerprint = shared_fingerprint(first)
    assert len(fingerprint) == 64 and fingerprint == shared_fingerprint(same)
    with torch.no_grad():
        same.output_norm.bias[0] += 1e-6
    assert shared_fingerprint(same) != fingerprint
    assert shared_fingerprint(make_shared(seed=1)) != fingerprint


def test_fingerprint_of_seed_model_is_fast() -> None:
    shared = make_shared(ModelConfig.seed())
    start = time.perf_counter()
    shared_fingerprint(shared)
    assert time.perf_counter() - start < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fingerprint_is_the_same_on_gpu() -> None:
    shared = make_shared()
    on_cpu = shared_fingerprint(shared)
    assert shared_fingerprint(shared.to("cuda")) == on_cpu


# --------------------------------------------------------------------------- config and fingerprint


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("d_model", 64, "d_model: checkpoint 128, model 64"),
        ("d_ff", 1024, "d_ff: checkpoint 512, model 1024"),
        ("n_layers", 3, "n_layers: checkpoint 2, model 3"),
        ("expert_dropout", 0.2, "expert_dropout: checkpoint 0.0, model 0.2"),
    ],
)
def test_config_mismatch_names_field_and_both_values(
    expert_file: Path, field: str, value: object, expected: str
) -> None:
    other = make_shared(ModelConfig.tiny().replace(**{field: value}))
    with pytest.raises(CheckpointConfigError) as raised:
        load_expert(expert_file, other)
    assert expected in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_config_mismatch_reports_every_field(expert_file: Path) -> None:
    other = make_shared(ModelConfig.tiny().replace(d_ff=256, n_layers=1))
    with pytest.raises(CheckpointConfigError, match="d_ff: checkpoint 512, model 256") as raised:
        load_expert(expert_file, other)
    assert "n_layers: checkpoint 2, model 1" in str(raised.value)
    assert "d_model" not in str(raised.value)


def test_fingerprint_mismatch_is_refused_unless_allowed(
    expert_file: Path, shared: SharedComponents
) -> None:
    other = make_shared(seed=7)
    with pytest.raises(SharedMismatchError, match="trained against different shared weights"):
        load_expert(expert_file, other)
    with pytest.warns(UserWarning, match="different shared weights"):
        model = load_expert(expert_file, other, allow_shared_mismatch=True)
    reference = load_expert(expert_file, shared)
    for mine, theirs in zip(
        model.experts.parameters(), reference.experts.parameters(), strict=True
    ):
        assert torch.equal(mine, theirs)
    assert model.shared is other


# --------------------------------------------------------------------------- refusals


class _Exploit:
    """Unpickling this creates `marker`: stands in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"experts.0.fc1.weight": _Exploit(marker)})


def test_pickle_payload_would_run_code(tmp_path: Path) -> None:
    """Guards the next test: this payload really does act when unpickled."""
    marker = tmp_path / "ran"
    pickle.loads(_pickle_payload(marker))
    assert marker.exists()


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_renamed_safetensors_is_refused_without_unpickling(
    tmp_path: Path, shared: SharedComponents, writer: str
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "x.safetensors"
    if writer == "pickle":
        path.write_bytes(_pickle_payload(marker))
    else:  # the zip-of-pickles format that torch.load reads
        torch.save({"experts.0.fc1.weight": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="not a valid modularforge checkpoint"):
        load_expert(path, shared)
    with pytest.raises(CheckpointError, match="not a valid modularforge checkpoint"):
        load_shared(path)
    with pytest.raises(CheckpointError, match="not a valid modularforge checkpoint"):
        read_metadata(path)
    assert not marker.exists()


def _truncate_to(size_fn):
    def mutate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: size_fn(data)])

    return mutate


def _header_len(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def _set_meta(key: str, value: object):
    def mutate(path: Path) -> None:
        rewrite(path, metadata=lambda meta: {**meta, key: value})

    return mutate


def _drop_meta(key: str):
    def mutate(path: Path) -> None:
        rewrite(path, metadata=lambda meta: {k: v for k, v in meta.items() if k != key})

    return mutate


def _edit_tensor(name: str, edit):
    def mutate(path: Path) -> None:
        rewrite(path, tensors=lambda tensors: {**tensors, name: edit(tensors[name])})

    return mutate


def _nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[5] = float("nan")
    return tensor


def _inf(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = float("-inf")
    return tensor


BAD_FILES = {
    "zero-length": (lambda p: p.write_bytes(b""), ["the file is empty", "truncated"]),
    "cut-in-length-prefix": (_truncate_to(lambda d: 5), ["only 5 bytes", "truncated"]),
    "cut-in-header": (_truncate_to(lambda d: 8 + _header_len(d) // 2), ["header", "truncated"]),
    "cut-after-header": (_truncate_to(lambda d: 8 + _header_len(d)), ["data section is 0 bytes"]),
    "cut-last-byte": (_truncate_to(lambda d: len(d) - 1), ["data section", "truncated"]),
    "random-bytes": (
        lambda p: p.write_bytes(random.Random(0).randbytes(4096)),
        ["not a valid modularforge checkpoint", "not safetensors"],
    ),
    "json-not-safetensors": (
        lambda p: p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello"),
        ["does not start with '{'"],
    ),
    "plain-safetensors": (
        lambda p: save_file({"w": torch.zeros(2)}, p),
        ["no 'modularforge' entry"],
    ),
    "missing-tensor": (
        lambda p: rewrite(
            p, tensors=lambda t: {k: v for k, v in t.items() if "1.fc2.bias" not in k}
        ),
        ["missing tensor(s) ['experts.1.fc2.bias']"],
    ),
    "extra-tensor": (
        lambda p: rewrite(p, tensors=lambda t: {**t, "experts.2.fc1.weight": torch.zeros(3)}),
        ["unexpected tensor(s) ['experts.2.fc1.weight']"],
    ),
    "wrong-shape": (
        _edit_tensor("experts.0.fc1.weight", lambda t: t[:256].clone()),
        ["experts.0.fc1.weight: shape [256, 128] in checkpoint, model expects [512, 128]"],
    ),
    "wrong-dtype": (
        _edit_tensor("experts.1.norm.weight", lambda t: t.half()),
        ["experts.1.norm.weight: dtype F16 in checkpoint, model expects F32"],
    ),
    "nan": (_edit_tensor("experts.0.fc2.weight", _nan), ["NaN", "['experts.0.fc2.weight']"]),
    "inf": (_edit_tensor("experts.1.fc1.bias", _inf), ["inf", "['experts.1.fc1.bias']"]),
    "metadata-missing-fingerprint": (
        _drop_meta("shared_fingerprint"),
        ["missing required field(s) ['shared_fingerprint']"],
    ),
    "metadata-missing-config-field": (
        _set_meta("config", {"d_model": 128, "n_layers": 2, "expert_dropout": 0.0}),
        ["config is missing field(s) ['d_ff']"],
    ),
    "future-format-version": (
        _set_meta("format_version", FORMAT_VERSION + 1),
        [f"format_version {FORMAT_VERSION + 1}", "upgrade modularforge"],
    ),
    "wrong-kind": (
        _set_meta("kind", "shared"),
        ["expected a checkpoint of kind 'expert'", "load_shared"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_expert_file_is_refused_by_name_and_left_unchanged(
    expert_file: Path, shared: SharedComponents, case: str
) -> None:
    mutate, fragments = BAD_FILES[case]
    mutate(expert_file)
    before = sha256_of(expert_file)
    with pytest.raises(CheckpointError) as raised:
        load_expert(expert_file, shared)
    assert type(raised.value) is CheckpointError
    message = str(raised.value)
    assert str(expert_file) in message
    for fragment in fragments:
        assert fragment in message
    assert sha256_of(expert_file) == before


def test_shared_file_problems_are_named(tmp_path: Path, shared: SharedComponents) -> None:
    path = save_shared(shared, tmp_path / "shared.safetensors")
    rewrite(path, tensors=lambda t: {k: v for k, v in t.items() if k != "output_norm.bias"})
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['output_norm.bias'\]"):
        load_shared(path)
    expert = save_expert(make_model(shared), tmp_path / "expert.safetensors")
    with pytest.raises(
        CheckpointError, match="expected a checkpoint of kind 'shared'.*load_expert"
    ):
        load_shared(expert)


def test_missing_path_and_directory(tmp_path: Path, shared: SharedComponents) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_expert(missing, shared)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_metadata(missing)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_shared(tmp_path)
    assert not missing.exists()


def test_a_path_that_is_not_one_is_named(tmp_path: Path, shared: SharedComponents) -> None:
    """`None` or bytes for a path: a TypeError naming `path`, not one from inside pathlib."""
    model = make_model(shared)
    calls = {
        "save_expert": lambda p: save_expert(model, p),
        "save_shared": lambda p: save_shared(shared, p),
        "load_expert": lambda p: load_expert(p, shared),
        "load_shared": lambda p: load_shared(p),
    }
    for name, call in calls.items():
        for bad, shown in ((None, "got None"), (b"x.safetensors", "got bytes b'x.safetensors'")):
            with pytest.raises(TypeError, match=r"^path must be a file path") as error:
                call(bad)
            assert str(error.value).endswith(shown), (name, str(error.value))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(expert_file: Path, shared: SharedComponents) -> None:
    expert_file.chmod(0)
    try:
        with pytest.raises(PermissionError, match="expert.safetensors"):
            load_expert(expert_file, shared)
    finally:
        expert_file.chmod(0o644)


# --------------------------------------------------------------------------- atomic writes


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_failed_serialization_leaves_previous_file(
    expert_file: Path, shared: SharedComponents, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sha256_of(expert_file)

    def broken_save(*args, **kwargs):
        raise RuntimeError("serializer exploded")

    monkeypatch.setattr("modularforge.files.checkpoint.safetensors_save", broken_save)
    with pytest.raises(RuntimeError, match="serializer exploded"):
        save_expert(make_model(shared, seed=9), expert_file)
    assert sha256_of(expert_file) == before
    assert _temp_files(expert_file.parent) == []


def test_write_killed_midway_leaves_previous_file_and_no_temp(
    expert_file: Path, shared: SharedComponents, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sha256_of(expert_file)
    seen = []

    def half_then_fail(fd: int, data) -> None:
        os.write(fd, bytes(memoryview(data)[: len(data) // 2]))
        seen.extend(_temp_files(expert_file.parent))  # the partial file exists right now
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_write_all", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_expert(make_model(shared, seed=9), expert_file)
    assert len(seen) == 1 and seen[0].startswith(".expert.safetensors.tmp-")
    assert sha256_of(expert_file) == before
    assert _temp_files(expert_file.parent) == []
    load_expert(expert_file, shared)  # still a valid checkpoint


def test_stale_temp_files_are_removed_by_next_save(
    expert_file: Path, shared: SharedComponents
) -> None:
    directory = expert_file.parent
    dead = directory / ".expert.safetensors.tmp-999999999-dead"  # above any pid_max
    garbage = directory / ".expert.safetensors.tmp-garbage"
    live = directory / f".expert.safetensors.tmp-{os.getpid()}-live"  # a save in progress
    old = directory / f".expert.safetensors.tmp-{os.getpid()}-old"
    other_target = directory / ".other.safetensors.tmp-999999999-dead"
    for path in (dead, garbage, live, old, other_target):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * atomic.STALE_AFTER_S,) * 2)

    save_expert(make_model(shared), expert_file)
    assert _temp_files(directory) == sorted([live.name, other_target.name])
    assert remove_stale_temp_files(directory / "other.safetensors") == [other_target]


def test_atomic_write_bytes_replaces_content_and_checks_target(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    assert atomic_write_bytes(target, b"new contents") == target
    assert target.read_bytes() == b"new contents"
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        atomic_write_bytes(tmp_path / "missing-dir" / "x.bin", b"data")
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path, b"data")
    assert _temp_files(tmp_path) == []
