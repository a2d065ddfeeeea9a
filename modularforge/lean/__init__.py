"""The lean expert step: the same update as the plain step in far less memory.

`step` (micro-batches, layer checkpointing, expert recomputation, fused AdamW),
`loss` (cross-entropy over position chunks), `selective` (recompute only the
attention core, after Korthikanti et al. 2022).

Depends on `model`. Chapter 6b, "Making 205 MB real".
"""
