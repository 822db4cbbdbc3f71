"""Selection: every "keep the top k" decision, from scores to exact 0/1 masks.

Owns :func:`~sfpk.selection.topk.select_topk` and the check of what it promises
(:mod:`.topk`, with the iterative ``round_sparsity`` schedule), the cuts of one flat score
vector and the weight budget of structured cuts (:mod:`.cuts`), the exact k-th smallest
entry (:mod:`.kth_select`), the collapse guard (:mod:`.collapse`) and channel-aligned widths,
``round_to`` (:mod:`.aligned`).

May import only :mod:`sfpk.errors` and :mod:`sfpk.masks`: selection knows masks, never the
pruners that score, the training or the pipelines (``tests/api/test_architecture.py``).
"""
