"""More seeds of the reference's own SpODE / SFPK on the golden fidelity protocol.

``tests/golden/fidelity/reference.json`` holds 5 seeds per cell. To tell whether our spread
is wider than the reference's, this runs the reference implementation itself (its
``Methods.pruners.SpODE`` / ``SFPK`` classes, its ``routine.prune``, which ends with its own
BatchNorm update on 2 fresh shuffled batches) on the golden protocol of
``tests/golden/README.md``: the golden weights in the reference's Conv2d twin
(kernels (1, k)), the whole mnist1d train split as a shuffled loader of 512, the paper's
settings, the reference's pool (conv and linear weights plus the classifier bias), test
accuracy in eval mode.

It needs a checkout of the reference (SFPK-main, commit ``896af29``), e.g.
``git --git-dir=<mirror> archive 896af29 | tar -x -C /tmp/sfpkref``. The reference imports
pandas, seaborn, torchvision and transformers only for logging and other models; those are
stubbed when they are not installed. Nothing of the reference is copied here.

This harness does not reproduce ``reference.json`` bit for bit (seed 0 of SpODE at density
0.1: 91.1 here, 89.8 there), so its seeds are other draws of the same protocol, which is
what a spread comparison needs.

Usage: python benchmarks/reference_seeds.py --reference /tmp/sfpkref --method SpODE
    --density 0.1 --seeds 0-14   (one JSON line per seed; ~15 s of CPU per SpODE run)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "fidelity"


def _stub_missing_modules() -> None:
    """Empty stand-ins for the reference's logging / unrelated imports that are absent."""

    class _Frame:  # pandas.DataFrame(...).to_csv(...) in the reference's stat tracker
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def to_csv(self, *args: Any, **kwargs: Any) -> None:
            pass

    names = ("pandas", "seaborn", "torchvision", "torchvision.transforms",
             "torchvision.transforms.functional", "torchvision.datasets")  # fmt: skip
    for name in names:
        stub = types.ModuleType(name)
        setattr(stub, "set_style", lambda *args, **kwargs: None)  # noqa: B010
        setattr(stub, "DataFrame", _Frame)  # noqa: B010
        sys.modules.setdefault(name, stub)
    transformers = types.ModuleType("transformers")  # only its ViT class name is used
    setattr(transformers, "ViTForImageClassification", type("ViT", (), {}))  # noqa: B010
    sys.modules["transformers"] = transformers


class Twin(nn.Module):
    """The golden CNN as the reference prunes it: Conv2d with (1, k) kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, (1, 5), padding=(0, 2), bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, (1, 5), padding=(0, 2), bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.view(x.shape[0], 1, 1, -1)).mean((-1, -2)))


def load_twin(golden: Path) -> nn.Module:
    """The golden dense weights in the Conv2d twin (conv kernels unsqueezed to (1, k))."""
    from safetensors.torch import load_file

    state = load_file(str(golden / "cnn_dense.safetensors"))
    model = Twin()
    model.load_state_dict({k: v.unsqueeze(2) if v.dim() == 3 else v for k, v in state.items()})
    return model


def mnist1d() -> tuple[TensorDataset, TensorDataset]:
    """The golden data: ``make_dataset(get_dataset_args())``, 4,000 train / 1,000 test."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    as_set = lambda x, y: TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))  # noqa: E731
    return as_set(d["x"], d["y"]), as_set(d["x_test"], d["y_test"])


def run(method: str, density: float, seed: int, golden: Path, train: TensorDataset,
        test: TensorDataset) -> dict[str, Any]:  # fmt: skip
    """One seed of the reference's pruner on the golden protocol; one result row."""
    from Methods import pruners
    from Methods.utils import free_modules, init_masks_hooks, masked_params
    from Utils import routine

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = load_twin(golden)
    with contextlib.redirect_stdout(io.StringIO()):
        init_masks_hooks(model, False, 0)
        # free BN, identity and conv-bias masks; keep conv1 and the classifier (and its bias)
        free_modules(model, True, True, True, False, False, verbose=False)
    processor = {"mask_proc_option": "ohh", "mask_proc_eps": 0.9, "mask_proc_ratio": 0.9,
                 "mask_proc_score_option": "Id", "mask_proc_mxp": True}  # fmt: skip
    kwargs: dict[str, Any] = dict(
        N=100, r=1.4, ode_scope="global", E="CE", G="l2", score_option="mp", mask_option="one",
        mask_proc_kwargs=processor, schedule="exp", rt_schedule="fix", momentum=0.1,
    )  # fmt: skip
    if method == "SFPK":
        kwargs |= dict(n_mc=10, repl_mode="exp", repl=0.2, repl_weighted=True, vote_ratio=1.0,
                       vote_mode="soft")  # fmt: skip
    pruner = getattr(pruners, method)(model, **kwargs)
    loader = DataLoader(train, batch_size=512, shuffle=True)
    with contextlib.redirect_stdout(io.StringIO()):
        routine.prune(model, pruner, nn.CrossEntropyLoss(), loader, density, "cpu", train=True)
    model.eval()
    x, y = test.tensors
    with torch.no_grad():
        acc = 100.0 * float((model(x).argmax(1) == y).float().mean())
    kept = sum(int(m.count_nonzero()) for _, m, _ in masked_params(model))
    total = sum(m.numel() for _, m, _ in masked_params(model))
    return {"method": method, "density": density, "seed": seed, "acc": round(acc, 2),
            "density_achieved": round(kept / total, 6)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="checkout of SFPK-main (896af29)")
    parser.add_argument("--method", default="SpODE", choices=("SpODE", "SFPK"))
    parser.add_argument("--density", type=float, default=0.1, help="fraction KEPT")
    parser.add_argument("--seeds", default="0-4", help="a-b or comma list")
    parser.add_argument("--golden", default=str(GOLDEN))
    args = parser.parse_args()
    a, _, b = args.seeds.partition("-")
    seeds = range(int(a), int(b) + 1) if b else [int(s) for s in args.seeds.split(",")]
    _stub_missing_modules()
    sys.path.insert(0, str(Path(args.reference).resolve()))
    torch.set_num_threads(1)
    train, test = mnist1d()
    for seed in seeds:
        row = run(args.method, args.density, seed, Path(args.golden), train, test)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
