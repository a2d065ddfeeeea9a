"""More faults for the catalogue: hostile or damaged files met while LOADING.

`modularforge.chapters.ch07_faults` covers the clumsy cases (a truncated file, the wrong
trunk). These are the ones a hostile or very unlucky user meets: metadata edited
to make the loader allocate gigabytes, a config edited so the model computes
something else, FIFOs and devices where a file belongs, JSON nested a hundred
thousand deep, experts shuffled under a trained router, a training state whose
step was edited, and damaged tokenizer and corpus files. Each `Fault` triggers
one of them in a scratch directory; `tests/chapters/test_ch07_faults_loading.py` checks the
exception type and message of every one, and the book's chapter 7 prints them.

The file-forging helpers (`rewrite_checkpoint`, `write_raw_checkpoint`) are
public because the tests forge files the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from modularforge.chapters.ch07_faults import FAULT_CONFIG, Fault, _trunk, _with_data_dir
from modularforge.files.checkpoint import (
    METADATA_KEY,
    CheckpointConfigError,
    CheckpointError,
    load_shared,
    save_shared,
    trunk_fingerprint,
)
from modularforge.files.regular_file import SpecialFileError
from modularforge.model.config import ModelConfig
from modularforge.model.trainer_model import ModuleTrainerModel

__all__ = [
    "LOADING_FAULTS",
    "nested_json",
    "read_checkpoint_parts",
    "rewrite_checkpoint",
    "write_raw_checkpoint",
]


# --------------------------------------------------------------------------- forging files


def read_checkpoint_parts(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(modularforge metadata, tensors) of a file this package wrote."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    return metadata, tensors


def rewrite_checkpoint(
    path: Path,
    *,
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    refingerprint: bool = False,
    drop: tuple[str, ...] = (),
) -> Path:
    """Edit a checkpoint in place the way an attacker with a text editor could.

    `config` updates fields of the metadata's config, `metadata` top-level fields,
    `tensors` maps the tensor dict to a new one, `drop` removes top-level
    metadata fields. With `refingerprint`, the
    stored trunk fingerprint is recomputed for the forged config and tensors, as
    a careful forger would (SHA-256 is a checksum, not a signature).
    """
    meta, weights = read_checkpoint_parts(path)
    if config:
        meta["config"] = {**meta["config"], **config}
    meta.update(metadata or {})
    for field in drop:
        meta.pop(field, None)
    if tensors is not None:
        weights = tensors(weights)
    if refingerprint:
        meta["shared_fingerprint"] = trunk_fingerprint(meta["config"], weights)
    weights = {name: t.contiguous().clone() for name, t in weights.items()}  # no shared storage
    path.write_bytes(safetensors_save(weights, {METADATA_KEY: json.dumps(meta)}))
    return path


def write_raw_checkpoint(path: Path, header: dict[str, Any] | str, data: bytes = b"") -> Path:
    """A safetensors container with any header (a dict, or raw JSON text) and data bytes."""
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode("utf-8")
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def nested_json(depth: int) -> str:
    """`[[[...]]]` nested `depth` deep: tiny on disk, a RecursionError for a naive parser."""
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------- triggers


def _shared_file(directory: Path) -> Path:
    return save_shared(_trunk(), directory / "shared.safetensors")


def _forged_layers(directory: Path) -> object:
    path = rewrite_checkpoint(
        _shared_file(directory), config={"n_layers": 10**6}, refingerprint=True
    )
    return load_shared(path)


def _forged_positions(directory: Path) -> object:
    path = rewrite_checkpoint(
        _shared_file(directory), config={"max_seq_len": 2_000_000}, refingerprint=True
    )
    return load_shared(path)


def _edited_heads(directory: Path) -> object:
    return load_shared(rewrite_checkpoint(_shared_file(directory), config={"n_heads": 8}))


def _old_format(directory: Path) -> object:
    return load_shared(rewrite_checkpoint(_shared_file(directory), metadata={"format_version": 1}))


def _fifo_checkpoint(directory: Path) -> object:
    path = directory / "shared.safetensors"
    os.mkfifo(path)
    return load_shared(path)


def _dev_zero_checkpoint(directory: Path) -> object:
    path = directory / "shared.safetensors"
    path.symlink_to("/dev/zero")
    return load_shared(path)


def _deep_header(directory: Path) -> object:
    path = directory / "shared.safetensors"
    return load_shared(write_raw_checkpoint(path, '{"x": ' + nested_json(100_000) + "}"))


def _router_files(directory: Path, order: Callable[[list], list]) -> object:
    from modularforge.mixture.moe import MixtureOfExperts, load_router, save_router

    shared = _trunk()
    models = []
    for index in range(3):
        torch.manual_seed(10 + index)
        models.append(ModuleTrainerModel(shared, FAULT_CONFIG, index))
    path = save_router(MixtureOfExperts.from_trainer_models(models), directory / "router.st")
    return load_router(MixtureOfExperts.from_trainer_models(order(models)), path)


def _permuted_experts(directory: Path) -> object:
    return _router_files(directory, lambda models: [models[1], models[0], models[2]])


def _replaced_expert(directory: Path) -> object:
    def replace(models: list) -> list:
        torch.manual_seed(99)
        return [*models[:2], ModuleTrainerModel(models[0].shared, FAULT_CONFIG, 2)]

    return _router_files(directory, replace)


def state_parts() -> tuple[Any, Any]:
    """(training settings, a function giving fresh model/optimizer/scheduler/stream):
    what a training-state file is saved from and loaded into, for the state faults."""
    from modularforge.training.data import BatchStream
    from modularforge.training.train import TrainSettings, make_optimizer

    settings = TrainSettings(steps=4, batch_size=2, seq_len=8, progress=False)
    model = ModuleTrainerModel(_trunk(), FAULT_CONFIG)

    def parts() -> dict[str, Any]:
        optimizer = make_optimizer(model.parameters(), settings)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        stream = BatchStream(torch.arange(64), 2, 8, seed=0)
        return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "stream": stream}

    return settings, parts


def _edited_step(directory: Path) -> object:
    from modularforge.training.train import TrainingHistory
    from modularforge.training.training_state import load_training_state, save_training_state

    settings, parts = state_parts()
    path = directory / "run.state.safetensors"
    save_training_state(path, **parts(), step=0, settings=settings, history=TrainingHistory())
    rewrite_checkpoint(path, metadata={"step": 10**9})
    return load_training_state(path, **parts(), settings=settings)


def _binary_tokenizer(directory: Path) -> object:
    from modularforge.training.data import load_tokenizer

    name = f"tokenizer-{FAULT_CONFIG.vocab_size}.json"
    return _with_data_dir(
        directory,
        {"prose.txt": b"text"},
        lambda: load_tokenizer(FAULT_CONFIG.vocab_size),
        extra={name: bytes(range(256))},
    )


def _empty_corpus_folder(directory: Path) -> object:
    from modularforge.training.data import load_mixed

    return _with_data_dir(directory, {}, lambda: load_mixed(FAULT_CONFIG.vocab_size))


def _fifo_corpus(directory: Path) -> object:
    from modularforge.training.data import load_text

    def action() -> object:
        os.mkfifo(directory / "data" / "corpus" / "prose.txt")
        return load_text("prose")

    return _with_data_dir(directory, {}, action)


def _lone_surrogate(directory: Path) -> object:
    from modularforge.training.data import encode, load_tokenizer

    # The shipped tokenizer of the tiny preset (the surrogate is refused before it is used).
    return encode("caf\udce9", load_tokenizer(ModelConfig.tiny().vocab_size))


def _float_ids_to_generate(directory: Path) -> object:
    from modularforge.training.generate import generate

    model = ModuleTrainerModel(_trunk(), FAULT_CONFIG)
    return generate(model, torch.tensor([1.7, 2.2]), max_new_tokens=3)


LOADING_FAULTS: list[Fault] = [
    Fault(
        area="checkpoint",
        symptom="a 1 MB shared file whose metadata claims `n_layers = 1000000`",
        trigger=_forged_layers,
        error=CheckpointError,
        message="n_layers: metadata says 1000000, the tensors have 2",
        fix="nothing to fix on your side: the file was tampered with; get the original",
    ),
    Fault(
        area="checkpoint",
        symptom="a shared file claiming `max_seq_len = 2000000`, fingerprint forged to match",
        trigger=_forged_positions,
        error=CheckpointConfigError,
        message="max_seq_len=2000000 would make the model build",
        fix="the file was tampered with; loading refuses before allocating the positions",
    ),
    Fault(
        area="checkpoint",
        symptom="`n_heads` edited in a shared file's metadata",
        trigger=_edited_heads,
        error=CheckpointError,
        message="does not match this file's config and weights",
        fix="use the file as it was saved; the fingerprint covers the config too",
    ),
    Fault(
        area="checkpoint",
        symptom="a shared file written by checkpoint format version 1",
        trigger=_old_format,
        error=CheckpointError,
        message="uses the old checkpoint format_version 1",
        fix="retrain, or re-save with the current modularforge",
    ),
    Fault(
        area="checkpoint",
        symptom="a FIFO (named pipe) given as the checkpoint",
        trigger=_fifo_checkpoint,
        error=CheckpointError,
        message="is a FIFO (named pipe), not a regular file",
        fix="give the path of the real file; nothing is opened that could block",
    ),
    Fault(
        area="checkpoint",
        symptom="the checkpoint path is a symlink to `/dev/zero`",
        trigger=_dev_zero_checkpoint,
        error=CheckpointError,
        message="is a character device, not a regular file",
        fix="point the path at a checkpoint file",
    ),
    Fault(
        area="checkpoint",
        symptom="a safetensors header with JSON nested 100,000 deep",
        trigger=_deep_header,
        error=CheckpointError,
        message="nested too deeply to parse",
        fix="the file is not a modularforge checkpoint; delete it (a pipeline retrains it)",
    ),
    Fault(
        area="mixture",
        symptom="trained routers loaded with experts 0 and 1 swapped",
        trigger=_permuted_experts,
        error=CheckpointError,
        message="the expert the routers knew at position 1 (permuted)",
        fix="load the experts in the order they had when the routers were trained",
    ),
    Fault(
        area="mixture",
        symptom="trained routers loaded with expert 2 replaced by a retrained one",
        trigger=_replaced_expert,
        error=CheckpointError,
        message="an expert the routers were never trained with",
        fix="retrain the routers for the new expert, or load the old expert",
    ),
    Fault(
        area="training",
        symptom="a training-state file whose `step` was edited to 10^9",
        trigger=_edited_step,
        error=CheckpointError,
        message="step 1000000000 is outside 0..4",
        fix="delete the state file to restart that run from the beginning",
    ),
    Fault(
        area="data",
        symptom="a binary tokenizer file",
        trigger=_binary_tokenizer,
        error=ValueError,
        message="is binary, not JSON text",
        fix="rebuild it with scripts/build_tokenizer.py (the message gives the command)",
    ),
    Fault(
        area="data",
        symptom="an empty corpus folder",
        trigger=_empty_corpus_folder,
        error=ValueError,
        message="holds no *.txt files, so there is nothing to train on",
        fix="put one UTF-8 text file per domain in data/corpus/",
    ),
    Fault(
        area="data",
        symptom="a corpus file that is a FIFO",
        trigger=_fifo_corpus,
        error=SpecialFileError,
        message="the corpus file is a FIFO (named pipe), not a regular file",
        fix="replace it with a text file",
    ),
    Fault(
        area="input",
        symptom="a prompt holding a lone surrogate (`'\\udce9'`)",
        trigger=_lone_surrogate,
        error=ValueError,
        message="lone surrogate",
        fix="decode the input with errors='replace', or remove the character",
    ),
    Fault(
        area="input",
        symptom="float token ids given to `generate`",
        trigger=_float_ids_to_generate,
        error=ValueError,
        message="must hold integer token ids (torch.long), got torch.float32",
        fix="pass the ids the tokenizer returned",
    ),
]
