"""Deploy: what a pruned model becomes after training: files, slim models, runtimes, costs.

Owns :func:`sfpk.export` and the exported model file with its :class:`Architecture` and
:func:`sfpk.load_model` (:mod:`.export`), compressed weight files (:mod:`.sparse_files`),
slimming through torch-pruning and rebuilding a slim model without it (:mod:`.slim`), the
``structure="coupled"`` masks over slimming's channel groups (:mod:`.channel_groups`), ONNX
(:mod:`.onnx_export`), 2:4 semi-structured sparsity on a GPU (:mod:`.semi_structured`),
BatchNorm folding for inference (:mod:`.inference`) and :func:`sfpk.count` (:mod:`.costs`).

The package is ``deploy``, not ``export``, because :func:`sfpk.export` is a public function:
a subpackage ``sfpk.export`` and the function would shadow each other as the attribute
``sfpk.export``. May import only :mod:`sfpk.errors`, :mod:`sfpk.masks` and
:mod:`sfpk.models`; exporting a run directory, which needs its config, is
:func:`sfpk.pipelines.run.export_run` (``tests/api/test_architecture.py``).
"""
