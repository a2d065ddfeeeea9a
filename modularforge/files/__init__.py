"""Files on disk: checkpoints, atomic writes, and the checks that keep bad files out.

`checkpoint` saves and loads the trunk and experts as safetensors + JSON metadata
(never pickle), `checkpoint_format` reads the container by hand before anything
is allocated, `atomic` writes crash-safely, `regular_file` refuses links and
devices, `output_paths` checks an output before work starts, `run_lock` allows
one run per folder, `state_recovery` sets a damaged training state aside,
`arguments` names a wrong argument (a `None` path, a trunk that is not one).

Depends on `model`. Chapters 4 and 7.
"""
