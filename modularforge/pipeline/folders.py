"""Where a pipeline run writes, and the rule that keeps it inside its own folder.

Every file the pipeline writes has one name, given by a function below, under
`--out`. A run deletes files too (training states of experts trained against an
older trunk, a finished run's states), and a clean-up that globs a folder deletes
whatever is there: with `<out>/state` a symbolic link to somewhere else, a glob for
`*.safetensors` once deleted the link's target's files. So:

* `prepare_out_dir` refuses a subfolder (`experts`, `state`, `dense`) or an output
  file that is a symbolic link or not what it should be, before anything is
  written: the pipeline writes only real files in real folders under `--out`;
* `remove_states` deletes only the state files this run would itself write, by name,
  never a glob's findings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from modularforge.pipeline.manifest import MANIFEST_FORMAT
from modularforge.training.data import list_domains, load_text, tokenizer_path

#: Subfolders of a pipeline folder.
SUBDIRS = ("experts", "state", "dense", "mixed")
MANIFEST_NAME = "manifest.json"


class UnsafeOutputError(ValueError):
    """A path under `--out` is a link or the wrong kind of file; writing there could escape."""


def shared_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "shared.safetensors"


def phase1_ffn_path(out_dir: str | Path) -> Path:
    """The FFNs phase 1 trained together with the trunk (the phase-1 model's other half)."""
    return Path(out_dir) / "phase1-ffn.safetensors"


def expert_path(out_dir: str | Path, index: int, domain: str) -> Path:
    return Path(out_dir) / "experts" / f"expert-{index}-{domain}.safetensors"


def router_path(out_dir: str | Path, top_k: int) -> Path:
    return Path(out_dir) / f"router-top{top_k}.safetensors"


def state_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / "state" / f"{name}.state.safetensors"


def dense_paths(out_dir: str | Path) -> tuple[Path, Path]:
    """The dense baseline's trunk and FFN files."""
    dense = Path(out_dir) / "dense"
    return dense / "shared.safetensors", dense / "ffn.safetensors"


def mixing_paths(out_dir: str | Path, top_k: int) -> tuple[Path, Path]:
    """The mixing stage's trunk and router files (the experts are phase 2's)."""
    mixed = Path(out_dir) / "mixed"
    return mixed / "shared.safetensors", mixed / f"router-top{top_k}.safetensors"


def state_names(n_experts: int, top_k: Iterable[int] = (1, 2)) -> list[str]:
    """Names of every training state a run with `n_experts` experts may write."""
    return [
        "shared",
        *(f"expert-{i}" for i in range(n_experts)),
        *(f"router-top{k}" for k in top_k),
        "mixing",
        "dense",
    ]


def trunk_dependent_states(n_experts: int, top_k: Iterable[int] = (1, 2)) -> list[str]:
    """States that depend on the trunk (experts, routers): useless once the trunk is retrained."""
    return [name for name in state_names(n_experts, top_k) if name not in ("shared", "dense")]


def output_files(out_dir: str | Path, domains: Sequence[str]) -> list[Path]:
    """Every file a pipeline run over `domains` may write (states included)."""
    out = Path(out_dir)
    return [
        out / MANIFEST_NAME,
        shared_path(out),
        phase1_ffn_path(out),
        *(expert_path(out, i, d) for i, d in enumerate(domains)),
        *(router_path(out, k) for k in (1, 2)),
        *dense_paths(out),
        *(path for k in (1, 2) for path in mixing_paths(out, k)),
        *(state_path(out, name) for name in state_names(len(domains))),
    ]


def prepare_out_dir(out_dir: str | Path, domains: Sequence[str], create: bool = True) -> Path:
    """Check (and with `create`, make) the folder layout; refuse links and wrong kinds.

    The folder `--out` itself may be a link (the user chose it); what is inside it
    must be the pipeline's own: real subfolders, and no output file that is a link,
    so nothing the run writes or deletes can land outside `--out`.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder; give a folder path")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    for sub in SUBDIRS:
        folder = out / sub
        if folder.is_symlink():
            raise UnsafeOutputError(
                f"{folder} is a symbolic link; the pipeline writes and deletes only inside "
                f"{out}, so remove the link (or choose another --out)"
            )
        if folder.exists() and not folder.is_dir():
            raise UnsafeOutputError(f"{folder} exists and is not a folder; move it away")
        if create:
            folder.mkdir(exist_ok=True)
    for path in output_files(out, domains):
        if path.is_symlink():
            raise UnsafeOutputError(
                f"{path} is a symbolic link; the pipeline replaces only its own files, "
                "so remove the link (or choose another --out)"
            )
        if path.exists() and not path.is_file():
            raise UnsafeOutputError(f"{path} exists and is not a regular file; move it away")
    return out


def remove_states(out_dir: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the named training states (only regular files, never through a link)."""
    removed = []
    for name in names:
        path = state_path(out_dir, name)
        if path.is_symlink() or path.parent.is_symlink():
            raise UnsafeOutputError(f"{path} is or lies behind a symbolic link; not deleting it")
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes: what the manifest records to notice any change."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WritableCheck:
    """Checks once, right before a run's first training step, that its folders take writes.

    Not at the start of every run: a finished run verifies without writing, so it can
    be verified from read-only storage.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        self.checked = False

    def __call__(self) -> None:
        from modularforge.files.output_paths import check_writable_dir

        if not self.checked:
            for folder in (self.out, *(self.out / sub for sub in SUBDIRS)):
                check_writable_dir(folder, "--out")
            self.checked = True


#: The pipeline manifest's format marker, as it appears in the file's first bytes.
_PIPELINE_MARKER = json.dumps(MANIFEST_FORMAT).encode("utf-8")


def enclosing_pipeline_folder(path: str | Path) -> Path | None:
    """The pipeline folder `path` lies in (a parent holding a pipeline manifest), or None.

    Only `pipeline` writes into its folder, under its lock and its manifest; another
    command's output there would replace a file the manifest vouches for (a JSON
    summary over `shared.safetensors`) or slip past the lock. Reads at most the first
    4 KiB of each candidate manifest, so a huge or hostile file costs nothing.
    """
    for folder in Path(path).absolute().parents:
        manifest = folder / MANIFEST_NAME
        try:
            with open(manifest, "rb") as handle:
                head = handle.read(4096)
        except OSError:
            continue
        if _PIPELINE_MARKER in head:
            return folder
    return None


def data_fingerprint(vocab_size: int) -> dict[str, str]:
    """SHA-256 of every data file a run's numbers depend on: the tokenizer and each corpus.

    The manifest records it, and a rerun compares: checkpoints trained on other token
    ids or other text are not "verified" just because their own bytes are intact.
    Every corpus file counts, since phase 1 trains on the mix of all of them.
    """
    prints = {"tokenizer": sha256_file(tokenizer_path(vocab_size))}
    for domain in list_domains():
        text = load_text(domain).encode("utf-8")
        prints[f"corpus/{domain}"] = hashlib.sha256(text).hexdigest()
    return prints
