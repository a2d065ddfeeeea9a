"""How close a training step comes to what the machine's matmuls can do.

A step time alone says nothing about headroom: 1 s may be near the limit of a
laptop or a tenth of it. The reference here is the machine's own matmul
throughput, measured in the same process on the matrices the model itself
multiplies. Every `nn.Linear(in, out)` (and the tied LM head) runs three
matmuls per training step on N = tokens rows:

* forward, ``x @ W.t()``: (N, in) x (in, out);
* input gradient, ``g @ W``: (N, out) x (out, in);
* weight gradient, ``g.t() @ x``: (out, N) x (N, in).

Each is timed once per round with `torch.mm` in the layout autograd uses (the
transposes are views, as in the step). The machine's line is the FLOP-weighted
throughput of the mix a full training step runs: sum of FLOPs over sum of
times, each shape counted as often as the step runs it (n_layers times for a
layer's Linears, once for the head). That is the speed a step made of nothing
but these matmuls would reach; a step's achieved FLOP/s over that line is its
model FLOPs utilisation (MFU), with FLOPs counted by `modularforge.measure.flops`.

Why not the vendor's peak? On a shared 2-core VM nobody knows it, and a
fraction of a number measured on the same matrices, in the same process,
interleaved with the steps, is the one a reader can reproduce.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from modularforge.model.config import ModelConfig

#: The three matmuls of one Linear in a training step, in the order above.
PASSES = ("forward", "input gradient", "weight gradient")
#: dtypes a line can be measured in, by the name the JSON records.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LinearShape:
    """One Linear of the model: `in_features` -> `out_features`, run `count` times a step."""

    name: str
    in_features: int
    out_features: int
    count: int


def linear_shapes(config: ModelConfig) -> tuple[LinearShape, ...]:
    """The model's Linears (shared trunk, expert FFN, tied head) with their counts per step."""
    d, f, v, n = config.d_model, config.d_ff, config.vocab_size, config.n_layers
    return (
        LinearShape("attention qkv", d, 3 * d, n),
        LinearShape("attention proj", d, d, n),
        LinearShape("expert fc1", d, f, n),
        LinearShape("expert fc2", f, d, n),
        LinearShape("LM head (tied)", d, v, 1),
    )


def matmul_flops(tokens: int, shape: LinearShape) -> int:
    """FLOPs of one of the three matmuls of `shape` on `tokens` rows: 2 * N * in * out."""
    return 2 * tokens * shape.in_features * shape.out_features


class MatmulSuite:
    """The model's Linear matmuls on random data, ready to be timed again and again.

    Tensors are made once (outside any timing); `time_once` runs each matmul
    once, synchronising on CUDA, and returns seconds per (shape, pass).
    """

    def __init__(
        self,
        config: ModelConfig,
        tokens: int,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        seed: int = 0,
        repeats: int | None = None,
    ) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"tokens must be an int >= 1, got {tokens!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        if dtype == "bfloat16" and self.device.type != "cuda":
            raise ValueError(
                "the bfloat16 line is measured on CUDA only (the CPU figures are fp32); "
                f"got device {self.device}"
            )
        self.tokens = tokens
        self.dtype = dtype
        # On CUDA one small matmul takes microseconds, as long as launching it:
        # time a few back to back and divide. On CPU one is long enough.
        self.repeats = repeats or (10 if self.device.type == "cuda" else 1)
        self.shapes = linear_shapes(config)
        generator = torch.Generator().manual_seed(seed)
        torch_dtype = DTYPES[dtype]

        def rand(*size: int) -> torch.Tensor:
            return torch.randn(*size, generator=generator).to(self.device, torch_dtype)

        self._operands: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        for shape in self.shapes:
            x = rand(tokens, shape.in_features)
            weight = rand(shape.out_features, shape.in_features)
            grad = rand(tokens, shape.out_features)
            self._operands[(shape.name, "forward")] = (x, weight.t())
            self._operands[(shape.name, "input gradient")] = (grad, weight)
            self._operands[(shape.name, "weight gradient")] = (grad.t(), x)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_once(
        self, clock: Callable[[], float] = time.perf_counter
    ) -> dict[tuple[str, str], float]:
        """Seconds of one `torch.mm` per (shape name, pass), read from `clock`."""
        seconds = {}
        for key, (a, b) in self._operands.items():
            self._sync()
            start = clock()
            for _ in range(self.repeats):
                torch.mm(a, b)
            self._sync()
            seconds[key] = (clock() - start) / self.repeats
        return seconds


def machine_line(
    shapes: tuple[LinearShape, ...],
    tokens: int,
    times: dict[tuple[str, str], list[float]],
    dtype: str = "float32",
) -> dict[str, Any]:
    """The machine's matmul throughput from timings: per matmul and for the step's mix.

    `times[(shape name, pass)]` holds one time per round; each matmul's best
    (minimum) time is the one least disturbed by other processes. The line
    (`flops_per_s`) is sum(count x FLOPs) / sum(count x best time) over every
    shape and pass: the throughput of a step's matmul mix.
    """
    rows = []
    total_flops = total_seconds = 0.0
    for shape in shapes:
        flops = matmul_flops(tokens, shape)
        for pass_name in PASSES:
            samples = times.get((shape.name, pass_name))
            if not samples:
                raise ValueError(f"no timing for {shape.name!r} {pass_name}")
            best = min(samples)
            if best <= 0:
                raise ValueError(f"timing for {shape.name!r} {pass_name} must be > 0, got {best}")
            rows.append(
                {
                    "linear": shape.name,
                    "pass": pass_name,
                    "m_k_n": _mkn(tokens, shape, pass_name),
                    "count": shape.count,
                    "flops": flops,
                    "min_s": best,
                    "flops_per_s": flops / best,
                }
            )
            total_flops += shape.count * flops
            total_seconds += shape.count * best
    return {
        "dtype": dtype,
        "tokens": tokens,
        "tf32_allowed": torch.backends.cuda.matmul.allow_tf32,
        "rounds": min(len(v) for v in times.values()),
        "flops_per_s": total_flops / total_seconds,
        "best_matmul_flops_per_s": max(row["flops_per_s"] for row in rows),
        "matmuls": rows,
        "method": (
            "torch.mm on the model's Linear shapes (forward, input and weight gradient), "
            "best of the rounds per matmul; line = sum(count*FLOPs)/sum(count*time)"
        ),
    }


def _mkn(tokens: int, shape: LinearShape, pass_name: str) -> list[int]:
    """(m, k, n) of the matmul: an (m, k) matrix times a (k, n) one."""
    i, o = shape.in_features, shape.out_features
    return {
        "forward": [tokens, i, o],
        "input gradient": [tokens, o, i],
        "weight gradient": [o, tokens, i],
    }[pass_name]


def measure_machine_line(
    config: ModelConfig,
    tokens: int,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    rounds: int = 3,
    warmup: int = 1,
) -> dict[str, Any]:
    """Time the suite `rounds` times (after `warmup` untimed rounds) and return its line.

    The benchmark does not call this: it times one round between its step
    rounds, so that load from other processes hits the line and the steps alike.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    suite = MatmulSuite(config, tokens, device, dtype)
    for _ in range(warmup):
        suite.time_once()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for key, seconds in suite.time_once().items():
            times.setdefault(key, []).append(seconds)
    return machine_line(suite.shapes, tokens, times, dtype)


def utilisation(flops: int, seconds: float, line_flops_per_s: float) -> dict[str, float]:
    """Achieved FLOP/s of a step and its fraction of the machine's line."""
    if seconds <= 0 or line_flops_per_s <= 0:
        raise ValueError(
            f"seconds and the line must be > 0, got {seconds!r} and {line_flops_per_s!r}"
        )
    achieved = flops / seconds
    return {"flops_per_s": achieved, "fraction_of_line": achieved / line_flops_per_s}
