"""Does the mixture pay? A miniature of BTX's comparison at equal training tokens, over seeds.

Arms, each trained per seed from that seed's initialisation and batch order:

* dense: the trunk with its FFNs trained whole on the mixed corpus for the whole
  token budget (`train.train_phase1` run for `budget_steps`);
* phase1: the same model after `phase1_steps` only (the seed every other arm starts from);
* branched_oracle: phase 1, then one expert per domain branched from the phase-1 FFNs
  (`branching`), each scored on its own domain (oracle routing);
* fresh_oracle: the same with freshly initialised experts (the package's phase 2);
* mix_router / mix_shared: the branched experts plus the phase-1 FFN as a generalist
  (`generalist`), routed as `routing` says (soft, top-1 or top-2; `routing`), then a
  mixing stage (`mixing`) on mixed data that trains the router alone / the router plus
  attention and norms, experts frozen;
* dense_eqflops: dense again, for as many steps as fit in the training FLOPs of the
  cheapest modular system that trains experts (the oracle arms), so quality can be
  compared at equal FLOPs as well as at equal tokens (`mixture_accounting`).

Each arm also records its training tokens and FLOPs per phase, its parameters and its
inference FLOPs per token (`mixture_accounting.arm_accounting`). Per seed the study
also keeps each branched expert's loss on every domain (the expert x domain heatmap)
and, for the mixing arms, the fraction of each domain's tokens each layer's router
sends to each expert (top-1 choice).

Tokens: optimizer steps x batch_size x seq_len of every training phase an arm went through.
Budget: phase1_steps + n_domains x expert_steps + mixing_steps = budget_steps, so mixing
arms and dense see equal tokens; oracle arms skip mixing and see fewer (recorded).

Scores: every arm is scored on the same validation windows: `windows_per_domain`
evenly spaced windows of each domain (`data.balanced_window_starts`, the windows
`train.evaluate_validation` uses for the mixed corpus); "mixed" is the mean over
domains, which is what the balanced mixed validation computes. Verdicts are not
stored; `study_verdicts` recomputes them with `spread.range_verdict`.

    OMP_NUM_THREADS=1 python -m modularforge.chapters.ch11_mixture_study --json book/data/mixture-study-tiny.json
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modularforge.chapters.ch11_study_memory import mixing_memory
from modularforge.files.atomic import atomic_write_bytes
from modularforge.measure.mixture_accounting import arm_accounting, phase_step_flops
from modularforge.measure.spread import MIN_SEEDS, Spread, range_verdict, spread
from modularforge.mixture.branching import branch_expert, train_expert_from
from modularforge.mixture.mixing import train_mixing
from modularforge.mixture.moe import MixtureOfExperts
from modularforge.mixture.routers import ROUTER_INPUTS, check_router_input
from modularforge.mixture.routing import build_mixture
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.training.data import (
    Batch,
    DomainData,
    balanced_window_starts,
    load_domain,
    load_mixed,
)
from modularforge.training.train import (
    TrainSettings,
    evaluate_batches,
    train_phase1,
)

__all__ = [
    "ARMS",
    "MODULAR",
    "MixtureStudySettings",
    "arm_spreads",
    "arm_labels",
    "dense_eqflops_steps",
    "domain_losses",
    "mixing_memory",
    "read_study",
    "routing_fractions",
    "run_mixture_study",
    "study_verdicts",
    "write_study",
]

FORMAT = "modularforge-mixture-study"
#: Every arm, in the order the book prints them, with a one-line label.
ARMS = {
    "dense": "dense (trunk + FFNs trained whole), whole budget",
    "phase1": "phase 1 alone",
    "fresh_oracle": "phase 1 + fresh experts, oracle routing",
    "branched_oracle": "phase 1 + branched experts, oracle routing",
    "mix_router": "branched + generalist, soft routing, mixing stage: router only",
    "mix_shared": "branched + generalist, soft routing, mixing stage: router + attention + norms",
    "dense_eqflops": "dense, as many steps as the oracle arms' training FLOPs allow",
}

#: The arms that train experts (what "the modular system" can mean).
MODULAR = ("fresh_oracle", "branched_oracle", "mix_router", "mix_shared")


@dataclass(frozen=True)
class MixtureStudySettings:
    """Everything the study's numbers depend on (stored in the JSON next to them)."""

    preset: str = "tiny"
    seeds: tuple[int, ...] = (0, 1, 2)
    budget_steps: int = 1000  # dense's steps = phase 1 + all experts + mixing
    phase1_steps: int = 700
    expert_steps: int = 80  # per domain expert
    mixing_steps: int = 60
    batch_size: int = 16
    seq_len: int = 64
    # Peak rates from the sweep on tuning seeds 100 and 101 (`ch11_lr_sweep`): dense and
    # phase 1 (whole-model runs) at 2.5e-3; experts and mixing at 3e-3, a fresh warm-up
    # well above the 2.5e-4 at which phase 1's cosine ended (the sweep's best for the
    # deployable mixture; continuing at 2.5e-4 is one of the study's ablations).
    lr: float = 2.5e-3
    later_lr: float = 3e-3
    later_warmup: int = 10
    aux_loss_weight: float = 0.01  # Switch balancing, as BTX
    windows_per_domain: int = 48
    domains: tuple[str, ...] = ("english", "licenses", "python")
    routing: str = "soft"  # of the mixing arms: "soft", "top1" or "top2"
    router_input: str = "layernorm"  # what the routers read (routers.ROUTER_INPUTS)
    generalist: bool = True  # the phase-1 FFN as an extra expert of the mixing arms
    dense_eqflops: bool = True  # train the dense arm at the oracle arms' FLOPs
    shared_trainable: str = "router+attention+norms"  # mix_shared's stage; "all" = BTX's full

    def __post_init__(self) -> None:
        if self.shared_trainable not in ("router+attention+norms", "all"):
            raise ValueError(
                f"shared_trainable must be 'router+attention+norms' or 'all' (experts and "
                f"embedding train too), got {self.shared_trainable!r}"
            )
        check_router_input(self.router_input)
        if self.routing not in ("soft", "top1", "top2"):
            raise ValueError(f"routing must be 'soft', 'top1' or 'top2', got {self.routing!r}")
        if len(self.seeds) < MIN_SEEDS or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"the study needs >= {MIN_SEEDS} distinct seeds, got {self.seeds}")
        spent = self.phase1_steps + len(self.domains) * self.expert_steps + self.mixing_steps
        if spent != self.budget_steps:
            raise ValueError(
                f"phase1_steps + n_domains * expert_steps + mixing_steps = {spent} must equal "
                f"budget_steps = {self.budget_steps}, or the arms would not see equal tokens"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def train(self, steps: int, seed: int, later: bool = False) -> TrainSettings:
        extra = (
            {"lr": self.later_lr, "warmup_steps": self.later_warmup} if later else {"lr": self.lr}
        )
        return TrainSettings(
            steps=steps, batch_size=self.batch_size, seq_len=self.seq_len, eval_every=steps,
            eval_batches=1, seed=seed, device="cpu", progress=False, **extra,
        )  # fmt: skip


def _domain_windows(data: DomainData, seq_len: int, windows: int) -> dict[str, Batch]:
    """The same validation windows for every arm: per domain, (inputs, targets) stacked."""
    if not data.val_parts:
        raise ValueError(f"{data.name!r} has no per-domain validation parts; pass load_mixed()")
    starts = balanced_window_starts(data.val_parts, seq_len, windows)
    out = {}
    for name, offsets in starts.items():
        tokens = data.val_parts[name]
        stacked = torch.stack([tokens[s : s + seq_len + 1] for s in offsets.tolist()])
        out[name] = (stacked[:, :-1], stacked[:, 1:])
    return out


def domain_losses(
    model: nn.Module, windows: Mapping[str, Batch], batch_size: int
) -> dict[str, float]:
    """Mean next-token loss of `model` on each domain's windows (eval mode)."""
    losses = {}
    for name, (inputs, targets) in windows.items():
        batches = [
            (inputs[i : i + batch_size], targets[i : i + batch_size])
            for i in range(0, len(inputs), batch_size)
        ]
        losses[name] = evaluate_batches(model, batches)
    return losses


def _score(losses: Mapping[str, float]) -> dict[str, Any]:
    return {"mixed": sum(losses.values()) / len(losses), "domains": dict(losses)}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def routing_fractions(
    moe: MixtureOfExperts, windows: Mapping[str, Batch], batch_size: int
) -> dict[str, list[list[float]]]:
    """Per domain, per layer: the fraction of the domain's tokens whose top-1 expert is each expert."""
    was_training = moe.training
    moe.eval()
    out = {}
    for name, (inputs, _) in windows.items():
        counts = torch.zeros(moe.config.n_layers, moe.n_experts)
        for i in range(0, len(inputs), batch_size):
            moe(inputs[i : i + batch_size])
            for layer, indices in enumerate(moe.last_routing):
                counts[layer] += torch.bincount(indices[..., 0].flatten(), minlength=moe.n_experts)
        out[name] = (counts / counts.sum(dim=1, keepdim=True)).tolist()
    moe.train(was_training)
    return out


def dense_eqflops_steps(settings: MixtureStudySettings) -> int:
    """Dense steps that fit in the oracle arms' training FLOPs (the cheapest arms with experts)."""
    config = ModelConfig.preset(settings.preset)
    budget = arm_accounting(_settings_dict(settings), "branched_oracle")["flops"]
    step = phase_step_flops(config, settings.batch_size, settings.seq_len, "dense")
    return budget // step


def arm_labels(settings: Mapping[str, Any]) -> dict[str, str]:
    """`ARMS` with the mixing arms' routing and generalist as the study ran them."""
    routing = settings.get("routing", "soft")
    mixed_in = "branched + generalist" if settings.get("generalist", True) else "branched"
    labels = dict(ARMS)
    for arm in ("mix_router", "mix_shared"):
        labels[arm] = labels[arm].replace("branched + generalist, soft routing",
                                          f"{mixed_in}, {routing} routing")  # fmt: skip
    if settings.get("shared_trainable", "router+attention+norms") == "all":
        labels["mix_shared"] = labels["mix_shared"].replace(
            "router + attention + norms", "everything, experts included"
        )
    return labels


def _settings_dict(settings: MixtureStudySettings) -> dict[str, Any]:
    return {**asdict(settings), "seeds": list(settings.seeds), "domains": list(settings.domains)}


def run_seed(
    settings: MixtureStudySettings,
    seed: int,
    mixed: DomainData,
    domains: Mapping[str, DomainData],
    reused: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every arm for one seed: {arm: {"mixed", "domains", ...}} (+ "matrix", "routing").

    `reused` holds dense arms already trained for this seed (same settings, see
    `reusable_dense`): they are copied instead of trained again; a dense arm missing
    from it with `settings.dense_eqflops` off is left out.
    """
    reused = reused or {}
    config = ModelConfig.preset(settings.preset)
    windows = _domain_windows(mixed, settings.seq_len, settings.windows_per_domain)
    bs = settings.batch_size
    out: dict[str, dict[str, Any]] = {}

    dense_arms = [("dense", settings.budget_steps)]
    if settings.dense_eqflops or "dense_eqflops" in reused:
        dense_arms.append(("dense_eqflops", dense_eqflops_steps(settings)))
    for arm, steps in dense_arms:
        if arm in reused:
            out[arm] = dict(reused[arm])
            continue
        dense, _ = train_phase1(config, settings.train(steps, seed), mixed)
        out[arm] = {**_score(domain_losses(dense, windows, bs)), "steps": steps}
        del dense

    scaffold, _ = train_phase1(config, settings.train(settings.phase1_steps, seed), mixed)
    out["phase1"] = _score(domain_losses(scaffold, windows, bs))
    shared: SharedComponents = scaffold.shared.freeze()
    phase1_ffn = scaffold.experts
    branched: list[nn.ModuleList] = []
    for init in ("fresh", "branched"):
        matrix: dict[str, dict[str, float]] = {}
        for idx, (name, data) in enumerate(domains.items()):
            model, _ = train_expert_from(
                shared, data, settings.train(settings.expert_steps, seed, later=True), init,
                phase1_ffn if init == "branched" else None, expert_idx=idx,
            )  # fmt: skip
            matrix[name] = domain_losses(model, windows, bs)  # this expert on every domain
            if init == "branched":
                branched.append(model.experts)
        own = {name: matrix[name][name] for name in domains}
        out[f"{init}_oracle"] = {**_score(own), "matrix": matrix}

    generalist = branch_expert(phase1_ffn) if settings.generalist else None
    base = build_mixture(shared, branched, settings.routing, generalist=generalist,
                         aux_loss_weight=settings.aux_loss_weight,
                         router_input=settings.router_input)  # fmt: skip
    for arm, trainable in (("mix_router", "router"), ("mix_shared", settings.shared_trainable)):
        moe: MixtureOfExperts = copy.deepcopy(base)
        train_mixing(moe, mixed, settings.train(settings.mixing_steps, seed, later=True), trainable,
                     freeze_experts=trainable != "all")  # fmt: skip
        out[arm] = {**_score(domain_losses(moe, windows, bs)),
                    "routing": routing_fractions(moe, windows, bs), "params": _params(moe)}  # fmt: skip
    return out


#: Settings that decide a dense arm's numbers (dense_eqflops also depends on the split).
DENSE_KEYS = ("preset", "seeds", "budget_steps", "batch_size", "seq_len", "windows_per_domain",
              "domains", "lr")  # fmt: skip
#: Settings added after the first studies were stored, with the value those studies ran with:
#: dense and phase 1 at the default peak rate, routers on the raw residual stream.
EARLIER_DEFAULTS = {"lr": 1e-2, "router_input": "raw"}
SPLIT_KEYS = ("phase1_steps", "expert_steps")


def reusable_dense(
    settings: MixtureStudySettings, source: Mapping[str, Any]
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per seed, the dense arms of a stored study that this study would train identically.

    Training is seeded and deterministic on CPU, so a stored dense arm with the same
    settings is the same numbers; `tests/chapters/test_ch11_stored_mixture_study.py` checks every
    reuse against its source. dense_eqflops is reused only when the split is the same.
    """
    mine, theirs = _settings_dict(settings), source["settings"]
    differ = [key for key in DENSE_KEYS if mine[key] != theirs[key]]
    if differ:
        raise ValueError(f"cannot reuse dense arms: settings {differ} differ from the source")
    arms = ["dense"]
    if "dense_eqflops" in source["arms"] and all(mine[k] == theirs[k] for k in SPLIT_KEYS):
        arms.append("dense_eqflops")
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for k, seed in enumerate(settings.seeds):
        out[seed] = {}
        for arm in arms:
            entry = source["arms"][arm]
            out[seed][arm] = {"mixed": entry["mixed"][k],
                              "domains": {d: v[k] for d, v in entry["domains"].items()},
                              "steps": entry.get("steps", mine["budget_steps"])}  # fmt: skip
    return out


def run_mixture_study(
    settings: MixtureStudySettings = MixtureStudySettings(),
    log: Callable[[str], None] = lambda line: None,
    reuse: tuple[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every arm for every seed, plus the mixing stage's memory; the JSON-ready study."""
    config = ModelConfig.preset(settings.preset)
    mixed = load_mixed(config.vocab_size)
    if set(settings.domains) != set(mixed.val_parts or {}):
        raise ValueError(f"settings.domains {settings.domains} != corpus {list(mixed.val_parts)}")
    domains = {name: load_domain(name, config.vocab_size) for name in settings.domains}
    started = time.perf_counter()
    stored = _settings_dict(settings)
    arms: dict[str, dict[str, Any]] = {
        arm: {"label": label, "mixed": [], "domains": {d: [] for d in settings.domains}}
        for arm, label in arm_labels(stored).items()
    }
    reused = reusable_dense(settings, reuse[1]) if reuse else {}
    if not settings.dense_eqflops and not any("dense_eqflops" in r for r in reused.values()):
        del arms["dense_eqflops"]
    for seed in settings.seeds:
        results = run_seed(settings, seed, mixed, domains, reused.get(seed))
        for arm, result in results.items():
            arms[arm]["mixed"].append(result["mixed"])
            for d in settings.domains:
                arms[arm]["domains"][d].append(result["domains"][d])
            for key in ("matrix", "routing"):  # per seed
                if key in result:
                    arms[arm].setdefault(key, []).append(result[key])
            if "params" in result:  # counted on the module, checked against the accounting
                arms[arm]["measured_params"] = result["params"]
            if "steps" in result:
                arms[arm]["steps"] = result["steps"]
        log(f"seed {seed}: " + ", ".join(f"{a} {r['mixed']:.3f}" for a, r in results.items())
            + f" ({time.perf_counter() - started:.0f} s)")  # fmt: skip
    for arm, entry in arms.items():
        entry.update(arm_accounting(stored, arm, entry.get("steps")))
    memory = mixing_memory(settings.preset, settings.batch_size, settings.seq_len)
    study = {"format": FORMAT, "settings": stored, "arms": arms, "memory": memory,
             "seconds": time.perf_counter() - started}  # fmt: skip
    if reuse:
        study["reused"] = {"from": reuse[0], "arms": sorted(next(iter(reused.values())))}
    return study


def write_study(study: Mapping[str, Any], path: str | Path, command: str) -> Path:
    """Write the study with the command that produced it (atomic)."""
    payload = {**study, "command": command}
    return atomic_write_bytes(Path(path), (json.dumps(payload, indent=1) + "\n").encode())


def read_stored(path: str | Path, file_format: str) -> dict[str, Any]:
    """Load a stored study, sweep or other JSON record, refusing files of another format."""
    stored = json.loads(Path(path).read_text())
    if stored.get("format") != file_format:
        raise ValueError(f"{path} is not a {file_format} file (format {stored.get('format')!r})")
    return stored


def read_study(path: str | Path) -> dict[str, Any]:
    """Load a stored study, refusing files of another format."""
    study = read_stored(path, FORMAT)
    study["settings"] = {**EARLIER_DEFAULTS, **study["settings"]}
    return study


def arm_spreads(study: Mapping[str, Any], column: str = "mixed") -> dict[str, Spread]:
    """Each arm's `Spread` of its mixed loss, or of one domain's loss (`column` = domain)."""
    out = {}
    for arm, entry in study["arms"].items():
        values = entry["mixed"] if column == "mixed" else entry["domains"][column]
        out[arm] = spread(values)
    return out


def study_verdicts(study: Mapping[str, Any]) -> dict[str, str]:
    """Recomputed verdicts: each arm vs dense (equal tokens) and vs dense_eqflops (equal FLOPs,
    where the study has it) on the mixed loss; branched vs fresh on each domain."""
    mixed = arm_spreads(study)
    verdicts = {f"{arm} vs dense": range_verdict(mixed[arm], mixed["dense"])
                for arm in mixed if arm != "dense"}  # fmt: skip
    if "dense_eqflops" in mixed:  # at equal training FLOPs (see `mixture_accounting`)
        for arm in MODULAR:
            verdicts[f"{arm} vs dense_eqflops"] = range_verdict(mixed[arm], mixed["dense_eqflops"])
    verdicts["mix_shared vs mix_router"] = range_verdict(mixed["mix_shared"], mixed["mix_router"])
    for domain in study["settings"]["domains"]:
        per = arm_spreads(study, domain)
        verdicts[f"branched vs fresh on {domain}"] = range_verdict(
            per["branched_oracle"], per["fresh_oracle"]
        )
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    defaults = MixtureStudySettings()
    for name in ("budget_steps", "phase1_steps", "expert_steps", "mixing_steps"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument("--routing", choices=("soft", "top1", "top2"), default=defaults.routing)
    parser.add_argument("--router-input", choices=ROUTER_INPUTS, default=defaults.router_input)
    for name in ("lr", "later_lr"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=float, default=getattr(defaults, name)
        )
    parser.add_argument("--no-generalist", action="store_true", help="mix the domain experts only")
    parser.add_argument("--shared-trainable", choices=("router+attention+norms", "all"),
                        default=defaults.shared_trainable, help="what mix_shared's stage trains")  # fmt: skip
    parser.add_argument("--no-dense-eqflops", action="store_true",
                        help="skip the dense arm at equal FLOPs (unless reused)")  # fmt: skip
    parser.add_argument("--reuse-dense", metavar="STUDY.json",
                        help="copy the dense arms of a stored study with the same settings")  # fmt: skip
    args = parser.parse_args(argv)
    settings = MixtureStudySettings(
        seeds=tuple(args.seeds), budget_steps=args.budget_steps, phase1_steps=args.phase1_steps,
        expert_steps=args.expert_steps, mixing_steps=args.mixing_steps, routing=args.routing,
        generalist=not args.no_generalist, dense_eqflops=not args.no_dense_eqflops,
        shared_trainable=args.shared_trainable, router_input=args.router_input, lr=args.lr,
        later_lr=args.later_lr,
    )  # fmt: skip
    reuse = (args.reuse_dense, read_study(args.reuse_dense)) if args.reuse_dense else None
    study = run_mixture_study(settings, log=lambda line: print(line, flush=True), reuse=reuse)
    command = "OMP_NUM_THREADS=1 python -m modularforge.chapters.ch11_mixture_study " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    write_study(study, args.json, command)
    for name, verdict in study_verdicts(study).items():
        print(f"{name}: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
