"""A simulated acquisition: a spectrum image replayed as a detector would deliver it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["simulate_acquisition"]


def simulate_acquisition(signal, rows_per_step: int = 1, *, order: str = "raster",
                         random_state: int | None = 0) -> Iterator[tuple[np.ndarray,
                                                                        np.ndarray]]:
    """Replay a spectrum image row by row, as it would arrive during a scan.

    Parameters
    ----------
    signal
        HyperSpy signal with one signal dimension and 1 or 2 navigation dimensions; lazy
        signals are read one step at a time (never loaded whole).
    rows_per_step
        Scan rows per step (a map), or pixels per step (a line scan).
    order
        ``"raster"`` (top to bottom) or ``"random"`` (steps in a random order, e.g. a
        sparse or interrupted scan).
    random_state
        Seed of the ``"random"`` order.

    Yields
    ------
    positions : ndarray
        ``(n, 2)`` ``(row, column)`` indices of a map, ``(n,)`` indices of a line scan
        (array order), as :meth:`hyperspy_mlspec.StreamingMonitor.update` takes them.
    spectra : ndarray
        ``(n, n_channels)`` spectra at those positions (a copy: safe to keep).

    Examples
    --------
    >>> from hyperspy_mlspec.data import eels_map, simulate_acquisition
    >>> s = eels_map((4, 6), n_channels=32)
    >>> positions, spectra = next(simulate_acquisition(s))
    >>> positions.shape, spectra.shape
    ((6, 2), (6, 32))
    """
    from hyperspy_mlspec.signals import check_signal

    check_signal(signal)
    nav_dim = signal.axes_manager.navigation_dimension
    if nav_dim not in (1, 2):
        raise ValueError(f"simulate_acquisition needs a line scan or a map (navigation "
                         f"dimension 1 or 2), got {nav_dim}")
    if not (isinstance(rows_per_step, (int, np.integer)) and rows_per_step >= 1):
        raise ValueError(f"rows_per_step must be a positive integer, got {rows_per_step!r}")
    if order not in ("raster", "random"):
        raise ValueError(f"order must be 'raster' or 'random', got {order!r}")
    data = signal.data
    n_rows = int(data.shape[0])
    n_channels = int(data.shape[-1])
    starts = np.arange(0, n_rows, int(rows_per_step))
    if order == "random":
        starts = np.random.default_rng(random_state).permutation(starts)
    for start in starts:
        stop = min(n_rows, int(start) + int(rows_per_step))
        block = data[start:stop]
        block = np.array(block.compute() if hasattr(block, "compute") else block)
        if nav_dim == 2:
            rows, cols = np.meshgrid(np.arange(start, stop), np.arange(data.shape[1]),
                                     indexing="ij")
            positions = np.column_stack([rows.ravel(), cols.ravel()])
        else:
            positions = np.arange(start, stop)
        yield positions, block.reshape(-1, n_channels)
