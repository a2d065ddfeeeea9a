"""Special files, damaged training states, tokenizers and corpora (issue 12, items 1, 6, 11, 18).

A FIFO, a device or a socket where a file belongs must be refused before it is
opened (opening a FIFO blocks; /dev/zero never ends). A guard turns a hang into
a test failure after a few seconds instead of blocking the suite.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from modularforge.chapters.ch07_faults_loading import nested_json, rewrite_checkpoint
from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.checkpoint import (
    CheckpointError,
    load_expert,
    load_shared,
    read_metadata,
    save_expert,
    save_shared,
)
from modularforge.files.regular_file import SpecialFileError
from modularforge.mixture.moe import MixtureOfExperts, load_router
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.training.data import (
    DATA_ENV_VAR,
    BatchStream,
    list_domains,
    load_domain,
    load_mixed,
    load_text,
    load_tokenizer,
    tokenizer_path,
)
from modularforge.training.train import TrainingHistory, TrainSettings, make_optimizer
from modularforge.training.training_state import load_training_state, save_training_state

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs and /dev need POSIX")

CONFIG = ModelConfig.tiny().replace(vocab_size=256, max_seq_len=32)
SHIPPED_VOCAB = ModelConfig.tiny().vocab_size


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail instead of blocking forever if something opens a FIFO or reads /dev/zero."""

    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError("the call blocked: a special file was opened or read")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_shared(seed: int = 0) -> SharedComponents:
    torch.manual_seed(seed)
    return SharedComponents(CONFIG).freeze()


# --------------------------------------------------------------------------- item 11


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


SPECIAL = {
    # kind: (make it at path, error type, message fragment)
    "fifo": (_fifo, SpecialFileError, "a FIFO (named pipe)"),
    "dev-zero": (lambda p: p.symlink_to("/dev/zero"), SpecialFileError, "a character device"),
    "dev-null": (lambda p: p.symlink_to("/dev/null"), SpecialFileError, "a character device"),
    "dev-urandom": (lambda p: p.symlink_to("/dev/urandom"), SpecialFileError, "character device"),
    "socket": (_socket, SpecialFileError, "a socket"),
    "symlink-to-fifo": (
        lambda p: (_fifo(p.with_suffix(".pipe")), p.symlink_to(p.with_suffix(".pipe"))),
        SpecialFileError,
        "a FIFO",
    ),
    "directory": (lambda p: p.mkdir(), IsADirectoryError, "is a directory"),
    "dangling-symlink": (lambda p: p.symlink_to(p.with_suffix(".gone")), FileNotFoundError, ""),
}


def _training_parts(model: torch.nn.Module, settings: TrainSettings) -> dict:
    optimizer = make_optimizer(model.parameters(), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stream = BatchStream(torch.arange(64), settings.batch_size, settings.seq_len, seed=0)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "stream": stream}


SETTINGS = TrainSettings(steps=4, batch_size=2, seq_len=8, progress=False)

CHECKPOINT_LOADERS: dict[str, Callable[[Path], object]] = {
    "load_shared": load_shared,
    "read_metadata": read_metadata,
    "load_expert": lambda p: load_expert(p, make_shared()),
    "load_router": lambda p: load_router(
        MixtureOfExperts.from_trainer_models([ModuleTrainerModel(make_shared(), CONFIG)]), p
    ),
    "load_training_state": lambda p: load_training_state(
        p,
        **_training_parts(ModuleTrainerModel(make_shared(), CONFIG), SETTINGS),
        settings=SETTINGS,
    ),
}


@pytest.mark.parametrize("loader", sorted(CHECKPOINT_LOADERS))
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_special_file_as_checkpoint_is_refused(tmp_path: Path, kind: str, loader: str) -> None:
    make, error, fragment = SPECIAL[kind]
    path = tmp_path / "model.safetensors"
    make(path)
    expected = CheckpointError if error is SpecialFileError else error
    with pytest.raises(expected) as raised:
        CHECKPOINT_LOADERS[loader](path)
    assert fragment in str(raised.value)
    assert "model.safetensors" in str(raised.value)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory with a corpus folder, in use for the test."""
    root = tmp_path / "data"
    (root / "corpus").mkdir(parents=True)
    monkeypatch.setenv(DATA_ENV_VAR, str(root))
    return root


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_special_file_as_corpus_is_refused(data_dir: Path, kind: str) -> None:
    make, error, fragment = SPECIAL[kind]
    make(data_dir / "corpus" / "prose.txt")
    with pytest.raises(error) as raised:
        load_text("prose")
    assert fragment in str(raised.value) and "prose.txt" in str(raised.value)


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_special_file_as_tokenizer_is_refused(data_dir: Path, kind: str) -> None:
    make, error, fragment = SPECIAL[kind]
    make(tokenizer_path(SHIPPED_VOCAB))
    with pytest.raises(error) as raised:
        load_tokenizer(SHIPPED_VOCAB)
    assert fragment in str(raised.value) and "tokenizer-2048.json" in str(raised.value)


# --------------------------------------------------------------------------- item 18


BAD_TOKENIZERS = {
    "empty": (b"", "is empty"),
    "blank": (b"  \n\t\n", "is empty"),
    "binary": (bytes(range(256)), "is binary, not JSON text"),
    "png-magic": (b"\x89PNG\r\n\x1a\n" + bytes(64), "is binary"),
    "gzip": (b"\x1f\x8b\x08\x00" + bytes(32), "is binary"),
    "latin-1": ("caf\u00e9 au lait".encode("latin-1"), "is binary"),
    "not-json": (b"hello tokenizer", "is not a valid tokenizer"),
    "json-object": (b"{}", "is not a valid tokenizer"),
    "json-list": (b"[]", "is not a valid tokenizer"),
    "json-number": (b"42", "is not a valid tokenizer"),
    "wrong-model": (b'{"model": 5}', "is not a valid tokenizer"),
    "truncated": (None, "is not a valid tokenizer"),
    "truncated-mid-character": ("caf\u00e9".encode()[:-1], "ends in the middle of a character"),
    "deep-json": (nested_json(100_000).encode(), "is not a valid tokenizer"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENIZERS))
def test_damaged_tokenizer_names_the_file_and_the_fix(data_dir: Path, case: str) -> None:
    content, fragment = BAD_TOKENIZERS[case]
    if content is None:  # the real file, cut in half
        shipped = Path(__file__).resolve().parents[2] / "data" / "tokenizer-2048.json"
        content = shipped.read_bytes()[: shipped.stat().st_size // 2]
        content = content.decode("utf-8", errors="ignore").encode()  # cut between characters
    path = tokenizer_path(SHIPPED_VOCAB)
    path.write_bytes(content)
    with pytest.raises(ValueError) as raised:
        load_tokenizer(SHIPPED_VOCAB)
    message = str(raised.value)
    assert type(raised.value) is ValueError
    assert fragment in message and str(path) in message
    assert "scripts/build_tokenizer.py --vocab-sizes 2048" in message


CORPUS_LAYOUTS = {
    "no-files": {},
    "only-markdown": {"notes.md": b"# notes"},
    "only-hidden-dir": {".git/HEAD": b"ref"},
    "upper-case-suffix": {"prose.TXT": b"text"},
}


@pytest.mark.parametrize("layout", sorted(CORPUS_LAYOUTS))
@pytest.mark.parametrize("call", ["load_mixed", "load_domain", "load_text"])
def test_empty_corpus_folder_is_explained(data_dir: Path, layout: str, call: str) -> None:
    for name, content in CORPUS_LAYOUTS[layout].items():
        path = data_dir / "corpus" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    assert list_domains() == []
    action = {
        "load_mixed": lambda: load_mixed(SHIPPED_VOCAB),
        "load_domain": lambda: load_domain("prose", SHIPPED_VOCAB),
        "load_text": lambda: load_text("prose"),
    }[call]
    with pytest.raises(ValueError, match=r"holds no \*\.txt files") as raised:
        action()
    assert str(data_dir / "corpus") in str(raised.value)
    assert "torch.cat" not in str(raised.value)


# --------------------------------------------------------------------------- training states


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    model = ModuleTrainerModel(make_shared(), CONFIG)
    path = tmp_path / "run.state.safetensors"
    history = TrainingHistory(steps=[0, 1], train_loss=[5.0, 4.0], learning_rate=[1e-3, 1e-3])
    parts = _training_parts(model, SETTINGS)
    for _ in range(2):  # two real steps, so every counter says 2
        inputs, _targets = next(parts["stream"])
        model(inputs).sum().backward()
        parts["optimizer"].step()
        parts["scheduler"].step()
    save_training_state(path, **parts, step=2, settings=SETTINGS, history=history)
    return path


def _load_state(path: Path) -> object:
    model = ModuleTrainerModel(make_shared(), CONFIG)
    return load_training_state(path, **_training_parts(model, SETTINGS), settings=SETTINGS)


def test_state_fixture_loads(state_file: Path) -> None:
    """Positive control: the untouched file resumes at step 2."""
    step, history = _load_state(state_file)
    assert step == 2 and history["steps"] == [0, 1]


STATE_EDITS = {
    "step-1e9": ({"step": 10**9}, "step 1000000000 is outside 0..4"),
    "step-negative": ({"step": -5}, "step -5 is outside 0..4"),
    "step-past-end": ({"step": 5}, "step 5 is outside 0..4"),
    "step-at-end": ({"step": 4}, "disagrees with scheduler last_epoch 2"),
    "step-zero": ({"step": 0}, "disagrees with"),
    "step-string": ({"step": "2"}, "'step' must be a JSON int"),
    "step-float": ({"step": 2.0}, "'step' must be a JSON int"),
    "step-bool": ({"step": True}, "'step' must be a JSON int"),
    "step-null": ({"step": None}, "'step' must be a JSON int"),
    "settings-list": ({"settings": []}, "'settings' must be a JSON dict"),
    "parameters-dict": ({"parameters": {}}, "'parameters' must be a JSON list"),
    "history-string": ({"history": "x"}, "'history' must be a JSON dict"),
    "scheduler-null": ({"scheduler": None}, "'scheduler' must be a JSON dict"),
    "stream-number": ({"stream": 3}, "'stream' must be a JSON dict"),
    "optimizer-keys-list": ({"optimizer_state_keys": []}, "must be a JSON dict"),
}


@pytest.mark.parametrize("case", sorted(STATE_EDITS))
def test_edited_training_state_is_refused(state_file: Path, case: str) -> None:
    edit, fragment = STATE_EDITS[case]
    rewrite_checkpoint(state_file, metadata=edit)
    with pytest.raises(CheckpointError) as raised:
        _load_state(state_file)
    assert fragment in str(raised.value)


STATE_TENSOR_EDITS = {
    "param-shape": (
        lambda t: {**t, "model.experts.0.fc1.weight": torch.zeros(3, 3)},
        "model.experts.0.fc1.weight: shape [3, 3] in checkpoint, training run expects",
    ),
    "param-dtype": (
        lambda t: {**t, "model.experts.0.fc1.bias": t["model.experts.0.fc1.bias"].double()},
        "dtype F64 in checkpoint",
    ),
    "moment-shape": (
        lambda t: {**t, "optimizer.0.exp_avg": torch.zeros(7)},
        "optimizer.0.exp_avg: shape [7]",
    ),
    "missing-rng": (lambda t: {k: v for k, v in t.items() if k != "rng.torch"}, "['rng.torch']"),
    "extra-tensor": (lambda t: {**t, "model.evil": torch.zeros(2)}, "unexpected tensor(s)"),
    "optimizer-step-edited": (
        lambda t: {**t, "optimizer.0.step": torch.tensor(9.0)},
        "the optimizer's step counter",
    ),
}


@pytest.mark.parametrize("case", sorted(STATE_TENSOR_EDITS))
def test_training_state_tensors_are_checked(state_file: Path, case: str) -> None:
    edit, fragment = STATE_TENSOR_EDITS[case]
    rewrite_checkpoint(state_file, tensors=edit)
    with pytest.raises(CheckpointError) as raised:
        _load_state(state_file)
    assert fragment in str(raised.value)


def test_garbage_training_state_is_a_checkpoint_error(tmp_path: Path) -> None:
    for content in (b"", b"garbage" * 10, nested_json(10).encode()):
        path = tmp_path / "run.state.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError):
            _load_state(path)


def test_shared_and_expert_files_still_load_after_all_checks(tmp_path: Path) -> None:
    """Positive control for the families above: honest files pass every check."""
    shared = make_shared()
    shared_path = save_shared(shared, tmp_path / "shared.safetensors")
    expert_path = save_expert(ModuleTrainerModel(shared, CONFIG), tmp_path / "expert.safetensors")
    loaded = load_shared(shared_path)
    assert load_expert(expert_path, loaded).config == CONFIG


def test_file_swapped_for_a_fifo_after_its_header_was_read(tmp_path: Path) -> None:
    """The tensor reader checks the path again instead of trusting the earlier header read."""
    from modularforge.files.checkpoint_format import load_checked_tensors, read_checkpoint_header

    shared = make_shared()
    path = save_shared(shared, tmp_path / "shared.safetensors")
    specs = read_checkpoint_header(path)["tensors"]
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(CheckpointError, match="a FIFO"):
        load_checked_tensors(path, specs, shared.state_dict())


def test_a_save_refuses_to_replace_a_fifo_and_leaves_it_in_place(tmp_path: Path) -> None:
    """The final rename would turn a named pipe (or /dev/null) into a regular file."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(SpecialFileError, match=r"a FIFO \(named pipe\), not a regular file"):
        atomic_write_bytes(fifo, b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe.safetensors"]  # no temp left


def test_save_shared_to_dev_null_is_refused_and_dev_null_survives() -> None:
    with pytest.raises(SpecialFileError, match="/dev/null is a character device"):
        save_shared(SharedComponents(ModelConfig.tiny()), "/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_negative_control_a_regular_file_and_a_new_name_are_still_written(tmp_path: Path) -> None:
    existing = tmp_path / "old.bin"
    existing.write_bytes(b"old")
    atomic_write_bytes(existing, b"new")
    atomic_write_bytes(tmp_path / "fresh.bin", b"fresh")
    assert existing.read_bytes() == b"new" and (tmp_path / "fresh.bin").read_bytes() == b"fresh"
