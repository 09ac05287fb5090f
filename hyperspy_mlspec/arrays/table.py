"""Spectra as the numeric core sees them: a table of rows plus its axis and navigation grid.

A :class:`SpectraTable` holds ``(n_rows, n_channels)`` rows (numpy or dask), the signal axis
of its channels (:class:`~hyperspy_mlspec.arrays.axis.AxisInfo`) and where each row sits on
the navigation grid, so per-row results can be put back on the grid (:meth:`scatter`).

The core never reads HyperSpy signals or files itself. Objects it does not know (signals,
file paths) become tables through adapters that the layer above registers
(:func:`register_adapter`; the signal glue does so when ``hyperspy_mlspec`` is imported), and
a table made from a signal carries that layer's :class:`Reassembler`, which turns results
back into signals. Arrays need neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from hyperspy_mlspec.arrays.axis import AxisInfo


def is_dask(X: Any) -> bool:
    """True for a dask array."""
    return hasattr(X, "dask") and hasattr(X, "chunks")


class Reassembler(Protocol):
    """Turns navigation-grid results back into the user's objects (signals).

    ``data`` are full-grid arrays (``nav_shape + (k,)`` or ``nav_shape``), numpy or dask.
    ``details`` are recorded with the result (operation name and parameters).
    """

    def vectors(self, data: Any, title: str, axis_name: str, **details: Any) -> Any: ...

    def image(self, data: Any, title: str, quantity: str | None = None,
              **details: Any) -> Any: ...

    def spectra(self, data: Any, title: str, axis: AxisInfo, **details: Any) -> Any: ...


@dataclass
class SpectraTable:
    """Rows of spectra ready for an estimator, and how to put results back.

    Attributes
    ----------
    rows
        ``(n_rows, n_channels)`` numpy or dask array (a view when possible: never written).
    nav_index
        Flat navigation indices (array order) of the rows, or None when all are used.
    nav_shape
        Navigation shape in array order (``(n_rows,)`` for a plain array).
    channels
        Integer indices of the source's channels used, or None for all.
    axis
        The signal axis of the rows (after channel selection or resampling).
    lazy
        True when ``rows`` is a dask array.
    name
        What the rows came from, for error messages.
    reassemble
        How results become the user's objects again (None: plain arrays).
    source
        The object the table was made from (a signal), for titles and metadata; never
        modified.
    """

    rows: Any
    nav_index: np.ndarray | None
    nav_shape: tuple[int, ...]
    channels: np.ndarray | None
    axis: AxisInfo
    lazy: bool
    name: str = "X"
    reassemble: Reassembler | None = field(default=None, repr=False)
    source: Any = field(default=None, repr=False)

    @property
    def n_nav(self) -> int:
        return int(np.prod(self.nav_shape, dtype=np.int64))

    def with_rows(self, rows: Any, axis: AxisInfo | None = None,
                  channels: np.ndarray | None = None) -> SpectraTable:
        """The same table with other rows (resampled, restricted), same navigation."""
        return replace(self, rows=rows, axis=self.axis if axis is None else axis,
                       channels=channels, lazy=is_dask(rows))

    def map_rows(self, fn: Callable[[np.ndarray], np.ndarray], n_out: int) -> Any:
        """``fn`` applied to the rows block by block (lazy stays lazy)."""
        if self.lazy:
            return self.rows.map_blocks(fn, chunks=(self.rows.chunks[0], (n_out,)),
                                        dtype=np.float32)
        return fn(self.rows)

    def scatter(self, values, fill: float = np.nan):
        """Put per-row results back on the full navigation grid.

        ``values`` of shape ``(n_rows, k)`` give ``nav_shape + (k,)``; masked pixels get
        ``fill``. Dask in gives dask out.

        Examples
        --------
        >>> t = SpectraTable(np.ones((2, 3)), np.array([0, 2]), (3,), None,
        ...                  AxisInfo("E", None, np.arange(3.0)), False)
        >>> t.scatter(np.array([[1.0], [2.0]]))[:, 0]
        array([ 1., nan,  2.])
        """
        k = values.shape[1]
        if self.nav_index is None:
            return values.reshape(self.nav_shape + (k,))
        if is_dask(values):
            import dask.array as da

            full = da.full((self.n_nav, k), fill, dtype=values.dtype,
                           chunks=(values.chunks[0][0], k))
            full[self.nav_index] = values  # dask supports assignment with an index array
            return full.reshape(self.nav_shape + (k,))
        full = np.full((self.n_nav, k), fill, dtype=np.result_type(values.dtype, np.float32))
        full[self.nav_index] = values
        return full.reshape(self.nav_shape + (k,))

    # -- results back to the user's objects ----------------------------------------------
    def vectors(self, values, title: str, axis_name: str, **details: Any):
        """Per-row vectors ``(n_rows, k)`` as the caller's kind of result: a Signal1D per
        pixel for a signal (see :class:`Reassembler`), the rows themselves for arrays."""
        if self.reassemble is None:
            return values
        return self.reassemble.vectors(self.scatter(values), title, axis_name, **details)

    def image(self, values, title: str, quantity: str | None = None, **details: Any):
        """Per-row scalars ``(n_rows,)`` as a navigation map (signals) or the values."""
        if self.reassemble is None:
            return values
        return self.reassemble.image(self.scatter(values[:, None])[..., 0], title, quantity,
                                     **details)


def array_table(X: Any, name: str = "X") -> SpectraTable:
    """A table of a 2-D numpy or dask array ``(n_spectra, n_channels)`` on an uncalibrated
    channel axis.

    Examples
    --------
    >>> array_table(np.zeros((4, 8))).axis.size
    8
    """
    lazy = is_dask(X)
    if lazy:
        if X.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array of spectra (n_spectra, "
                             f"n_channels), got shape {X.shape}")
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype,
                                                                 np.complexfloating):
            raise ValueError(f"{name}: expected real numbers, got dtype {X.dtype}")
    else:
        from sklearn.utils import check_array

        # scikit-learn's checks and messages (sparse, complex, object, empty); NaN/inf are
        # the estimators' business (their messages say how to mask pixels)
        X = check_array(X, dtype="numeric", ensure_all_finite=False,
                        input_name=name if name != "X" else "X")
    axis = AxisInfo("channel", None, np.arange(X.shape[1], dtype=np.float64))
    return SpectraTable(X, None, (int(X.shape[0]),), None, axis, lazy, name=name)


def _array_like(obj: Any) -> bool:
    import scipy.sparse

    if isinstance(obj, (list, tuple)):  # nested numbers, not a list of signals or paths
        return bool(obj) and isinstance(obj[0], (list, tuple, int, float, np.number))
    return isinstance(obj, np.ndarray) or scipy.sparse.issparse(obj) or (
        hasattr(obj, "__array__") and not hasattr(obj, "axes_manager"))


# -- adapters: how the layer above turns its objects into tables ---------------------------
Adapter = Callable[[Any, str, Any], "list[SpectraTable] | None"]
_adapters: list[Adapter] = []


def register_adapter(adapter: Adapter) -> None:
    """Let :func:`as_tables` read another kind of object.

    ``adapter(obj, name, navigation_mask)`` returns a list of tables (a file may hold
    several signals) or None when it does not handle ``obj``. Registering the same
    function twice is a no-op.
    """
    if adapter not in _adapters:
        _adapters.append(adapter)


def as_tables(obj: Any, name: str = "X", navigation_mask: Any = None) -> list[SpectraTable]:
    """Tables of ``obj``: a table as it is, a 2-D numpy/dask array, or anything a registered
    adapter reads (HyperSpy signals, file paths and globs once ``hyperspy_mlspec`` is
    imported). ``navigation_mask`` (True = excluded) applies to signals only."""
    if isinstance(obj, SpectraTable) or is_dask(obj) or _array_like(obj):
        if navigation_mask is not None:
            raise ValueError(f"{name}: navigation_mask applies to signals; index the array "
                             "instead")
        return [obj if isinstance(obj, SpectraTable) else array_table(obj, name)]
    for adapter in _adapters:
        tables = adapter(obj, name, navigation_mask)
        if tables is not None:
            return tables
    raise TypeError(f"{name}: expected a HyperSpy signal, a 2-D numpy/dask array, or a file "
                    f"path/glob, got {type(obj).__name__}")


def on_model_axis(table: SpectraTable, model_axis: dict | None,
                  n_expected: int) -> SpectraTable:
    """``table`` on the channels a fitted model expects (its recorded training axis).

    Same channels are used directly, other calibrations are converted (pint) and
    resampled, incompatible axes are refused with an explanation.

    Examples
    --------
    >>> t = array_table(np.ones((2, 5)))
    >>> on_model_axis(t, None, 5) is t
    True
    """
    from hyperspy_mlspec.arrays.axis import alignment

    if model_axis is None:
        if table.axis.size != n_expected:
            raise ValueError(f"{table.name}: the model expects {n_expected} channels but the "
                             f"data have {table.axis.size}; the model records no energy axis "
                             "to resample onto (fit it through s.mlspec to record one).")
        return table
    target = AxisInfo.from_dict(model_axis)
    resample = alignment(table.axis, target)
    if resample is None:
        if table.axis.size != n_expected:
            raise ValueError(f"{table.name}: the model expects {n_expected} channels, got "
                             f"{table.axis.size}")
        return table
    return table.with_rows(table.map_rows(resample, target.size), axis=target)
