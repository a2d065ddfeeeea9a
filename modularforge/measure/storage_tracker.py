"""The peak of tensor storage a step makes, at a cost that does not grow with the process's age.

`memory.HeapPeakTracker` asks glibc after every aten op how much of the heap is
in use (`mallinfo2`), and mallinfo2 walks every free chunk: in a process whose
heap has fragmented over a long life (a test suite, a notebook) each call costs
tens of times more than in a fresh one. This tracker asks nothing of the heap.
It sees every storage an op returns, the moment the op returns it, and learns
of each storage's end from a finalizer that PyTorch runs when the storage is
freed. The bytes alive are a running sum; the peak is its highest value after
any op. Each op costs a dictionary lookup per output and one finalizer per new
storage, however long the process has lived.

What it counts: storages first seen inside the tracked region (every tensor an
op makes: activations, gradients, temporaries, optimizer state made then), at
their `nbytes`. What it does not: memory an op allocates and frees inside
itself (the per-op heap sampling misses that too), non-tensor allocations
(small), and storages made before entry that are freed inside (they are not
counted when they were made either, so the increase stays right as long as
the step frees nothing it did not make; `measure_lean_step` drops the old
gradients before it enters).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

#: How the CPU peaks of the bench and the ladder are measured, as their JSON records it.
CPU_PEAK_METHOD = (
    "static at start + tensor storages made in the step, summed after every aten op "
    "(StoragePeakTracker)"
)


class StoragePeakTracker(TorchDispatchMode):
    """Running sum of the bytes of storages made inside the region; `increase` is its peak."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # id of a live storage's data -> bytes counted

    def __enter__(self) -> StoragePeakTracker:
        self.alive = self.peak = 0
        self._sizes.clear()
        return super().__enter__()

    def _freed(self, key: int) -> None:
        self.alive -= self._sizes.pop(key, 0)

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        if tensor.device.type != "cpu" or tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata  # the StorageImpl's address: one per storage while it lives
        size = storage.nbytes()
        known = self._sizes.get(key)
        if known is None:
            if key in inputs:  # a view of, or in place on, a storage made before entry
                return
            self._sizes[key] = size
            self.alive += size
            weakref.finalize(storage, self._freed, key)
        elif known != size:  # resized in place (out= ops)
            self._sizes[key] = size
            self.alive += size - known

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        inputs = {
            leaf.untyped_storage()._cdata
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
            and leaf.device.type == "cpu"
            and leaf.layout == torch.strided
        }
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf, inputs)
        if self.alive > self.peak:
            self.peak = self.alive
        return out

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)

    @property
    def increase(self) -> int:
        """Highest bytes of storage made in the region and alive at once (after some op)."""
        return self.peak
