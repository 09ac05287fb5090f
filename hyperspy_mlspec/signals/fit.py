"""The one path that fits an estimator on a signal (namespace, CLI, batch files, GUI)."""

from __future__ import annotations

from typing import Any

from hyperspy_mlspec.arrays import SpectraTable
from hyperspy_mlspec.signals.table import table


def fit_on_signal(estimator: Any, signal, *, navigation_mask=None, signal_mask=None,
                  signal_range=None) -> SpectraTable:
    """Fit ``estimator`` on the spectra of ``signal`` and record the training energy axis.

    The rows are streamed chunk by chunk for a lazy signal; integer counts are converted
    as they are read (the signal is never modified). The recorded axis
    (``estimator.signal_axis_``) lets the model be applied later to maps with another
    calibration (they are resampled onto it) and is saved with the model.

    Parameters
    ----------
    estimator
        An unfitted estimator with ``fit(rows)`` (any hyperspy_mlspec estimator).
    signal
        The HyperSpy signal to learn from.
    navigation_mask
        True excludes a pixel from fitting.
    signal_mask
        True excludes a channel.
    signal_range
        ``(start, end)`` in axis units (numbers, ``"0.6 keV"``...).

    Returns
    -------
    SpectraTable
        The table the estimator was fitted on (reuse it to apply the model to the same
        pixels without reading the signal's layout again).

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> from hyperspy_mlspec import AutoencoderDecomposition
    >>> s = hyperspy_mlspec.data.eels_map((8, 8), n_channels=64)
    >>> est = AutoencoderDecomposition(2, epochs=2, show_progressbar=False)
    >>> t = fit_on_signal(est, s, signal_range=("500 eV", None))
    >>> est.signal_axis_["units"], t.rows.shape[0]
    ('eV', 64)
    """
    t = table(signal, navigation_mask, signal_mask, signal_range)
    estimator.fit(t.rows)
    estimator.signal_axis_ = t.axis.to_dict()
    return t
