"""The s.mlspec namespace with HyperSpy's own tools (in-memory and lazy variants)."""

import exspy
import hyperspy.api as hs
import numpy as np
import pytest
from hyperspy.decorators import lazifyTestClass

import hyperspy_mlspec
from tests.conftest import FAST, mixture_map


@lazifyTestClass
class TestNamespace:
    def setup_method(self, method):
        self.s, self.clean = mixture_map((8, 9), n_channels=48, dose=40)

    def test_namespace_on_every_signal_not_cached(self):
        s = self.s
        assert isinstance(s.mlspec, hyperspy_mlspec.MLSpecNamespace)
        c = s.copy()
        assert c.mlspec._signal is c and s.mlspec._signal is s

    def test_decomposition_fills_learning_results_and_leaves_data(self):
        s = self.s
        before = np.array(s.data)
        ae = s.mlspec.decomposition(3, decoder="linear", **FAST)
        np.testing.assert_array_equal(np.array(s.data), before)
        lr = s.learning_results
        assert lr.factors.shape == (48, 3) and lr.loadings.shape == (72, 3)
        assert lr.decomposition_algorithm is ae
        assert lr.explained_variance.shape == (3,)
        factors = s.get_decomposition_factors()
        assert factors.axes_manager.signal_axes[0].units == "eV"
        model = s.get_decomposition_model(3)
        rec = s.mlspec.reconstruct(ae)
        np.testing.assert_allclose(np.array(model.data), np.array(rec.data), rtol=1e-3,
                                   atol=1e-2)  # linear decoder: HyperSpy's model is exact
        s.plot_decomposition_results()
        s.plot_explained_variance_ratio()
        s.cluster_analysis("decomposition", n_clusters=3, number_of_components=3)
        assert s.learning_results.cluster_labels.shape == (3, 72)

    def test_reconstruct_keeps_class_axes_metadata_and_is_lazy_if_input_is(self):
        s = self.s
        ae = s.mlspec.decomposition(3, **{**FAST, "epochs": 40})
        rec = s.mlspec.reconstruct(ae)
        assert type(rec) is type(s) and rec._lazy == s._lazy
        assert rec.axes_manager.signal_axes[0].offset == 500.0
        assert [a.name for a in rec.axes_manager.navigation_axes] == ["x", "y"]
        assert rec.axes_manager.navigation_axes[0].scale == 2.0
        assert "reconstruction" in rec.metadata.General.title
        assert rec.metadata.MLSpec.operation_0.operation == "reconstruct"
        assert not s.metadata.has_item("MLSpec")  # the input is untouched
        err = np.mean((np.array(rec.data) - self.clean) ** 2)
        assert err < np.mean((np.array(s.data) - self.clean) ** 2)

    def test_encode_gives_latent_signal_with_navigation_axes(self):
        s = self.s
        ae = s.mlspec.decomposition(2, **FAST)
        z = s.mlspec.encode(ae)
        assert z.axes_manager.signal_axes[0].name == "latent"
        assert z.data.shape == (8, 9, 2) and z._lazy == s._lazy
        assert z.axes_manager.navigation_axes[1].name == "y"
        np.testing.assert_allclose(np.array(z.data).reshape(-1, 2),
                                   ae.transform(np.array(s.data).reshape(-1, 48)), rtol=1e-5)

    def test_masks_and_signal_range_in_units(self):
        s = self.s
        nav_mask = np.zeros((8, 9), dtype=bool)  # array order
        nav_mask[0, :3] = True
        ae = s.mlspec.decomposition(2, navigation_mask=nav_mask,
                                    signal_range=("0.505 keV", 520.0), **FAST)
        assert ae.n_features_in_ == 31  # 505..520 eV at 0.5 eV per channel
        rec = s.mlspec.reconstruct(ae)
        assert rec.axes_manager.signal_axes[0].offset == pytest.approx(505.0)
        assert rec.data.shape[-1] == 31
        codes = s.mlspec.encode(ae, navigation_mask=nav_mask)
        assert np.isnan(np.array(codes.data)[0, :3]).all()
        assert np.isfinite(np.array(codes.data)[1:]).all()


def test_model_applies_across_calibrations(mixture):
    s, _ = mixture
    ae = s.mlspec.decomposition(2, **FAST)
    ref = np.array(s.mlspec.reconstruct(ae).data)
    kev = s.deepcopy()
    ax = kev.axes_manager.signal_axes[0]
    ax.units, ax.offset, ax.scale = "keV", 0.5, 0.0005
    np.testing.assert_allclose(np.array(kev.mlspec.reconstruct(ae).data), ref, rtol=1e-5)
    shifted = s.deepcopy()
    shifted.axes_manager.signal_axes[0].offset = 800.0
    with pytest.raises(ValueError, match="overlap"):
        shifted.mlspec.encode(ae)
    # finer sampling of the same range: resampled onto the model's channels, counts per
    # channel rescaled by the channel width, so the codes barely change
    fine = exspy.signals.EELSSpectrum(np.repeat(s.data, 2, axis=-1) / 2)
    ax = fine.axes_manager.signal_axes[0]
    ax.units, ax.offset, ax.scale = "eV", 500.0, 0.25
    codes = np.array(fine.mlspec.encode(ae).data)
    np.testing.assert_allclose(codes, np.array(s.mlspec.encode(ae).data), rtol=0.15,
                               atol=0.15 * np.abs(codes).mean())


@pytest.mark.parametrize("make, match", [
    (lambda s: hs.signals.Signal2D(np.ones((4, 5, 6))), "signal dimension 1"),
    (lambda s: _with_nan(s), "NaN or infinity"),
    (lambda s: s, "excludes every pixel"),
])
def test_bad_signals_clear_errors(mixture, make, match):
    s, _ = mixture
    bad = make(s)
    kwargs = {"navigation_mask": np.ones((10, 12), bool)} if match.startswith("excl") else {}
    with pytest.raises(ValueError, match=match):
        bad.mlspec.decomposition(2, **FAST, **kwargs)


def _with_nan(s):
    s = s.deepcopy()
    s.data[2, 3, 4] = np.nan
    return s


def test_empty_signal_range_and_single_spectrum(mixture):
    s, _ = mixture
    with pytest.raises(ValueError, match="exclude every channel"):
        s.mlspec.decomposition(2, signal_range=(900, 1000), **FAST)
    with pytest.raises(ValueError, match="several spectra"):
        s.inav[0, 0].mlspec.decomposition(2, **FAST)


def test_exspy_signal_classes_get_namespace():
    for cls in (exspy.signals.EELSSpectrum, exspy.signals.EDSTEMSpectrum,
                exspy.signals.EDSSEMSpectrum):
        assert isinstance(cls(np.ones((2, 8))).mlspec, hyperspy_mlspec.MLSpecNamespace)
        assert isinstance(cls(np.ones((2, 8))).as_lazy().mlspec,
                          hyperspy_mlspec.MLSpecNamespace)


def test_save_and_load_signal_unaffected(tmp_path, mixture):
    s, _ = mixture
    ae = s.mlspec.decomposition(2, **FAST)
    rec = s.mlspec.reconstruct(ae)
    rec.save(tmp_path / "rec.hspy")
    back = hs.load(tmp_path / "rec.hspy")
    assert isinstance(back, exspy.signals.EELSSpectrum)
    assert back.metadata.MLSpec.operation_0.operation == "reconstruct"
    np.testing.assert_allclose(back.data, rec.data)


def test_entry_point_registration_keeps_hyperspy_working():
    import subprocess
    import sys

    code = ("import hyperspy.api as hs, hyperspy_mlspec, exspy; "
            "print(type(hs.load) is not None, "
            "hs.signals.Signal1D([1.,2.]).mlspec.__class__.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "True MLSpecNamespace" in out
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="hyperspy.extensions") if e.name == "hyperspy_mlspec"]
    assert eps and eps[0].value == "hyperspy_mlspec"


@pytest.mark.parametrize("lazy", [False, True])
def test_hyperspy_decomposition_with_estimator_object(mixture, lazy):
    s, _ = mixture
    if lazy:
        s = s.as_lazy()
        s.data = s.data.rechunk((5, 12, 96))
    before = np.array(s.data)
    est = hyperspy_mlspec.AutoencoderDecomposition(2, decoder="linear", partial_fit_epochs=3,
                                                   **FAST)
    s.decomposition(algorithm=est, print_info=False)
    np.testing.assert_array_equal(np.array(s.data), before)  # no mean_ added back
    assert s.learning_results.factors.shape == (96, 2)
    if lazy:  # partial_fit once per navigation block, 3 epochs each
        assert est.n_epochs_ >= 6 and est.n_epochs_ % 3 == 0
    else:
        assert est.n_epochs_ == 8
    model = s.get_decomposition_model(2)
    assert np.isfinite(np.array(model.data)).all()
