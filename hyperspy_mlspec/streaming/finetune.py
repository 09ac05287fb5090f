"""Online fine-tuning on arrays (no HyperSpy): a ring buffer of recent spectra and their
anomaly scores, and the training of a copy of the model on the well-explained ones."""

from __future__ import annotations

import copy
import warnings

import numpy as np


class TuningBuffer:
    """The ``size`` most recent spectra with their scores; says when a round is due.

    Parameters
    ----------
    size
        Spectra kept.
    every
        Spectra between two rounds.
    trim
        Fraction of the buffer with the highest scores left out of a round.

    Examples
    --------
    >>> buf = TuningBuffer(size=4, every=3, trim=0.25)
    >>> buf.add(np.arange(8.0).reshape(4, 2), np.array([0.1, 0.2, 9.0, 0.3]))
    >>> buf.due(), buf.training_rows()[:, 0].tolist()
    (True, [0.0, 2.0, 6.0])
    """

    def __init__(self, size: int, every: int, trim: float) -> None:
        self.size, self.every, self.trim = int(size), int(every), float(trim)
        self.rows: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.next = 0
        self.filled = 0
        self.since = 0

    def add(self, x: np.ndarray, scores: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.empty((self.size, x.shape[1]), np.float32)
            self.scores = np.empty(self.size)
        x, scores = x[-self.size:], scores[-self.size:]
        idx = (self.next + np.arange(len(x))) % self.size
        self.rows[idx] = x
        self.scores[idx] = scores
        self.next = int((self.next + len(x)) % self.size)
        self.filled = min(self.size, self.filled + len(x))
        self.since += len(x)

    def due(self) -> bool:
        """True when ``every`` spectra arrived since the last round."""
        return self.since >= self.every

    def training_rows(self) -> np.ndarray:
        """A copy of the buffered rows without the ``trim`` highest-scoring ones (the
        buffer keeps filling meanwhile); resets the countdown."""
        self.since = 0
        rows = self.rows[: self.filled]
        s = self.scores[: self.filled]
        keep = s <= np.quantile(s, 1.0 - self.trim) if len(s) > 1 else np.ones(len(s), bool)
        return rows[keep].copy()


def fine_tuned(model, data: np.ndarray):
    """A copy of ``model`` trained further on ``data`` (``partial_fit``); the original is
    left untouched, so scoring can go on with it meanwhile."""
    tuned = copy.deepcopy(model)
    if "show_progressbar" in tuned.get_params():
        tuned.set_params(show_progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned.partial_fit(data)
    return tuned
