"""The expert-saving chapter's helpers: sizes, disk arithmetic, and the harmless pickle trap."""

from __future__ import annotations

import pickle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from modularforge.chapters.ch04_saving_demo import (  # noqa: E402
    MARKER_TEXT,
    DiskUsage,
    MarkerOnUnpickle,
    describe_error,
    disk_usage_for_experts,
    max_abs_difference,
    pick_lines,
    plot_disk_usage,
    plot_file_sizes,
    save_expert_like_the_document,
    save_full_model,
    wrap_for_page,
    write_pickle_trap,
)
from modularforge.files.checkpoint import CheckpointError, load_expert, load_shared  # noqa: E402
from modularforge.measure.memory import MB  # noqa: E402
from modularforge.model.config import ModelConfig  # noqa: E402
from modularforge.model.shared import SharedComponents  # noqa: E402
from modularforge.model.trainer_model import ModuleTrainerModel  # noqa: E402


@pytest.fixture
def model() -> ModuleTrainerModel:
    torch.manual_seed(0)
    config = ModelConfig.tiny()
    return ModuleTrainerModel(SharedComponents(config).freeze(), config)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_document_style_file_holds_the_expert(model: ModuleTrainerModel, tmp_path: Path) -> None:
    path = save_expert_like_the_document(model, tmp_path / "expert.pt")
    state = torch.load(path, weights_only=True)
    assert state["expert_idx"] == 0
    assert state["config"] == {"d_model": 128, "d_ff": 512, "n_layers": 2, "expert_dropout": 0.0}
    assert set(state["experts_state_dict"]) == set(model.experts.state_dict())
    n_params = sum(p.numel() for p in model.experts.parameters())
    # Pickle overhead is small: within 5% of the raw float32 bytes.
    assert n_params * 4 <= path.stat().st_size < n_params * 4 * 1.05


def test_full_model_file_holds_every_parameter_once(
    model: ModuleTrainerModel, tmp_path: Path
) -> None:
    path = save_full_model(model, tmp_path / "full.safetensors")
    tensors = load_file(path)
    assert set(tensors) == set(model.state_dict())
    assert "shared.positions" not in tensors
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensors[name], tensor)


def test_disk_usage_arithmetic() -> None:
    usage = disk_usage_for_experts(shared_bytes=50, expert_bytes=30, full_bytes=81, max_experts=4)
    assert [u.n_experts for u in usage] == [1, 2, 3, 4]
    assert usage[0] == DiskUsage(1, 80, 81)
    assert usage[3] == DiskUsage(4, 170, 324)
    assert usage[3].saved_fraction == pytest.approx(1 - 170 / 324)
    with pytest.raises(ValueError, match="max_experts"):
        disk_usage_for_experts(50, 30, 81, 0)


def test_pickle_payload_runs_only_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    data = pickle.dumps(MarkerOnUnpickle(marker))
    assert not marker.exists()
    pickle.loads(data)
    assert marker.read_text(encoding="utf-8") == MARKER_TEXT


def test_trap_is_refused_by_load_expert_without_unpickling(
    model: ModuleTrainerModel, tmp_path: Path
) -> None:
    marker = tmp_path / "marker.txt"
    trap = write_pickle_trap(tmp_path / "expert.safetensors", marker)
    with pytest.raises(CheckpointError, match="never unpickled"):
        load_expert(trap, model.shared)
    with pytest.raises(CheckpointError):
        load_shared(trap)
    assert not marker.exists()


def test_trap_runs_code_under_torch_load_weights_only_false(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    trap = write_pickle_trap(tmp_path / "expert.pt", marker)
    with pytest.raises(pickle.UnpicklingError, match="leave_marker"):
        torch.load(trap, weights_only=True)
    assert not marker.exists()
    torch.load(trap, weights_only=False)
    assert marker.read_text(encoding="utf-8") == MARKER_TEXT


def test_describe_error_hides_the_directory(tmp_path: Path) -> None:
    error = CheckpointError(f"{tmp_path / 'x.safetensors'}: bad")
    assert describe_error(error, tmp_path) == "CheckpointError: x.safetensors: bad"
    assert describe_error(ValueError("plain")) == "ValueError: plain"


def test_pick_lines() -> None:
    text = "Error(s) in loading:\n\tsize mismatch for a\n\tsize mismatch for b\n"
    assert pick_lines(text) == "Error(s) in loading:"
    assert pick_lines(text, "size mismatch", limit=5) == "size mismatch for a\nsize mismatch for b"


def test_max_abs_difference() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    assert max_abs_difference(a, a.clone()) == 0.0
    assert max_abs_difference(a, torch.tensor([1.0, 2.5, 2.0])) == 1.0


def test_plots_show_megabytes() -> None:
    ax = plot_file_sizes({"expert-only": 33_614_448, "shared": 50_387_744}, ("expert-only",))
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([33.614448, 50.387744])
    assert ax.patches[0].get_facecolor() != ax.patches[1].get_facecolor()
    ax = plot_file_sizes({"a": 10 * MB}, references={"doc: 100 MB": 100})
    assert [tuple(line.get_ydata()) for line in ax.lines] == [(100, 100)]
    assert ax.get_ylim()[1] >= 100
    usage = disk_usage_for_experts(50 * MB, 30 * MB, 80 * MB, 3)
    ax = plot_disk_usage(usage)
    ys = sorted(tuple(line.get_ydata()) for line in ax.lines)
    assert ys == [(80.0, 110.0, 140.0), (80.0, 160.0, 240.0)]


@pytest.mark.parametrize("length", [10, 80, 165, 392])
def test_wrap_for_page_keeps_every_word_and_every_line_within_the_width(length: int) -> None:
    text = ("word " * length)[:length].strip()
    wrapped = wrap_for_page(text)
    assert max(len(line) for line in wrapped.splitlines()) <= 80
    assert wrapped.split() == text.split()  # nothing lost or truncated


def test_describe_error_wraps_a_long_message(tmp_path: Path) -> None:
    error = CheckpointError("x " * 150)
    lines = describe_error(error, tmp_path).splitlines()
    assert len(lines) > 1 and all(len(line) <= 80 for line in lines)
