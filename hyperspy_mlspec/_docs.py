"""Defaults and parameter documentation written once (as ``hyperspy.docstrings`` does).

Signatures take their defaults from here (``n_components: int = N_COMPONENTS``), and
docstrings name shared parameters by a placeholder that :func:`fill` replaces, so the same
parameter reads the same everywhere. A leaf module: it imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

#: latent dimensions of the autoencoder decomposition and of models fitted for maps
N_COMPONENTS = 4

_F = TypeVar("_F", bound=Callable)

# placeholder -> text; indented for a numpydoc "Parameters" entry of a method (8 spaces)
# or a function (4 spaces): fill() re-indents to the placeholder's own indentation
PARAMETERS = {
    "SHOW_PROGRESSBAR": "show_progressbar\n"
                        "    None follows ``hs.preferences.General.show_progressbar``.",
    "SIGNAL_RANGE": "signal_range\n"
                    "    ``(start, end)`` in axis units, as numbers, strings such as\n"
                    "    ``\"0.6 keV\"`` or pint quantities; either end may be None.",
    "SIGNAL_MASK": "signal_mask\n"
                   "    Boolean array over channels; True excludes a channel.",
    "NAVIGATION_MASK_FIT": "navigation_mask\n"
                           "    Boolean array (array order) or signal of the navigation\n"
                           "    shape; True excludes a pixel from fitting.",
}


def fill(obj: _F) -> _F:
    """Replace ``%NAME%`` lines of ``obj.__doc__`` by the shared text of ``PARAMETERS``.

    Examples
    --------
    >>> @fill
    ... def f(show_progressbar=None):
    ...     '''Parameters
    ...     ----------
    ...     %SHOW_PROGRESSBAR%
    ...     '''
    >>> "hs.preferences" in f.__doc__
    True
    """
    doc = obj.__doc__
    if doc:
        lines = []
        for line in doc.split("\n"):
            key = line.strip()
            if key.startswith("%") and key.endswith("%") and key[1:-1] in PARAMETERS:
                indent = line[: len(line) - len(line.lstrip())]
                lines.extend(indent + text for text in PARAMETERS[key[1:-1]].split("\n"))
            else:
                lines.append(line)
        obj.__doc__ = "\n".join(lines)
    return obj
