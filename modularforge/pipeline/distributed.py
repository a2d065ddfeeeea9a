"""Train many experts at once, one process per CPU socket or GPU, with `torchrun`.

Phase 2 is embarrassingly parallel: every expert is trained against the same
frozen trunk and never looks at another expert, so N processes can train N
experts at the same time with no gradient exchange at all. The only
communication is at the end, when rank 0 gathers what each rank did and writes
one manifest. The engine is `torch.distributed` (gloo on CPU, NCCL on CUDA),
started by `torchrun`, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT for each process (the `env://` rendezvous)::

    torchrun --nproc_per_node=2 -m modularforge train-experts \\
        --shared shared.safetensors --domains english,licenses,python --out experts/

Expert i goes to rank i % world_size and is trained by `train.train_expert`
with `expert_idx=i`, which seeds it from `seed` and `i` alone. So an expert does
not depend on which rank trained it or on what that rank trained before: it is
bit-for-bit the expert a single process would train in a loop, given the same
number of CPU threads (float sums are grouped differently with more threads,
and torchrun sets OMP_NUM_THREADS=1 when it starts more than one process).

Without torchrun (no RANK in the environment) the command runs as one process
and needs no process group.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.checkpoint import load_shared, save_expert, shared_fingerprint
from modularforge.files.finite_json import dumps_finite
from modularforge.files.regular_file import open_regular_file
from modularforge.model.shared import SharedComponents
from modularforge.pipeline.manifest import MANIFEST_FORMAT
from modularforge.pipeline.memory_check import live_tensor_bytes
from modularforge.training.data import domain_tokens, require_known_domains
from modularforge.training.train import TrainSettings, train_expert

#: Version of the manifest's layout, bumped when a field changes meaning.
MANIFEST_VERSION = 1
#: The manifest's file name inside the output directory.
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ExpertRecord:
    """What one rank reports about one expert it trained (one row of the manifest)."""

    expert_idx: int
    domain: str
    rank: int
    file: str  # file name inside the output directory
    sha256: str  # of the whole expert file, to check a copy or a shared filesystem
    n_parameters: int
    val_loss_start: float  # validation loss of the fresh expert, before step 0
    val_loss_end: float  # after the last step
    seconds: float  # training wall-clock time of this expert
    peak_bytes: int  # CUDA: max_memory_allocated during this expert; CPU: process max RSS so far
    live_before_bytes: int = 0  # tensors alive in this process before the expert was built
    live_after_bytes: int = 0  # ... after it was saved and dropped (equal unless it leaked)


def expert_filename(expert_idx: int, domain: str) -> str:
    """`expert-{i}-{domain}.safetensors`: the index first, so a listing sorts by expert."""
    return f"expert-{expert_idx}-{domain}.safetensors"


def assign_experts(n_experts: int, world_size: int) -> dict[int, list[int]]:
    """Round-robin: expert i goes to rank i % world_size; rank -> its experts, in order.

    Round-robin rather than contiguous blocks, so that with E experts and R ranks
    every rank gets either floor(E/R) or ceil(E/R) of them, and the wall-clock
    time is ceil(E/R) experts long.
    """
    if n_experts < 0 or world_size < 1:
        raise ValueError(f"need n_experts >= 0 and world_size >= 1, got {n_experts}, {world_size}")
    return {rank: list(range(rank, n_experts, world_size)) for rank in range(world_size)}


def parse_domains(text: str) -> list[str]:
    """`"english,licenses"` -> `["english", "licenses"]`, each checked against the corpus.

    Checked on every rank before any work starts, so a typo fails everywhere at
    once instead of leaving the other ranks waiting for a rank that died.
    """
    domains = [name.strip() for name in text.split(",") if name.strip()]
    if not domains:
        raise ValueError("--domains needs at least one domain, e.g. english,python")
    require_known_domains(domains)
    return domains


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is. `world_size == 1` without torchrun: no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group was started

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def choose_device(device: str | None, local_rank: int) -> str:
    """One GPU per process: `cuda:LOCAL_RANK` when CUDA is asked for (or present), else the CPU.

    A bare `cuda` becomes `cuda:LOCAL_RANK`, otherwise every process on a node
    would crowd onto GPU 0; an explicit index (`cuda:1`) is taken as given.
    """
    if device is None:
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local_rank}"
    return device


def backend_for(device: str) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones (NCCL cannot move CPU tensors)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device: str | None) -> tuple[DistributedContext, str]:
    """Start the process group if torchrun started us; return the context and the device.

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; their absence means a plain
    `python -m modularforge`, a world of one that needs no group.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext(), choose_device(device, 0)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device, local_rank)
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))  # all_gather_object uses the current device
    dist.init_process_group(backend=backend, init_method="env://")
    return DistributedContext(rank, world_size, local_rank, backend), device


def _peak_bytes(device: str) -> int:
    """Cheap peak memory: CUDA's allocator high-water mark, or the process max RSS on CPU.

    The CUDA figure is reset before each expert, so it is that expert's own peak. The
    CPU figure is the whole process (runtime, trunk, every expert so far), a
    high-water mark that never goes down: it cannot show whether memory stays flat
    from one expert to the next, which is why each record also carries the live
    tensor bytes before and after its expert. 0 where the platform cannot report it.
    """
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    try:
        import resource  # POSIX only
    except ImportError:
        return 0
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def train_assigned(
    shared: SharedComponents,
    domains: list[str],
    settings: TrainSettings,
    out_dir: str | os.PathLike[str],
    rank: int = 0,
    world_size: int = 1,
) -> list[ExpertRecord]:
    """Train and save the experts `assign_experts` gives to `rank`; one record each.

    `shared` is this rank's own copy of the frozen trunk (each process needs the
    weights in its own memory anyway). Expert i trains on `domains[i]` with
    `expert_idx=i` and is saved expert-only into `out_dir`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    mine = assign_experts(len(domains), world_size)[rank]
    for expert_idx in mine:  # tokenize (and cache) this rank's data before any count
        domain_tokens(domains[expert_idx], shared.config.vocab_size)
    for expert_idx in mine:
        domain = domains[expert_idx]
        if torch.device(settings.device or "cpu").type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch.device(settings.device))
        live_before = live_tensor_bytes()
        model, history = train_expert(shared, domain, settings, expert_idx=expert_idx)
        path = save_expert(model, out_dir / expert_filename(expert_idx, domain))
        records.append(
            ExpertRecord(
                expert_idx=expert_idx,
                domain=domain,
                rank=rank,
                file=path.name,
                sha256=sha256_file(path),
                n_parameters=sum(p.numel() for p in model.trainable_parameters()),
                val_loss_start=history.val_loss[0],
                val_loss_end=history.val_loss[-1],
                seconds=history.seconds,
                peak_bytes=_peak_bytes(settings.device or "cpu"),
                live_before_bytes=live_before,
            )
        )
        del model
        records[-1] = replace(records[-1], live_after_bytes=live_tensor_bytes())
    return records


def build_manifest(
    gathered: list[dict[str, Any]],
    shared_path: str | os.PathLike[str],
    domains: list[str],
    settings: TrainSettings,
    context: DistributedContext,
    seconds: float,
) -> dict[str, Any]:
    """The manifest rank 0 writes: the run's inputs, one row per expert, one per rank."""
    experts = sorted(
        (record for report in gathered for record in report["experts"]),
        key=lambda record: record["expert_idx"],
    )
    return {
        "manifest_version": MANIFEST_VERSION,
        "shared": str(shared_path),
        "shared_fingerprint": gathered[0]["shared_fingerprint"],
        "domains": domains,
        "settings": asdict(settings),
        "world_size": context.world_size,
        "backend": context.backend,
        "assignment": {
            str(rank): experts_of
            for rank, experts_of in assign_experts(len(domains), context.world_size).items()
        },
        "experts": experts,
        "ranks": [
            {key: report[key] for key in ("rank", "device", "threads", "load_seconds", "seconds")}
            for report in gathered
        ],
        "seconds": seconds,
    }


def _gather(report: dict[str, Any], context: DistributedContext) -> list[dict[str, Any]]:
    """Every rank's report, in rank order (a list of one without a process group)."""
    if not context.is_distributed:
        return [report]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, report)
    return gathered


def run_train_experts(args: argparse.Namespace) -> int:
    """The `train-experts` subcommand: train, gather, and write the manifest on rank 0.

    A rank whose training fails still takes part in the gather (with its error
    instead of its records), so the others never wait forever for it; then every
    rank exits with status 1 and rank 0 prints which rank failed and why.
    """
    domains = parse_domains(args.domains)
    if not Path(args.shared).is_file():
        raise FileNotFoundError(f"--shared {args.shared}: no such file")
    refuse_foreign_manifest(args.out)  # before any training: never overwrite another's record
    started = time.perf_counter()
    context, device = init_distributed(args.device)
    try:
        settings = TrainSettings(
            steps=args.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lr=args.lr,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
        )
        report: dict[str, Any] = {
            "rank": context.rank,
            "device": device,
            "threads": torch.get_num_threads(),
            "experts": [],
            "error": None,
        }
        try:
            load_started = time.perf_counter()
            shared = load_shared(args.shared)
            report["load_seconds"] = time.perf_counter() - load_started
            report["shared_fingerprint"] = shared_fingerprint(shared)
            records = train_assigned(
                shared, domains, settings, args.out, context.rank, context.world_size
            )
            report["experts"] = [asdict(record) for record in records]
        except Exception as error:  # reported through the gather, re-raised below
            report["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        report["seconds"] = time.perf_counter() - started
        gathered = _gather(report, context)
        failed = [r for r in gathered if r["error"] is not None]
        if failed:
            if context.rank == 0:
                for r in failed:
                    print(f"error: rank {r['rank']} failed: {r['error']}", file=sys.stderr)
            return 1
        if context.rank == 0:
            manifest = build_manifest(
                gathered, args.shared, domains, settings, context, time.perf_counter() - started
            )
            path = write_manifest(manifest, args.out)
            for record in manifest["experts"]:
                print(
                    f"expert {record['expert_idx']} ({record['domain']}) on rank "
                    f"{record['rank']}: val loss {record['val_loss_start']:.4f} -> "
                    f"{record['val_loss_end']:.4f} in {record['seconds']:.1f} s"
                )
            n_experts, world = len(manifest["experts"]), context.world_size
            print(f"wrote {path} ({n_experts} experts, world size {world})")
        return 0
    finally:
        if context.is_distributed:
            dist.destroy_process_group()


def refuse_foreign_manifest(out_dir: str | os.PathLike[str]) -> None:
    """Refuse an `--out` whose `manifest.json` is not an earlier `train-experts` run's.

    Writing this command's manifest over a pipeline's (`train-experts --out` a
    pipeline folder) left the pipeline unable to resume; so another command's or an
    unreadable manifest is refused, naming it, and only a `train-experts` one is
    replaced.
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return
    fix = "choose another --out, or move the file away"
    try:
        with open_regular_file(path, "manifest") as handle:
            data = json.loads(handle.read(64 << 20).decode("utf-8"))
    except (ValueError, OSError, RecursionError) as error:
        raise ValueError(
            f"{path} exists and does not read as a train-experts manifest ({error}); "
            f"train-experts would overwrite it; {fix}"
        ) from None
    if isinstance(data, dict) and "manifest_version" in data and "format" not in data:
        return
    owner = (
        "a pipeline run's manifest (the pipeline could no longer resume if it were replaced)"
        if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
        else "not a train-experts manifest"
    )
    raise ValueError(f"{path} is {owner}; train-experts would overwrite it; {fix}")


def write_manifest(manifest: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write `manifest.json` atomically: a reader sees the old manifest or the whole new one."""
    path = Path(out_dir) / MANIFEST_NAME
    data = dumps_finite(manifest, str(path), indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(path, data.encode("utf-8"))


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a `train-experts` run, parsed."""
    return json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))


def add_train_experts_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train-experts` subcommand's options (`cli.main` registers the subcommand)."""
    parser.add_argument("--shared", type=Path, required=True, help="a shared-trunk checkpoint")
    parser.add_argument(
        "--domains", required=True, help="comma-separated; expert i trains on the i-th domain"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for experts+manifest")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per expert")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="base seed (each expert adds to it)")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK if present)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run_train_experts)
