"""`ModuleTrainerModel.save_expert` / `.load_expert`, used as the design document uses them.

The methods delegate to `modularforge.files.checkpoint`; these tests hold them to
that: the same bytes, the same checks, the same errors, and arguments named when
they are wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modularforge import ModelConfig, ModuleTrainerModel, SharedComponents
from modularforge.files.checkpoint import SharedMismatchError, load_expert, save_expert


def make_shared(seed: int = 0) -> SharedComponents:
    torch.manual_seed(seed)
    return SharedComponents(ModelConfig.tiny()).freeze()


def make_model(shared: SharedComponents, expert_idx: int = 3) -> ModuleTrainerModel:
    torch.manual_seed(1)
    model = ModuleTrainerModel(shared, shared.config, expert_idx)
    # Move every weight off its init (LayerNorm ones, zero biases), so a load that
    # silently kept a fresh expert could not pass for a real one.
    with torch.no_grad():
        for parameter in model.experts.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.fixture
def shared() -> SharedComponents:
    return make_shared()


@pytest.fixture
def model(shared: SharedComponents) -> ModuleTrainerModel:
    return make_model(shared)


@pytest.fixture
def saved(tmp_path: Path, model: ModuleTrainerModel) -> Path:
    return model.save_expert(tmp_path / "expert.safetensors")


def test_save_then_load_as_the_document_does_gives_identical_expert_weights(
    tmp_path: Path, shared: SharedComponents, model: ModuleTrainerModel
) -> None:
    path = model.save_expert(tmp_path / "expert.safetensors")
    loaded = ModuleTrainerModel.load_expert(path, shared)

    assert path == tmp_path / "expert.safetensors" and path.is_file()
    assert type(loaded) is ModuleTrainerModel
    assert loaded.expert_idx == model.expert_idx == 3
    assert loaded.shared is shared  # the trunk is the one given, not a copy from the file
    original, restored = model.experts.state_dict(), loaded.experts.state_dict()
    assert list(restored) == list(original)
    for name, tensor in original.items():
        assert torch.equal(restored[name], tensor), name
    fresh = ModuleTrainerModel(shared, shared.config).experts.state_dict()
    assert not torch.equal(fresh["0.fc1.weight"], restored["0.fc1.weight"])  # really loaded


def test_the_method_writes_the_same_file_as_the_function(
    tmp_path: Path, model: ModuleTrainerModel, saved: Path
) -> None:
    by_function = save_expert(model, tmp_path / "by_function.safetensors")
    assert saved.read_bytes() == by_function.read_bytes()


def test_loading_against_another_trunk_raises_the_functions_error(
    saved: Path, shared: SharedComponents
) -> None:
    other = make_shared(seed=1)
    with pytest.raises(SharedMismatchError, match="different shared weights") as by_method:
        ModuleTrainerModel.load_expert(saved, other)
    with pytest.raises(SharedMismatchError) as by_function:
        load_expert(saved, other)
    assert str(by_method.value) == str(by_function.value)
    assert "allow_shared_mismatch=True" in str(by_method.value)


def test_loading_against_another_trunk_can_be_forced_with_a_warning(saved: Path) -> None:
    with pytest.warns(UserWarning, match="loading anyway"):
        loaded = ModuleTrainerModel.load_expert(
            saved, make_shared(seed=1), allow_shared_mismatch=True
        )
    assert loaded.expert_idx == 3


def test_save_without_a_path_names_the_argument(tmp_path: Path, model: ModuleTrainerModel) -> None:
    with pytest.raises(TypeError, match=r"^path must be a file path .*got None$"):
        model.save_expert(None)
    with pytest.raises(TypeError, match="^path must be a file path") as by_function:
        save_expert(model, None)
    with pytest.raises(TypeError) as by_method:
        model.save_expert(None)
    assert str(by_method.value) == str(by_function.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_load_without_a_path_names_the_argument(shared: SharedComponents) -> None:
    with pytest.raises(TypeError, match=r"^path must be a file path .*got None$"):
        ModuleTrainerModel.load_expert(None, shared)


@pytest.mark.parametrize(
    ("bad_shared", "shown"),
    [
        (None, "got None"),
        ("shared.safetensors", "got str 'shared.safetensors'"),
        (Path("shared.safetensors"), "got a PosixPath|got a WindowsPath"),
        ("model", "got a ModuleTrainerModel"),
    ],
)
def test_load_with_something_other_than_a_trunk_names_the_argument(
    saved: Path, model: ModuleTrainerModel, bad_shared: object, shown: str
) -> None:
    bad = model if bad_shared == "model" else bad_shared
    with pytest.raises(TypeError, match=r"^shared must be a SharedComponents") as by_method:
        ModuleTrainerModel.load_expert(saved, bad)
    assert any(part in str(by_method.value) for part in shown.split("|")), by_method.value
    with pytest.raises(TypeError) as by_function:
        load_expert(saved, bad)
    assert str(by_method.value) == str(by_function.value)


def test_the_function_names_a_model_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"^model must be a ModuleTrainerModel .*got str"):
        save_expert("expert.safetensors", tmp_path / "expert.safetensors")


def test_load_expert_on_a_subclass_refuses_instead_of_returning_the_base_class(
    saved: Path, shared: SharedComponents
) -> None:
    class Variant(ModuleTrainerModel):
        pass

    with pytest.raises(TypeError, match="call ModuleTrainerModel.load_expert"):
        Variant.load_expert(saved, shared)
