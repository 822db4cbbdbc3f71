"""LR schedules against the formulas of method spec §5.4 and torch's CosineAnnealingLR."""

from __future__ import annotations

import math

import pytest
import torch

from sfpk.training import schedules


def _torch_cosine(start: float, end: float, epochs: int, total: int) -> list[float]:
    """LRs torch's CosineAnnealingLR gives when stepped once per epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=start)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=end)
    values = []
    for _ in range(total):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def test_oneshot_warmup_is_linear_from_cold_start_to_peak():
    """Warm-up must start at cold_start_lr and reach lr exactly at e = W (§5.4)."""
    lrs = [
        schedules.oneshot_lr(
            e, lr=1e-2, lr_min=1e-8, epochs=20, warmup_epochs=5, cold_start_lr=1e-4
        )
        for e in range(6)
    ]
    expected = [1e-4 + (1e-2 - 1e-4) * e / 5 for e in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[5] == pytest.approx(1e-2)


def test_oneshot_cosine_after_warmup_matches_formula_and_holds_floor():
    """After warm-up: eta_min + (eta - eta_min)(1 + cos(pi (e-W)/(T-W)))/2, then held at eta_min."""
    lr, lr_min, W, epochs = 1e-2, 1e-8, 3, 13
    for e in range(W + 1, epochs + 3):
        got = schedules.oneshot_lr(
            e, lr=lr, lr_min=lr_min, epochs=epochs, warmup_epochs=W, cold_start_lr=1e-4
        )
        t = min(e, epochs)
        want = lr_min + (lr - lr_min) * (1 + math.cos(math.pi * (t - W) / (epochs - W))) / 2
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert (
        schedules.oneshot_lr(epochs + 5, lr=lr, lr_min=lr_min, epochs=epochs, warmup_epochs=W)
        == lr_min
    )


def test_oneshot_without_warmup_equals_torch_cosine():
    """W = 0 must be the reference's CosineAnnealingLR(T_max=ft_epochs, eta_min=1e-8)."""
    got = [schedules.oneshot_lr(e, lr=0.01, lr_min=1e-8, epochs=10) for e in range(10)]
    assert got == pytest.approx(_torch_cosine(0.01, 1e-8, 10, 10), rel=1e-9)


def test_fixed_lr_epochs_train_at_useful_constant_floor():
    """Our §8.25 choice: with fixed-LR epochs and no lr_min the held LR is 0.1 * lr, not 1e-8."""
    floor = schedules.resolve_lr_min(0.01, None, fixed_lr_epochs=3, phase="oneshot")
    lrs = [
        schedules.oneshot_lr(e, lr=0.01, lr_min=floor, epochs=10, fixed_lr_epochs=3)
        for e in range(10)
    ]
    assert floor == pytest.approx(1e-3)
    assert lrs[7:] == [pytest.approx(1e-3)] * 3
    assert lrs[0] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("lr_min", "fixed", "phase", "expected"),
    [
        (None, 0, "oneshot", 1e-8),
        (None, 2, "oneshot", 1e-3),
        (None, 0, "iterative", 1e-3),
        (5e-5, 2, "oneshot", 5e-5),
        (5e-5, 0, "iterative", 5e-5),
    ],
)
def test_resolve_lr_min(lr_min, fixed, phase, expected):
    """The floor defaults follow §5.4 (1e-8 one-shot, 0.1*lr iterative) and a given lr_min wins."""
    got = schedules.resolve_lr_min(1e-2, lr_min, fixed_lr_epochs=fixed, phase=phase)
    assert got == pytest.approx(expected)


def test_resolve_lr_min_rejects_unknown_phase():
    """Every if/elif over a string ends in a raise (style.md §9)."""
    with pytest.raises(ValueError, match="phase"):
        schedules.resolve_lr_min(1e-2, None, fixed_lr_epochs=0, phase="bogus")  # type: ignore[arg-type]


def test_iterative_round_lr_equals_torch_cosine():
    """Round k decays itr_lr[k] -> itr_lr_end[k] like CosineAnnealingLR, without warm-up (§5.3)."""
    got = [schedules.round_lr(e, start=0.01, end=5e-4, epochs=4) for e in range(4)]
    assert got == pytest.approx(_torch_cosine(0.01, 5e-4, 4, 4), rel=1e-9)


def test_iterative_final_phase_holds_floor_for_fixed_epochs():
    """Final phase: cosine lr -> lr_min over epochs - fixed, then held at lr_min."""
    got = [
        schedules.finetune_lr(e, lr=0.01, lr_min=1e-3, epochs=6, fixed_lr_epochs=2)
        for e in range(6)
    ]
    assert got[:4] == pytest.approx(_torch_cosine(0.01, 1e-3, 4, 4), rel=1e-9)
    assert got[4:] == [pytest.approx(1e-3)] * 2


def test_pretrain_lr_is_cosine_to_1e_6():
    """Pretraining follows CosineAnnealingLR(T_max=pre_epochs, eta_min=1e-6) (§5.1)."""
    got = [schedules.pretrain_lr(e, lr=0.05, epochs=8) for e in range(8)]
    assert got == pytest.approx(_torch_cosine(0.05, 1e-6, 8, 8), rel=1e-9)


def test_per_round_broadcasts_a_single_value():
    """A one-entry list applies to every round; longer lists are indexed by round."""
    assert schedules.per_round([7], 4) == 7
    assert schedules.per_round([1, 2, 3], 2) == 3
