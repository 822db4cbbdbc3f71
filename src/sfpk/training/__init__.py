"""Training: fitting a (masked) model, and what a training run needs to survive.

Owns the :class:`~sfpk.training.trainer.Trainer` (masks stay applied; :mod:`.trainer`), the
optimizer settings (:mod:`.optimizers`), the LR schedules (:mod:`.schedules`), mixed
precision, channels-last and ``torch.compile`` (:mod:`.precision`), BatchNorm recalibration
after pruning (:mod:`.batchnorm`), atomic checkpoints and derived seeds (:mod:`.checkpoint`)
and the ``torch.distributed`` helpers (:mod:`.distributed`).

May import :mod:`sfpk.errors`, :mod:`sfpk.losses` and :mod:`sfpk.masks`; the pruners use
its precision and distributed helpers, so it never imports them
(``tests/api/test_architecture.py``).
"""
