"""Data in/out layer and axis handling."""

import hyperspy.api as hs
import numpy as np
import pint
import pytest

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.arrays.axis import AxisInfo, alignment, convert, parse_position


def test_parse_positions_in_units():
    assert parse_position("0.6 keV", "eV") == pytest.approx(600.0)
    assert parse_position(pint.UnitRegistry()("600 eV"), "keV") == pytest.approx(0.6)
    assert parse_position(3, None) == 3.0
    with pytest.raises(ValueError, match="cannot be converted"):
        parse_position("3 nm", "eV")
    with pytest.raises(ValueError, match="no units"):
        parse_position("3 eV", None)
    np.testing.assert_allclose(convert([1.0], "keV", "eV"), [1000.0])


def test_table_rows_masks_and_scatter():
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    s = hs.signals.Signal1D(data)
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    t = sio.table(s, navigation_mask=mask, signal_mask=np.r_[True, False, False, False,
                                                                 False, True])
    assert t.rows.shape == (19, 4)
    np.testing.assert_array_equal(t.rows[0], data[0, 0, 1:5])
    full = t.scatter(np.asarray(t.rows[:, :1]))
    assert full.shape == (4, 5, 1) and np.isnan(full[1, 2, 0])
    assert full[3, 4, 0] == data[3, 4, 1]
    assert s.data is data or np.shares_memory(s.data, data)  # nothing copied or written
    np.testing.assert_array_equal(s.data, np.arange(120).reshape(4, 5, 6))


def test_lazy_table_stays_lazy_and_rechunks_signal_axis():
    s = hs.signals.Signal1D(np.ones((6, 7, 8))).as_lazy()
    s.data = s.data.rechunk((3, 7, 4))  # chunks split the signal axis
    t = sio.table(s)
    assert t.lazy and hasattr(t.rows, "dask") and len(t.rows.chunks[1]) == 1


def test_non_uniform_axis_round_trip():
    from hyperspy.axes import DataAxis

    energies = np.sort(np.random.default_rng(0).uniform(100, 200, 10))
    s = hs.signals.Signal1D(np.ones((3, 10)), axes=[
        {"size": 3, "navigate": True},
        DataAxis(axis=energies, name="E", units="eV").get_axis_dictionary()])
    info = sio.axis_info(s.axes_manager.signal_axes[0])
    assert info.uniform() is None
    np.testing.assert_allclose(AxisInfo.from_dict(info.to_dict()).values, energies)
    out = sio.signal_like(s, np.zeros((3, 10)), "zeros")
    np.testing.assert_allclose(out.axes_manager.signal_axes[0].axis, energies)
    assert out.metadata.General.title == "zeros"


def test_alignment_identical_converted_and_refused():
    model = AxisInfo("E", "eV", 400 + 0.5 * np.arange(100))
    assert alignment(AxisInfo("E", "eV", model.values.copy()), model) is None
    assert alignment(AxisInfo("E", "keV", model.values / 1000), model) is None
    sub = AxisInfo("E", "eV", 390 + 0.5 * np.arange(200))  # wider, same grid
    rows = np.tile(390 + 0.5 * np.arange(200), (2, 1))
    np.testing.assert_allclose(alignment(sub, model)(rows), np.tile(model.values, (2, 1)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="overlap"):
        alignment(AxisInfo("E", "eV", 800 + np.arange(100.0)), model)
    with pytest.raises(ValueError, match="cannot convert"):
        alignment(AxisInfo("E", "nm", model.values), model)


def test_record_is_saveable_metadata(tmp_path):
    s = hs.signals.Signal1D(np.ones((2, 4)))
    sio.record(s, "test", params={"a": 1}, n=3)
    sio.record(s, "again")
    assert s.metadata.MLSpec.operation_1.operation == "again"
    s.save(tmp_path / "r.hspy")
    assert hs.load(tmp_path / "r.hspy").metadata.MLSpec.operation_0.n == 3


def test_navigation_image_axes():
    s = hs.signals.Signal1D(np.ones((3, 4, 5)))
    s.axes_manager.navigation_axes[0].units = "nm"
    img = sio.navigation_image(s, np.zeros((3, 4)), "score", "deviance")
    assert img.axes_manager.signal_shape == (4, 3)
    assert img.axes_manager.signal_axes[0].units == "nm"
    assert img.metadata.Signal.quantity == "deviance"


# -- properties over shapes, dtypes and calibrations (hypothesis) ----------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_DTYPES = [np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64, np.float16,
           np.float32, np.float64]


@st.composite
def _signals(draw):
    nav = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    n = draw(st.integers(2, 12))
    dtype = draw(st.sampled_from(_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = rng.integers(0, 100, nav + (n,)).astype(dtype)
    uniform = draw(st.booleans())
    units = draw(st.sampled_from(["eV", "keV", "<undefined>"]))
    axes = [{"size": k, "name": f"n{i}", "units": "nm", "scale": 1.5} for i, k in enumerate(nav)]
    if uniform:
        axes.append({"size": n, "name": "E", "units": units,
                     "offset": draw(st.floats(-100, 1000)), "scale": draw(st.floats(0.01, 5))})
    else:
        axes.append({"axis": np.cumsum(rng.uniform(0.1, 2.0, n)), "name": "E", "units": units})
    s = hs.signals.Signal1D(data, axes=axes)
    lazy = draw(st.booleans()) and nav
    if lazy:
        s = s.as_lazy()
        s.data = s.data.rechunk((draw(st.integers(1, 3)),) * len(nav) + (-1,))
    mask = None
    if nav and draw(st.booleans()):
        mask = rng.random(nav) < 0.3
        if mask.all():
            mask.flat[0] = False
    return s, mask


@settings(max_examples=60, deadline=None)
@given(_signals())
def test_table_scatter_and_outputs_round_trip(case):
    """signal -> table -> per-row results -> signal keeps every value, axis and dtype-safe
    conversion, for any navigation dimension 0-3, dtype, calibration and mask."""
    s, mask = case
    data = np.asarray(s.data.compute() if s._lazy else s.data).copy()
    t = sio.table(s, navigation_mask=mask)
    nav = data.shape[:-1]
    keep = np.ones(nav, bool) if mask is None else ~mask
    rows = np.asarray(t.rows.compute() if t.lazy else t.rows)
    np.testing.assert_array_equal(rows, data[keep].reshape(-1, data.shape[-1]))
    assert t.lazy == bool(s._lazy)
    axis = s.axes_manager.signal_axes[0]
    np.testing.assert_allclose(t.axis.values, axis.axis)
    assert t.axis.units == (None if axis.units == "<undefined>" else axis.units)
    # per-row results back on the grid, as a signal with the same axes
    back = t.scatter(t.rows.astype(np.float64))
    out = sio.signal_like(s, back, "copy")
    got = np.asarray(out.data.compute() if out._lazy else out.data)
    np.testing.assert_array_equal(got[keep], data[keep].astype(np.float64))
    assert np.isnan(got[~keep]).all()
    assert [(a.size, a.name, a.units) for a in out.axes_manager._axes] == \
        [(a.size, a.name, a.units) for a in s.axes_manager._axes]
    # the model's axis description survives its JSON form
    from hyperspy_mlspec.arrays import AxisInfo

    np.testing.assert_allclose(AxisInfo.from_dict(t.axis.to_dict()).values, t.axis.values,
                               rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(s.data.compute() if s._lazy else s.data), data)
