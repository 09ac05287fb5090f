"""What the numeric core computes on: spectra tables and axis descriptions (no HyperSpy)."""

from hyperspy_mlspec.arrays.axis import AxisInfo, alignment, convert, parse_position
from hyperspy_mlspec.arrays.table import (
    Reassembler,
    SpectraTable,
    array_table,
    as_tables,
    is_dask,
    register_adapter,
)

__all__ = [
    "AxisInfo",
    "Reassembler",
    "SpectraTable",
    "alignment",
    "array_table",
    "as_tables",
    "convert",
    "is_dask",
    "parse_position",
    "register_adapter",
]
