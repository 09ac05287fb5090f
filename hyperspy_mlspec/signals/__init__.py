"""The glue between HyperSpy and the numeric core: everything that knows about signals.

- :mod:`~hyperspy_mlspec.signals.table`: signal -> :class:`~hyperspy_mlspec.arrays.SpectraTable`
  (masks, signal range, calibration, dtype, lazy row blocks), rows for a fitted model;
- :mod:`~hyperspy_mlspec.signals.outputs`: results -> signals with the input's axes and
  metadata, operations recorded in ``metadata.MLSpec``;
- :mod:`~hyperspy_mlspec.signals.fit`: the one "fit an estimator on a signal" path;
- :mod:`~hyperspy_mlspec.signals.files`: load/save for batch work, lazily and on clusters;
- :mod:`~hyperspy_mlspec.signals.progress`: the core's progress bars the HyperSpy way.

:func:`install` (run by ``import hyperspy_mlspec``) lets the core read signals and files and
show progress. The ``s.mlspec`` namespace (:mod:`hyperspy_mlspec.accessor`) sits above this
package and the workflows it calls.
"""

from hyperspy_mlspec.signals.files import load, portable, save
from hyperspy_mlspec.signals.fit import fit_on_signal
from hyperspy_mlspec.signals.outputs import (
    SignalOutputs,
    navigation_image,
    record,
    shift_image,
    shift_units,
    signal_like,
    vector_signal,
)
from hyperspy_mlspec.signals.table import (
    axis_info,
    check_alignable,
    check_signal,
    is_lazy,
    is_shift_map,
    navigation_mask_array,
    rows_of,
    shift_map_channels,
    signal_channels,
    table,
    table_for_model,
)


def install() -> None:
    """Register the signal and file adapters of the core and route its progress bars
    through HyperSpy (idempotent)."""
    from hyperspy_mlspec.arrays import register_adapter
    from hyperspy_mlspec.signals import progress
    from hyperspy_mlspec.signals.files import path_adapter
    from hyperspy_mlspec.signals.table import signal_adapter

    progress.install()
    register_adapter(signal_adapter)
    register_adapter(path_adapter)


__all__ = [
    "SignalOutputs",
    "axis_info",
    "check_alignable",
    "check_signal",
    "fit_on_signal",
    "install",
    "is_lazy",
    "is_shift_map",
    "load",
    "navigation_image",
    "navigation_mask_array",
    "portable",
    "record",
    "rows_of",
    "save",
    "shift_image",
    "shift_map_channels",
    "shift_units",
    "signal_channels",
    "signal_like",
    "table",
    "table_for_model",
    "vector_signal",
]
