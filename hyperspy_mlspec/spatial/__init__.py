"""Spatial-spectral methods on arrays (the numeric core; no HyperSpy here).

* :class:`SpatialDenoiser`: low-rank coordinates of a spectrum image, each filtered over
  the navigation axes by a blind-spot (J-invariant) filter whose strength the Noise2Self
  loss chooses, combined with the pixel's own value by a posterior mean.
* :func:`estimate_shift` / :func:`shift_spectra`: per-pixel energy drift, regularised
  over neighbours, and the interpolation that removes or restores it (also for the
  decomposition and clustering workflows).
* :mod:`~hyperspy_mlspec.spatial.filters`: the blind-spot Gaussian filters and their
  per-coordinate selection, usable on any stack of maps.
"""

from hyperspy_mlspec.spatial.denoiser import SpatialDenoiser
from hyperspy_mlspec.spatial.filters import FilterChoice, blind_spot, select
from hyperspy_mlspec.spatial.shift import ShiftEstimate, estimate_shift, shift_spectra

__all__ = ["FilterChoice", "ShiftEstimate", "SpatialDenoiser", "blind_spot", "estimate_shift",
           "select", "shift_spectra"]
