"""Sphinx configuration of the hyperspy_mlspec documentation.

Build (from the repository root)::

    .venv/bin/pip install -e ".[docs]"
    .venv/bin/python -m sphinx -b html -W --keep-going docs docs/_build/html

or ``make docs``. The figures in ``_static/`` are made by ``docs/make_figures.py``.
"""

from __future__ import annotations

import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")  # autodoc imports the package, which imports matplotlib

sys.path.insert(0, os.path.abspath(".."))

import hyperspy_mlspec  # noqa: E402

project = "hyperspy_mlspec"
author = "hyperspy_mlspec developers"
copyright = "hyperspy_mlspec developers, GPL-3.0-or-later"  # noqa: A001
release = hyperspy_mlspec.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",  # renders benchmarks/RESULTS.md (Markdown) in benchmarks.rst
]

# no intersphinx: the documentation builds without internet access
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
source_suffix = {".rst": "restructuredtext"}  # Markdown only through the include above
# RESULTS.md is included without its "# Benchmark results" title, so its "##" sections
# nest under the page's "Results" section
suppress_warnings = ["myst.header"]
root_doc = "index"
default_role = "py:obj"

# -- autodoc / numpydoc --------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc sections say it better
autodoc_default_options = {"show-inheritance": False}
numpydoc_show_class_members = False  # members are listed explicitly in api.rst
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# HyperSpy and exspy warn on import about optional accelerators; not the docs' business
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*Numba.*")

# -- HTML ----------------------------------------------------------------------------------
try:
    import pydata_sphinx_theme  # noqa: F401

    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navigation_with_keys": False,
        "show_toc_level": 2,
        "secondary_sidebar_items": ["page-toc"],
    }
except ImportError:  # the built-in theme still builds
    html_theme = "alabaster"
html_title = f"hyperspy_mlspec {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
