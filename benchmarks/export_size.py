"""File size of `sfpk export --sparse` against the dense export, at several sparsities.

ResNet-20 from the zoo (CIFAR-10 head, float32, random init) pruned globally by magnitude;
for each sparsity the model is exported dense and sparse and the two file sizes, the
encodings chosen per tensor and the conv/linear MACs left (``sfpk.count``) are recorded.
Prints a Markdown table and writes ``benchmarks/results/export_size.json``.

    python benchmarks/export_size.py                       # 90 / 95 / 98 % (a few seconds)
    python benchmarks/export_size.py --sparsities 0.5 0.9 0.99
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

import sfpk
from sfpk.deploy.export import Architecture

RESULTS = Path(__file__).resolve().parent / "results" / "export_size.json"


def _encodings(path: Path) -> dict[str, int]:
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["sfpk"])
    return dict(collections.Counter(e["encoding"] for e in header["encodings"].values()))


def measure(sparsity: float, architecture: Architecture, folder: Path) -> dict:
    """Dense and sparse export sizes of ``architecture`` pruned to ``sparsity`` by magnitude."""
    torch.manual_seed(0)
    model = architecture.build()
    x = torch.randn(8, *architecture.input_shape)
    masks = sfpk.prune(model, [(x, torch.zeros(8, dtype=torch.long))], method="mag",
                       sparsity=sparsity)  # fmt: skip
    dense = sfpk.export(model, masks, folder / f"dense-{sparsity}", architecture=architecture)
    sparse = sfpk.export(
        model, masks, folder / f"sparse-{sparsity}", architecture=architecture, sparse=True
    )
    costs = sfpk.count(model, architecture.input_shape, masks)
    return {
        "sparsity": sparsity,
        "achieved_sparsity": masks.sparsity(),
        "dense_bytes": dense.stat().st_size,
        "sparse_bytes": sparse.stat().st_size,
        "ratio": sparse.stat().st_size / dense.stat().st_size,
        "encodings": _encodings(sparse),
        "params": costs.params,
        "nonzero_params": costs.nonzero_params,
        "macs": costs.macs,
        "nonzero_macs": costs.nonzero_macs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args()
    architecture = Architecture(args.model, args.num_classes, input_shape=(3, 32, 32))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(s, architecture, Path(tmp)) for s in args.sparsities]
    print(f"{args.model}, float32, global magnitude masks")
    print("| removed | dense file | sparse file | sparse / dense | encodings | MACs left |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        encodings = ", ".join(f"{n} {k}" for k, n in sorted(r["encodings"].items()))
        print(
            f"| {100 * r['sparsity']:.0f} % | {r['dense_bytes'] / 1024:.1f} KiB "
            f"| {r['sparse_bytes'] / 1024:.1f} KiB | {r['ratio']:.3f} | {encodings} "
            f"| {100 * r['nonzero_macs'] / r['macs']:.1f} % |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": args.model, "num_classes": args.num_classes, "rows": rows}
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
