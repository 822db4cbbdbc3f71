"""Matplotlib figures of a run directory: learning curves, per-layer density, SFPK trajectory.

Every function reads the files a run writes (``metrics.csv``, ``masks.safetensors``,
``sfpk_steps.csv``) and writes PNG files, so plots can be redrawn for any finished or
interrupted run without re-running anything.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "make_run_plots",
    "plot_learning_curves",
    "plot_layer_density",
    "plot_trajectory",
    "plot_accuracy_vs_sparsity",
    "read_csv",
]

log = logging.getLogger(__name__)


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (empty list if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _floats(rows: Sequence[dict[str, str]], key: str) -> list[float]:
    values = []
    for row in rows:
        try:
            values.append(float(row.get(key, "")))
        except ValueError:
            values.append(float("nan"))
    return values


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    _pyplot().close(fig)
    return path


def plot_learning_curves(metrics_csv: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Accuracy and loss per epoch (train / val / test), one colour band per phase."""
    rows = [r for r in read_csv(metrics_csv) if r.get("epoch", "") != ""]
    if not rows:
        return None
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    x = list(range(len(rows)))
    for split in ("train", "val", "test"):
        acc = _floats(rows, f"{split}_acc")
        loss = _floats(rows, f"{split}_loss")
        if any(v == v for v in acc):  # not all NaN
            ax_acc.plot(x, acc, label=split)
        if any(v == v for v in loss):
            ax_loss.plot(x, loss, label=split)
    phases = [r.get("phase", "") for r in rows]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            for ax in (ax_acc, ax_loss):
                ax.axvline(i - 0.5, color="grey", lw=0.8, ls="--")
    ax_acc.set(xlabel="epoch (all phases)", ylabel="accuracy", title="accuracy")
    ax_loss.set(xlabel="epoch (all phases)", ylabel="loss", title="loss")
    ax_acc.legend()
    ax_loss.legend()
    return _save(fig, Path(out))


def plot_layer_density(masks_path: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Bar chart of the fraction of weights kept in every pruned layer."""
    from ..masks.core import Masks

    if not Path(masks_path).is_file():
        return None
    report = Masks.load(masks_path).layer_report()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(report)), 4))
    ax.bar(range(len(report)), [1 - r["sparsity"] for r in report], color="tab:blue")
    ax.set_xticks(range(len(report)), [r["name"] for r in report], rotation=90, fontsize=7)
    ax.set(ylabel="density (fraction kept)", ylim=(0, 1), title="per-layer density")
    return _save(fig, Path(out))


def plot_trajectory(steps_csv: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """SFPK/SpODE trajectory: mean particle loss and particle diversity against the step."""
    rows = read_csv(steps_csv)
    if not rows:
        return None
    keys = list(rows[0])
    loss_key = next((k for k in keys if "loss" in k or k in ("energy", "mean_energy")), None)
    spread_key = next((k for k in keys if "distance" in k or "diversity" in k), None)
    step = _floats(rows, "step") if "step" in keys else list(range(len(rows)))
    plt = _pyplot()
    fig, ax_loss = plt.subplots(figsize=(7, 4))
    if loss_key:
        ax_loss.plot(step, _floats(rows, loss_key), color="tab:red", label=loss_key)
        ax_loss.set_ylabel(loss_key, color="tab:red")
    if spread_key:
        ax_spread = ax_loss.twinx()
        ax_spread.plot(step, _floats(rows, spread_key), color="tab:blue", label=spread_key)
        ax_spread.set_ylabel(spread_key, color="tab:blue")
    ax_loss.set(xlabel="step", title="particle trajectory")
    return _save(fig, Path(out))


def plot_accuracy_vs_sparsity(
    points: Sequence[dict[str, float | str]], out: str | os.PathLike
) -> Path:
    """Accuracy (mean +- std over seeds) against sparsity, one line per method.

    Args:
        points: dicts with ``method``, ``sparsity``, ``mean`` and ``std`` (accuracy).
        out: the PNG path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({str(p["method"]) for p in points}):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["sparsity"])
        ax.errorbar(
            [p["sparsity"] for p in mine],
            [p["mean"] for p in mine],
            yerr=[p["std"] for p in mine],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set(
        xlabel="sparsity (fraction removed)", ylabel="test accuracy", title="accuracy vs sparsity"
    )
    ax.legend()
    return _save(fig, Path(out))


def make_run_plots(run_dir: str | os.PathLike) -> list[Path]:
    """Draw every figure the files of ``run_dir`` allow into ``run_dir/plots``."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    made = [
        plot_learning_curves(run_dir / "metrics.csv", plots / "learning_curves.png"),
        plot_layer_density(run_dir / "masks.safetensors", plots / "layer_density.png"),
        plot_trajectory(run_dir / "sfpk_steps.csv", plots / "trajectory.png"),
    ]
    made = [p for p in made if p is not None]
    log.info("wrote %d plot(s) to %s", len(made), plots)
    return made
