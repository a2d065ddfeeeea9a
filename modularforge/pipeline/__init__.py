"""The full pipeline: trunk, experts one at a time, routers, resumable from a manifest.

`run` (the three phases end to end), `phases` (each unit of work), `mixing`
(the pipeline's mixing stage), `folders` (where a run writes), `manifest`,
`load` (a finished run, hash-checked), `evaluation` (every model on every domain),
`memory_check` (a flatness check that can fail), `distributed` (many experts at
once with torchrun), `seed_study` (the same run over seeds).

Depends on `mixture`, `training`, `measure`, `files` and `model`. Chapters 8-10.
"""
