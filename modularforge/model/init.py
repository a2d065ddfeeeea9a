"""Initial weights that are the same bits on every CPU.

`nn.init.normal_` on a float32 tensor picks its kernel by CPU capability: the
vectorised AVX2/AVX-512 path and the plain one compute Box-Muller with different
`log`/`cos` implementations, so the same seed gives weights that differ in the
last bit on another machine (and every fingerprint of an untrained model with
them). The float64 path has no vectorised variant: it draws the same numbers
everywhere, and rounding them to float32 keeps them identical. Drawing on the CPU
generator also gives a CUDA model the same start as a CPU one.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def normal_init_(tensor: torch.Tensor, std: float, mean: float = 0.0) -> torch.Tensor:
    """Fill `tensor` in place with N(mean, std^2) draws that do not depend on the CPU.

    Uses the default CPU generator (so `torch.manual_seed` controls it), draws in
    float64 and copies into the tensor's own dtype and device.
    """
    draw = torch.randn(tensor.shape, dtype=torch.float64, device="cpu")  # scalar kernel everywhere
    return tensor.copy_(draw.mul_(std).add_(mean))
