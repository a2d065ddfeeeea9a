"""Measurement: memory, peaks, FLOPs, step times, and the machine's matmul line.

`memory` (the document's claims and the live model's budget), `peak` (a step's
peak, measured and predicted), `heap_tracker` / `storage_tracker` /
`tracker_agreement` (CPU peak trackers), `flops` (counted alike on both sides),
`arms` (frozen vs full, one difference at a time), `bench` / `bench_timing` /
`roofline` / `step_profile` (speed against the machine), `ladder` (the lean step
taken apart), `gpu_measurements`, `activation_formula` (Korthikanti's formula),
`mixture_accounting` (tokens and FLOPs per phase), `spread` (seeds and verdicts),
`memory_format` / `memory_tables` / `text_table` (tables that fit the page).

Depends on `model`, `lean` and `files`. Chapters 2, 5, 6 and 6b.
"""
