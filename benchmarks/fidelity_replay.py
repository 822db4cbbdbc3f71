"""Step-by-step check of the SFPK engine against an independent replay of the spec, at scale.

The golden vectors check the dynamics on tiny, bias-free problems for a few steps. This
script checks the same thing on the fidelity problem (``tests/golden/fidelity``: 23 k
prunable weights, optionally the classifier bias, n particles, N steps): it runs
``sfpk.run_pruner`` with a ``PruneObserver(trace=...)`` and, on exactly the same batches, a plain
re-implementation of ``docs/sfpk-method.md`` §2–§3 written for this check (per-particle
loops, autograd for G and the kernel K, ``kthvalue`` polarisation, the §2.7 drift, soft
vote with momentum, early stop, the §2.12 top-k). It prints per-step differences
(particles, G, E, forces, S) and the overlap of the final masks.

Usage: python benchmarks/fidelity_replay.py [--steps 100] [--particles 10]
           [--sparsity 0.95] [--seed 0] [--include-bias] [--float32]

Float64 (default) keeps both computations on the same trajectory long enough to compare
them; in float32 the hard thresholds amplify rounding differences after some steps.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity  # noqa: E402


def forward(params: dict[str, torch.Tensor], bn: dict[str, torch.Tensor], x: torch.Tensor):
    """The golden CNN in train mode, written out (batch statistics in every BN)."""
    h = x.view(x.shape[0], 1, -1)
    for conv, norm, pad in (("features.0", "features.1", 2), ("features.3", "features.4", 2),
                            ("features.6", "features.7", 1)):  # fmt: skip
        h = F.conv1d(h, params[f"{conv}.weight"], padding=pad)
        h = F.batch_norm(h, None, None, bn[f"{norm}.weight"], bn[f"{norm}.bias"], training=True)
        h = F.relu(h)
    bias = params["fc.bias"] if "fc.bias" in params else bn["fc.bias"]
    return F.linear(h.mean(-1), params["fc.weight"], bias)


class SpecReplay:
    """SFPK per the spec, one particle at a time, with per-layer lists."""

    def __init__(self, theta, others, n, steps, density, lam=0.2, r=1.4, mu=0.1):
        self.theta, self.others = theta, others
        self.names = list(theta)
        self.n, self.steps, self.rho, self.lam, self.r, self.mu = n, steps, density, lam, r, mu
        self.P = sum(t.numel() for t in theta.values())
        self.M = [{k: torch.ones_like(t) for k, t in theta.items()} for _ in range(n)]
        self.S = {k: torch.zeros_like(t) for k, t in theta.items()}
        self.start = float(self.G(self.M[0]))

    def G(self, m):
        return torch.sqrt(sum((v**2).sum() for v in m.values()) + 1e-12) / (
            math.sqrt(self.P) + 1e-12
        )

    def dt(self, t):
        ratio = self.start / self.rho
        return self.rho * (ratio ** (1 - t / self.steps) - ratio ** (1 - (t + 1) / self.steps))

    def polarize(self, m, G):
        c = torch.cat([(m[k] * self.theta[k]).abs().flatten() for k in self.names])
        k = math.floor((1.0 - float(G)) * c.numel())
        if k < 1:
            return {n: m[n].clone() for n in self.names}
        tau = torch.kthvalue(c, k).values
        return {n: ((m[n] * self.theta[n]).abs() >= tau).to(c.dtype) for n in self.names}

    def kernel_force(self, i, snap):
        m = {k: v.clone().requires_grad_(True) for k, v in snap[i].items()}
        a = {k: t.abs() for k, t in self.theta.items()}
        s_i = sum((m[k].detach() ** 2 * a[k]).sum() for k in self.names)
        K = 0.0
        for j in range(self.n):
            d = sum((((m[k] - snap[j][k]) * a[k]) ** 2).sum() for k in self.names)
            s_j = sum((snap[j][k] ** 2 * a[k]).sum() for k in self.names)
            K = K + torch.exp(-d / torch.sqrt(s_i * s_j + 1e-12))
        K = K / self.n
        grads = torch.autograd.grad(-K, [m[k] for k in self.names])
        return dict(zip(self.names, grads, strict=True)), float(K.detach())

    def step(self, t, batches):
        snap = [{k: v.clone() for k, v in m.items()} for m in self.M]
        dt = self.dt(t)
        new, E, Gs, forces = [], [], [], []
        for i in range(self.n):
            x, y = batches[i]
            m = {k: v.clone().requires_grad_(True) for k, v in snap[i].items()}
            G = self.G(m)
            g = dict(
                zip(self.names, torch.autograd.grad(-G, [m[k] for k in self.names]), strict=True)
            )
            G = G.detach()
            b = self.polarize(snap[i], G)
            w = {k: (self.theta[k] * b[k]).requires_grad_(True) for k in self.names}
            loss = F.cross_entropy(forward(w, self.others, x), y)
            gw = torch.autograd.grad(loss, [w[k] for k in self.names])
            e = {k: -gk * self.theta[k] for k, gk in zip(self.names, gw, strict=True)}
            if self.lam:
                rep, _ = self.kernel_force(i, snap)
                e = {k: e[k] + self.lam * rep[k] for k in self.names}
            forces.append(torch.cat([e[k].flatten() for k in self.names]))
            gn = torch.sqrt(sum((v**2).sum() for v in g.values()) + 1e-12)
            en = torch.sqrt(sum((v**2).sum() for v in e.values()) + 1e-12)
            ge = sum((g[k] * e[k]).sum() for k in self.names)
            xx = torch.sqrt((self.r**2 - 1 + 1e-12) / ((gn * en) ** 2 - ge**2 + 1e-12) + 1e-12)
            yy = (1 - xx * ge) / (gn**2 + 1e-12)
            new.append({k: snap[i][k] + dt * (xx * e[k] + yy * g[k]) for k in self.names})
            E.append(float(loss.detach()))
            Gs.append(float(G))
        self.M = new
        score = {k: sum((m[k] * self.theta[k]).abs() for m in self.M) / self.n for k in self.names}
        self.S = {k: score[k] + self.mu * self.S[k] for k in self.names}
        stop = sum(Gs) / len(Gs) <= self.rho
        return E, Gs, forces, stop

    def final_mask(self):
        s = torch.cat([self.S[k].flatten() for k in self.names])
        k = math.floor((1 - self.rho) * s.numel())
        tau = torch.kthvalue(s, k).values
        return (s > tau).to(s.dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=fidelity.DEFAULT_GOLDEN)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--include-bias", action="store_true")
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--every", type=int, default=10, help="print every k-th step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = torch.float32 if args.float32 else torch.float64

    from torch.utils.data import DataLoader

    import sfpk

    model = fidelity.load_model(args.golden).to(dtype)
    prune_data, _ = fidelity.load_data("test")
    prune_data = torch.utils.data.TensorDataset(
        prune_data.tensors[0].to(dtype), prune_data.tensors[1]
    )

    def loader():
        return DataLoader(prune_data, batch_size=512, shuffle=True,
                          generator=torch.Generator().manual_seed(args.seed))  # fmt: skip

    class Recorder:
        """Hands the loader's batches to the engine and keeps them for the replay."""

        def __init__(self, data):
            self.data, self.seen = data, []

        def __iter__(self):
            for batch in self.data:
                self.seen.append(batch)
                yield batch

    recorder = Recorder(loader())
    trace: list[dict] = []
    keys = ("G", "E", "force_total", "mask_after", "momentum")
    observer = sfpk.PruneObserver(trace=lambda info: trace.append({k: info[k] for k in keys}))
    tic = time.perf_counter()
    masks = sfpk.run_pruner(
        copy.deepcopy(model), recorder, method="sfpk", sparsity=args.sparsity, seed=args.seed,
        include_bias=args.include_bias, num_steps=args.steps, num_particles=args.particles,
        observer=observer, collapse_guard="off",
    ).masks  # fmt: skip
    engine_s = time.perf_counter() - tic

    params = dict(model.named_parameters())
    names = list(masks)
    theta = {k: params[k].detach() for k in names}
    others = {k: v.detach() for k, v in params.items() if k not in theta}
    replay = SpecReplay(theta, others, args.particles, args.steps, 1 - args.sparsity)
    used = iter(recorder.seen)

    def next_batch():
        return next(used)

    print(f"engine: {len(trace)} steps in {engine_s:.0f} s; P = {replay.P}; dtype {dtype}")
    print(" step | max|ΔM| (rel) | max|ΔG| | max|ΔE| | max|Δforce| rel | max|ΔS| rel")
    worst = 0.0
    for t in range(len(trace)):
        batches = [next_batch() for _ in range(args.particles)]
        E, Gs, forces, stop = replay.step(t, batches)
        ours = trace[t]
        mine = torch.stack([torch.cat([m[k].flatten() for k in names]) for m in replay.M])
        dm = float((ours["mask_after"] - mine).abs().max() / mine.abs().max())
        dg = float(
            (ours["G"].flatten().double() - torch.tensor(Gs, dtype=torch.float64)).abs().max()
        )
        de = float((ours["E"].double() - torch.tensor(E, dtype=torch.float64)).abs().max())
        f = torch.stack(forces)
        df = float((ours["force_total"] - f).abs().max() / f.abs().max())
        s = torch.cat([replay.S[k].flatten() for k in names])
        ds = float((ours["momentum"] - s).abs().max() / s.abs().max())
        worst = max(worst, dm)
        if t % args.every == 0 or t == len(trace) - 1:
            print(f" {t:4d} | {dm:.2e} | {dg:.2e} | {de:.2e} | {df:.2e} | {ds:.2e}", flush=True)
        if stop and t < len(trace) - 1:
            print(f"replay stops early at step {t}, engine did not")
            break
    mask_ours = torch.cat([masks[k].flatten() for k in names]).to(dtype)
    mask_mine = replay.final_mask()
    diff = int((mask_ours != mask_mine).sum())
    print(f"final masks: {int(mask_ours.sum())} kept (engine), {int(mask_mine.sum())} kept "
          f"(replay), {diff} entries differ; worst relative particle difference "
          f"{worst:.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
