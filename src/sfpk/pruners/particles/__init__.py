"""The SFPK particle engine and its two methods, ``sfpk`` and ``spode`` (docs/sfpk.md).

Modules, from the bottom up: :mod:`.layout` (flat views of a mask set), :mod:`.dynamics`
(G, dt, radius, drift, repulsion), :mod:`.processors` (polarisation inside the energy),
:mod:`.voting` (particle scores, votes, momentum), :mod:`.state` (checkpoint state),
:mod:`.batching` (the particles' forward+backward passes), :mod:`.energy` (one step's energy
forces), :mod:`.engine` (the step loop) and :mod:`.methods` (the registered pruners and their
options).
"""

from .engine import ParticleSystem
from .methods import ParticleOptions, SfpkPruner, SpodePruner

__all__ = ["ParticleOptions", "ParticleSystem", "SfpkPruner", "SpodePruner"]
