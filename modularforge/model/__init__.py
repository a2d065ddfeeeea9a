"""The model: the frozen shared trunk, the experts, and the harness that trains one.

Built from small parts to the whole: `config` (one dataclass, two presets) ->
`shared` (embedding, positions, every layer's attention, output norm, tied LM head)
-> `expert` (one FFN block per layer) -> `trainer_model` (trunk + one expert,
interleaved layer by layer). `inputs` checks token ids at the front door;
`baseline` is the plain dense GPT a reader would otherwise write.

Depends on nothing else in the package when imported. The one exception, allowed
by name in the layout test: `ModuleTrainerModel.save_expert` and `.load_expert`
(the design document's API) import `files.checkpoint` when they are called.
Chapters 1 and 3.
"""
