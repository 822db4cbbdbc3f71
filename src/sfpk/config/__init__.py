"""Config: one nested dataclass config, built from defaults < YAML < typed flags.

Owns :class:`~sfpk.config.core.Config` (the sections, the rules between them, building,
saving and loading; :mod:`.core`), the sections with their knobs and the checks of their own
values (:mod:`.sections`), the look-ups of names, device and paths in the registries and on
the host (:mod:`.checks`) and the generic layer machinery: merging layers and coercing them
to the annotations (:mod:`.layers`). The command-line flags of each knob are the CLI's
(:mod:`sfpk.cli.flags`).

May import the layers it configures (errors, masks, selection, training, data, models,
pruners, :mod:`sfpk.prune_args`), never pipelines or the CLI
(``tests/api/test_architecture.py``).
"""
