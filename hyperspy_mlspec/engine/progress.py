"""Progress reporting and training observers, injected from above.

The numeric core never imports HyperSpy. Two things come from the layer that does:

- how ``show_progressbar=None`` is resolved and which bar is drawn: :func:`configure`
  (the signal glue installs HyperSpy's preference and its notebook-aware bar when
  ``hyperspy_mlspec`` is imported; the core alone uses tqdm and shows bars);
- who watches a training run: :func:`observe` attaches a :class:`TrainingObserver` (a GUI's
  live loss curve and Stop button) to the current thread or context; the training loop
  reports every epoch to it and stops, keeping the best weights, when it asks to.

When the output is not a terminal or a notebook (a batch script, CI, a log file), a bar would
write a line per refresh; :class:`LogProgress` writes a line at most every
``log_interval`` seconds and one summary line when the work ends instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ProgressBar(Protocol):
    """What the engine needs of a progress bar (tqdm's interface, reduced)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **kwargs: Any) -> Any: ...

    def close(self) -> Any: ...


@runtime_checkable
class TrainingObserver(Protocol):
    """Watches training runs (see :func:`observe`). Every method is optional.

    ``on_train_begin(info)`` gets ``desc``, ``epochs``, ``batch_size``, ``n_train`` and
    ``n_val``; ``on_epoch_end(row)`` the epoch's history row (``epoch``, ``train_loss``,
    ``val_loss``, ``learning_rate``, ``seconds``); ``stop_requested()`` is polled after every
    optimiser step (keep it cheap); ``on_train_end(result)`` gets the
    :class:`~hyperspy_mlspec.engine.TrainResult`.
    """


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class LogProgress:
    """A progress bar for logs: a line at most every ``interval`` seconds, one at the end.

    Parameters
    ----------
    total
        Expected number of updates (None if unknown).
    desc
        Label at the start of each line.
    unit
        What an update counts.
    interval
        Minimum seconds between progress lines (the summary line is always written).
    stream
        Where lines go (``sys.stderr`` by default).

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = LogProgress(3, "Training", "epoch", interval=3600, stream=out)
    >>> for _ in range(3):
    ...     bar.update(1)
    >>> bar.close()
    >>> out.getvalue().splitlines()[-1].startswith("Training: 3/3 epoch in")
    True
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *,
                 interval: float = 30.0, stream=None) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.n, self.postfix, self._closed = 0, "", False
        self._start = self._last = time.perf_counter()

    def _line(self, final: bool) -> str:
        elapsed = time.perf_counter() - self._start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit} in {elapsed:.1f} s{tail}" + (
            "" if final else " ...")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            print(self._line(False), file=self.stream, flush=True)

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            print(self._line(True), file=self.stream, flush=True)


def in_kernel() -> bool:
    """True inside a Jupyter kernel (widgets and notebook bars render there)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipykernel always brings IPython
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def interactive_output(stream=None) -> bool:
    """True when progress goes to a terminal or a Jupyter kernel (where a bar redraws in
    place), False for a pipe or a file (batch scripts, CI logs)."""
    stream = stream if stream is not None else sys.stderr
    if in_kernel():
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _tqdm_bar(total: int | None, desc: str, unit: str) -> ProgressBar:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


_config: dict[str, Any] = {
    "resolve": lambda show: True if show is None else bool(show),
    "bar": _tqdm_bar,
    "log_interval": 30.0,
}


def configure(*, resolve: Callable[[bool | None], bool] | None = None,
              bar: Callable[[int | None, str, str], ProgressBar] | None = None,
              log_interval: float | None = None) -> None:
    """Set how the core shows progress (called by the glue layer on import).

    Parameters
    ----------
    resolve
        Turns a ``show_progressbar`` argument (None = the user's preference) into a bool.
    bar
        ``bar(total, desc, unit)`` makes an interactive bar (terminal or notebook).
    log_interval
        Seconds between progress lines when the output is not interactive.
    """
    if resolve is not None:
        _config["resolve"] = resolve
    if bar is not None:
        _config["bar"] = bar
    if log_interval is not None:
        _config["log_interval"] = float(log_interval)


def show_progress(show_progressbar: bool | None) -> bool:
    """Resolve ``show_progressbar`` (None follows the configured preference)."""
    return bool(_config["resolve"](show_progressbar))


def progress(total: int | None, desc: str, show_progressbar: bool | None,
             unit: str = "it") -> ProgressBar:
    """A progress bar honouring ``show_progressbar``: the configured interactive bar in a
    terminal or notebook, :class:`LogProgress` lines otherwise, nothing when disabled."""
    if not show_progress(show_progressbar):
        return _NoBar()
    if interactive_output():
        return _config["bar"](total, desc, unit)
    return LogProgress(total, desc, unit, interval=_config["log_interval"])


# -- observers ------------------------------------------------------------------------------
_observers: contextvars.ContextVar[tuple] = contextvars.ContextVar(
    "hyperspy_mlspec_training_observers", default=())


@contextlib.contextmanager
def observe(observer: TrainingObserver) -> Iterator[TrainingObserver]:
    """Attach ``observer`` to every training run started inside the ``with`` block (in this
    thread or context only: a GUI training in a background thread sees just its own runs).

    Examples
    --------
    >>> class Losses:
    ...     def __init__(self):
    ...         self.rows = []
    ...     def on_epoch_end(self, row):
    ...         self.rows.append(row["train_loss"])
    >>> with observe(Losses()) as watcher:
    ...     pass  # s.mlspec.denoise(...) here reports each epoch to watcher
    >>> watcher.rows
    []
    """
    token = _observers.set(_observers.get() + (observer,))
    try:
        yield observer
    finally:
        _observers.reset(token)


class Observers:
    """The observers active when a training run starts, called safely by the loop."""

    def __init__(self) -> None:
        self.items = _observers.get()

    def __bool__(self) -> bool:
        return bool(self.items)

    def notify(self, hook: str, *args: Any) -> None:
        for observer in self.items:
            method = getattr(observer, hook, None)
            if method is not None:
                method(*args)

    def stop_requested(self) -> bool:
        return any(getattr(o, "stop_requested", lambda: False)() for o in self.items)
