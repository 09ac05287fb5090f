"""Synthetic EELS and EDS spectrum images with ground truth.

Generators of realistic, reproducible test data for the machine-learning tools of
:mod:`hyperspy_mlspec`: :func:`eels_map` (core-loss EELS of an iron/titanium oxide with an
oxidation front) and :func:`eds_map` (STEM-EDS of a stainless steel), both returning exspy
signals and, on request, a :class:`GroundTruth`; :func:`labelled_spectra` (independent
EELS spectra of four iron-oxide classes with a white-line area target, for few-label
classification and regression); :func:`simulate_acquisition` replays a map row by row, as a
detector delivers it (for :class:`~hyperspy_mlspec.StreamingMonitor`).
"""

from ._acquisition import simulate_acquisition
from ._common import GroundTruth
from ._eds import eds_map
from ._eels import eels_map
from ._labelled import LabelledSpectra, labelled_spectra

__all__ = ["GroundTruth", "LabelledSpectra", "eds_map", "eels_map", "labelled_spectra",
           "simulate_acquisition"]
