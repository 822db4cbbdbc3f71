"""Masks: which weights a model keeps, and everything that knows masks but not scores.

Owns :class:`~sfpk.masks.core.Masks` (the container, its counting, apply, save/load and the
all-ones masks of a model; :mod:`.core`), the mask file format (:mod:`.files`), the prunable
rule and the mask structures (:mod:`.prunable`), coupled head/neuron groups and finding them
in a model (:mod:`.groups`), the layers that produce a model's output (:mod:`.output_layers`)
and the masked forward/backward without hooks (:mod:`.functional`).

May import only :mod:`sfpk.errors` and :mod:`sfpk.model_state`: it is the bottom layer, which
selection, pruners, training and export build on (``tests/api/test_architecture.py``).
"""
