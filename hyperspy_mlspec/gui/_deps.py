"""Which GUI toolkits can be used, and a clear error naming the extra when none can."""

from __future__ import annotations

import importlib.util

GUI_EXTRA = 'pip install "hyperspy_mlspec[gui]"'
"""The command that installs what the panels need (ipywidgets, link_traits, ipympl,
traitsui, PyQt5 and HyperSpy's own GUI packages)."""

TOOLKITS = ("ipywidgets", "traitsui")
# what each toolkit's widgets import; PyQt5 or another Qt binding for traitsui
_NEEDS = {"ipywidgets": ("ipywidgets", "link_traits"),
          "traitsui": ("traitsui", "pyface")}
_QT_BINDINGS = ("PyQt5", "PyQt6", "PySide6", "PySide2")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(toolkit: str) -> list[str]:
    """The packages a toolkit needs that are not installed (empty when it can be used).

    Examples
    --------
    >>> missing("ipywidgets") in ([], ["ipywidgets"], ["link_traits"],
    ...                           ["ipywidgets", "link_traits"])
    True
    """
    if toolkit not in _NEEDS:
        raise ValueError(f"unknown GUI toolkit {toolkit!r}: use one of {TOOLKITS}")
    absent = [m for m in _NEEDS[toolkit] if not _installed(m)]
    if toolkit == "traitsui" and not any(_installed(q) for q in _QT_BINDINGS):
        absent.append("PyQt5")
    return absent


def available_toolkits() -> tuple[str, ...]:
    """Toolkits that are installed and enabled in ``hs.preferences.GUIs``."""
    from hyperspy.defaults_parser import preferences

    enabled = {"ipywidgets": preferences.GUIs.enable_ipywidgets_gui,
               "traitsui": preferences.GUIs.enable_traitsui_gui}
    return tuple(tk for tk in TOOLKITS if enabled[tk] and not missing(tk))


def require_toolkit(toolkit=None) -> tuple[str, ...]:
    """Resolve ``toolkit`` as HyperSpy does (None: every enabled one), keeping only those
    whose packages are installed; raise an ImportError naming the ``gui`` extra otherwise.

    Parameters
    ----------
    toolkit
        None, ``"ipywidgets"``, ``"traitsui"`` or an iterable of them.

    Returns
    -------
    tuple of str
        The toolkits to use.

    Examples
    --------
    >>> require_toolkit("ipywidgets")  # doctest: +SKIP
    ('ipywidgets',)
    """
    if toolkit is None:
        usable = available_toolkits()
        if not usable:
            raise ImportError(
                "The hyperspy_mlspec GUI needs ipywidgets (Jupyter) or traitsui with Qt, and "
                f"neither is installed and enabled. Install the gui extra: {GUI_EXTRA} "
                "(and check hs.preferences.GUIs).")
        return usable
    wanted = (toolkit,) if isinstance(toolkit, str) else tuple(toolkit)
    for tk in wanted:
        absent = missing(tk)
        if absent:
            raise ImportError(
                f"The {tk} GUI of hyperspy_mlspec needs {', '.join(absent)}, which is not "
                f"installed. Install the gui extra: {GUI_EXTRA}")
    return wanted
