"""Progress the HyperSpy way: the core's bars follow ``hs.preferences`` and use HyperSpy's
notebook-aware bar (installed into :mod:`hyperspy_mlspec.engine.progress` on import)."""

from __future__ import annotations


def show_progressbar(show: bool | None) -> bool:
    """``show_progressbar`` resolved: None follows ``hs.preferences.General``."""
    if show is None:
        from hyperspy.defaults_parser import preferences

        return bool(preferences.General.show_progressbar)
    return bool(show)


def bar(total: int | None, desc: str, unit: str):
    """HyperSpy's progress bar (tqdm; the notebook widget in Jupyter)."""
    from hyperspy.external.progressbar import progressbar

    return progressbar(total=total, desc=desc, unit=unit, leave=False)


def install() -> None:
    """Make the numeric core show progress the HyperSpy way."""
    from hyperspy_mlspec.engine import progress

    progress.configure(resolve=show_progressbar, bar=bar)
