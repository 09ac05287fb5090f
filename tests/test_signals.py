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
