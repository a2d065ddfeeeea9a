"""Untrained weights are the same bits on every CPU: checked by switching ATen's kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Build a seeded tiny trunk and expert, print their fingerprint. `INIT=torch` swaps in
# torch's own float32 normal_ (the negative control).
PROBE = """
import hashlib, os, torch
from torch import nn
from modularforge import ModelConfig
from modularforge.model import init
from modularforge.model.expert import build_expert
from modularforge.model.shared import SharedComponents
if os.environ.get("INIT") == "torch":
    import modularforge.model.shared as shared_module, modularforge.model.expert as expert_module
    torch_normal = lambda t, std, mean=0.0: nn.init.normal_(t, mean, std)
    shared_module.normal_init_ = expert_module.normal_init_ = torch_normal
torch.manual_seed(0)
config = ModelConfig.tiny()
digest = hashlib.sha256()
for module in (SharedComponents(config), build_expert(config)):
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode()); digest.update(tensor.numpy().tobytes())
print(digest.hexdigest())
"""


def fingerprint(capability: str, init: str = "package") -> str:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "INIT": init}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_untrained_weights_match_across_cpu_capabilities() -> None:
    prints = {cap: fingerprint(cap) for cap in ("default", "avx2", "avx512")}
    assert len(set(prints.values())) == 1, prints


def test_negative_control_torch_normal_differs_between_kernels() -> None:
    """torch's float32 normal_ takes a vectorised path on AVX2: the probe can see a difference."""
    assert fingerprint("default", "torch") != fingerprint("avx2", "torch")


def test_normal_init_has_the_requested_spread() -> None:
    import torch

    from modularforge.model.init import normal_init_

    torch.manual_seed(0)
    weight = normal_init_(torch.empty(256, 256), std=0.02, mean=1.0)
    assert weight.dtype == torch.float32
    assert weight.mean().item() == pytest.approx(1.0, abs=0.001)
    assert weight.std().item() == pytest.approx(0.02, rel=0.02)
    torch.manual_seed(0)
    assert torch.equal(weight, normal_init_(torch.empty(256, 256), std=0.02, mean=1.0))
