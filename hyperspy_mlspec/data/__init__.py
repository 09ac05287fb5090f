"""Synthetic EELS and EDS spectrum images with ground truth.

Generators of realistic, reproducible test data for the machine-learning tools of
:mod:`hyperspy_mlspec`: :func:`eels_map` (core-loss EELS of an iron/titanium oxide with an
oxidation front) and :func:`eds_map` (STEM-EDS of a stainless steel), both returning exspy
signals and, on request, a :class:`GroundTruth`; :func:`simulate_acquisition` replays a
map row by row, as a detector delivers it (for :class:`~hyperspy_mlspec.StreamingMonitor`).
"""

from ._acquisition import simulate_acquisition
from ._common import GroundTruth
from ._eds import eds_map
from ._eels import eels_map

__all__ = ["GroundTruth", "eds_map", "eels_map", "simulate_acquisition"]
