"""The ``hyperspy-mlspec`` command line and the demo report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest

import hyperspy_mlspec
from hyperspy_mlspec import load_model
from hyperspy_mlspec.cli import main
from hyperspy_mlspec.data import eels_map
from hyperspy_mlspec.report import reconstruction_errors

K = 3


@pytest.fixture(autouse=True)
def _no_progressbar():
    old = hs.preferences.General.show_progressbar
    hs.preferences.General.show_progressbar = False
    yield
    hs.preferences.General.show_progressbar = old


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two small EELS maps, a 2-D image and a file that is not data at all."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = {}
    for name, seed in (("first", 1), ("second", 2)):
        paths[name] = folder / f"{name}.hspy"
        eels_map((8, 8), n_channels=64, dose=20, random_state=seed).save(paths[name])
    paths["image"] = folder / "image.hspy"
    hs.signals.Signal2D(np.ones((8, 8), dtype=np.float32)).save(paths["image"])
    paths["junk"] = folder / "junk.hspy"
    paths["junk"].write_text("not an HDF5 file")
    return paths


def _rows(path: Path) -> np.ndarray:
    s = hs.load(path)
    return s.data.reshape(-1, s.data.shape[-1]).astype(np.float32)


# -- global options -------------------------------------------------------------------------
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"hyperspy-mlspec (hyperspy_mlspec {hyperspy_mlspec.__version__})")


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: hyperspy-mlspec" in out
    assert "decompose" in out and "demo" in out


def test_usage_error_returns_2(capsys):
    assert main(["decompose", "x.hspy", "--components", "0", "--out", "o"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_python_m_version():
    res = subprocess.run([sys.executable, "-m", "hyperspy_mlspec", "--version"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith(f"hyperspy_mlspec {hyperspy_mlspec.__version__})")


# -- decompose ------------------------------------------------------------------------------
def test_decompose_ae_writes_outputs_and_a_reloadable_model(files, tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["decompose", str(files["first"]), str(files["second"]), "--method", "ae",
               "--components", str(K), "--epochs", "4", "--seed", "0", "--out", str(out)])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("ok: ") and "4 epochs" in line for line in lines)
    for name in ("first", "second"):
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "factors.hspy", "loadings.hspy", "model.mlspec", "summary.json"]
        loadings = hs.load(folder / "loadings.hspy")
        assert loadings.axes_manager.navigation_shape == (K,)
        assert loadings.axes_manager.signal_shape == (8, 8)
        factors = hs.load(folder / "factors.hspy")
        assert factors.axes_manager.navigation_shape == (K,)
        axis = factors.axes_manager.signal_axes[0]
        assert (axis.size, axis.units, axis.offset) == (64, "eV", 400.0)
        assert np.all(np.isfinite(factors.data))

        summary = json.loads((folder / "summary.json").read_text())
        assert summary["file"] == str(files[name])
        assert (summary["method"], summary["n_components"], summary["decoder"]) == (
            "ae", K, "nonlinear")
        assert summary["history_length"] == 4
        assert len(summary["explained_variance"]) == K
        ratios = summary["explained_variance_ratio"]
        assert ratios == sorted(ratios, reverse=True) and 0 < sum(ratios) <= 1.0 + 1e-6
        assert summary["seconds"] > 0

        # the saved model gives the loadings HyperSpy stored, so the same transform
        model = load_model(folder / "model.mlspec")
        codes = model.transform(_rows(files[name]))
        expected = loadings.data.reshape(K, -1).T
        np.testing.assert_allclose(codes, expected, rtol=1e-4, atol=1e-4 * np.abs(
            expected).max())
        assert model.n_components == K and model.components_.shape == (K, 64)


def test_decompose_align_writes_the_shift(tmp_path, capsys):
    """--align yes: the drift is removed before decomposing, the shift map is saved with
    the navigation axes, and the loadings are those of s.mlspec.decomposition(align=True)."""
    from hyperspy_mlspec.data import eels_map

    s = eels_map((12, 12), 128, 50.0, drift=2.0, thickness=False, random_state=0)
    path = tmp_path / "drift.hspy"
    s.save(path)
    out = tmp_path / "res"
    args = ["decompose", str(path), "-k", "2", "--epochs", "3", "--seed", "0"]
    assert main([*args, "--align", "yes", "--out", str(out)]) == 0
    folder = out / "drift"
    assert (folder / "shift.hspy").exists()
    shift = hs.load(folder / "shift.hspy")
    assert shift.data.shape == (12, 12) and np.std(shift.data) > 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["aligned"] is True and "shift.hspy" in summary["outputs"]
    ae, expected = s.mlspec.decomposition(2, align=True, return_shift=True, epochs=3,
                                          random_state=0, show_progressbar=False)
    np.testing.assert_allclose(shift.data, expected.data, atol=1e-6)
    assert main([*args, "--method", "pca", "--align", "yes", "--out", str(out)]) == 1
    assert "--align needs --method ae" in capsys.readouterr().err


def test_decompose_ae_same_seed_same_result(files, tmp_path):
    loadings = []
    for run in ("a", "b"):
        assert main(["decompose", str(files["first"]), "--method", "ae", "-k", "2",
                     "--epochs", "3", "--seed", "7", "--decoder", "linear",
                     "--out", str(tmp_path / run)]) == 0
        loadings.append(hs.load(tmp_path / run / "first" / "loadings.hspy").data)
    np.testing.assert_array_equal(loadings[0], loadings[1])


def test_decompose_pca_matches_hyperspy(files, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["decompose", str(files["first"]), "--method", "pca", "-k", str(K),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {files['first']} -> ")
    folder = out / "first"
    assert sorted(p.name for p in folder.iterdir()) == [
        "factors.hspy", "loadings.hspy", "summary.json"]

    s = hs.load(files["first"])
    s.decomposition(algorithm="SVD", normalize_poissonian_noise=True, output_dimension=K,
                    print_info=False)
    loadings = hs.load(folder / "loadings.hspy")
    factors = hs.load(folder / "factors.hspy")
    assert loadings.data.shape == (K, 8, 8)
    assert factors.data.shape == (K, 64)
    np.testing.assert_allclose(factors.data, s.get_decomposition_factors().data, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(loadings.data, s.get_decomposition_loadings().data,
                               rtol=1e-4, atol=1e-6)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == "pca" and summary["normalize_poissonian_noise"] is True
    assert summary["history_length"] is None
    np.testing.assert_allclose(summary["explained_variance_ratio"],
                               s.learning_results.explained_variance_ratio[:K], rtol=1e-5)


def test_decompose_lazy_with_signal_range(files, tmp_path):
    out = tmp_path / "res"
    assert main(["decompose", str(files["second"]), "--method", "pca", "-k", "2", "--lazy",
                 "--signal-range", "450", "800", "--out", str(out)]) == 0
    factors = hs.load(out / "second" / "factors.hspy")
    energy = factors.axes_manager.signal_axes[0].axis
    inside = (energy >= 450) & (energy <= 800)
    assert inside.sum() == 44
    assert np.all(np.isfinite(factors.data[:, inside]))
    assert np.all(np.isnan(factors.data[:, ~inside]))  # HyperSpy's marking of masked channels
    summary = json.loads((out / "second" / "summary.json").read_text())
    assert summary["lazy"] is True and summary["signal_range"] == [450.0, 800.0]


def test_decompose_bad_inputs_reported_and_good_file_still_processed(files, tmp_path,
                                                                     capsys):
    out = tmp_path / "res"
    missing = tmp_path / "missing.hspy"
    rc = main(["decompose", str(files["image"]), str(missing), str(files["junk"]),
               str(files["first"]), "--method", "pca", "-k", "2", "--out", str(out)])
    assert rc == 1
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert err_lines[0].startswith(f"error: {files['image']}: ")
    assert "signal dimension 2" in err_lines[0]
    assert err_lines[1] == f"error: {missing}: no such file"
    assert err_lines[2].startswith(f"error: {files['junk']}: cannot read it")
    assert err_lines[3] == "3 of 4 file(s) failed"
    assert len(err_lines) == 4
    assert captured.out.startswith(f"ok: {files['first']} -> ")
    assert (out / "first" / "loadings.hspy").is_file()
    assert not (out / "image").exists() and not (out / "missing").exists()


def test_decompose_too_many_components(files, tmp_path, capsys):
    assert main(["decompose", str(files["first"]), "-k", "65", "--out", str(tmp_path)]) == 1
    assert "--components 65 exceeds the 64 channels" in capsys.readouterr().err


# -- demo -----------------------------------------------------------------------------------
class _Report(HTMLParser):
    """Image sources and the cells of the error table of the HTML report."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows: list[list[str]] = []
        self._in_table = self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table" and attrs.get("id") == "errors":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1][-1] += data


def test_reconstruction_errors_values():
    truth = np.array([[[1.0, 4.0]], [[9.0, 16.0]]])
    e = reconstruction_errors(truth + np.array([1.0, 2.0]), truth)
    assert e["mse"] == pytest.approx(2.5)
    assert e["poisson_error"] == pytest.approx(np.mean([1 / 1 + 4 / 4, 1 / 9 + 4 / 16]) / 2)
    assert e["poisson_error_map"].shape == (2, 1)


def test_demo_quick_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert f"Report written to {(out / 'index.html').resolve()}" in capsys.readouterr().out

    html = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    parser = _Report()
    parser.feed(html)
    assert len(parser.images) == 5
    for src in parser.images:
        assert not src.startswith(("http:", "https:", "/")), src  # self-contained, relative
        assert (out / src).is_file() and (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({src})" in md  # the Markdown report shows the same figures

    header, *body = parser.rows
    assert header[0] == "Method" and "Poisson-normalised error" in header
    table = {row[0]: row for row in body}
    spatial = "Spatial denoising (s.mlspec.denoise)"
    assert set(table) == {"AE (nonlinear decoder)", "AE (linear decoder)", "PCA (HyperSpy)",
                          spatial, "Noisy data (no model)"}
    col = {name: i for i, name in enumerate(header)}
    values = {name: {h: float(row[i]) for h, i in col.items() if row[i] and h != "Method"}
              for name, row in table.items()}
    for name in ("AE (nonlinear decoder)", "AE (linear decoder)", spatial, "PCA (HyperSpy)"):
        v = values[name]
        for key in ("MSE (counts²)", "Poisson-normalised error", "Fit time (s)"):
            assert math.isfinite(v[key]) and v[key] > 0, (name, key)
        # every model removes most of the noise: far below the raw data's error
        assert v["Poisson-normalised error"] < 0.3 * values["Noisy data (no model)"][
            "Poisson-normalised error"]
        pca = values["PCA (HyperSpy)"]
        assert v["MSE / PCA"] == pytest.approx(v["MSE (counts²)"] / pca["MSE (counts²)"],
                                               rel=2e-3)
    assert values["PCA (HyperSpy)"]["MSE / PCA"] == 1.0
    # the map's spatial context: well below PCA at its K (measured 0.30x on this map)
    assert values[spatial]["Poisson error / PCA"] < 0.6
    # quick: 30 epochs at most (early stopping on the held-out split may end sooner)
    assert 5 <= values["AE (linear decoder)"]["Epochs"] <= 30
    # the noisy data's error in units of the Poisson variance is ~1 by construction
    assert values["Noisy data (no model)"]["Poisson-normalised error"] == pytest.approx(1.0,
                                                                                      abs=0.1)

    # the table and results.json agree; Markdown holds the same rows
    results = json.loads((out / "results.json").read_text())
    for method in results["methods"]:
        row = values[method["name"]]
        assert row["MSE (counts²)"] == pytest.approx(method["mse"], rel=1e-3)
        assert row["Poisson-normalised error"] == pytest.approx(method["poisson_error"],
                                                                rel=1e-3)
        assert f"| {' | '.join(table[method['name']])} |" in md
        assert len(results["histories"].get(method["name"], [])) == (method["n_epochs"] or 0)
    assert results["context"]["config"]["navigation_shape"] == [16, 16]


def test_demo_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the report to") and "Traceback" not in err


def test_denoise_files_and_bad_file(files, tmp_path, capsys):
    out = tmp_path / "den"
    rc = main(["denoise", str(files["first"]), str(tmp_path / "missing.hspy"), "--out",
               str(out), "--seed", "0", "--save-models"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "missing.hspy" in err and "1 of 2 file(s) failed" in err
    denoised = hs.load(out / "first_denoised.hspy")
    raw = hs.load(files["first"])
    assert denoised.data.shape == raw.data.shape
    assert denoised.axes_manager.signal_axes[0].units == raw.axes_manager.signal_axes[0].units
    # denoising smooths: channel-to-channel variance drops, total counts are kept
    assert np.diff(denoised.data, axis=-1).var() < 0.5 * np.diff(raw.data, axis=-1).var()
    np.testing.assert_allclose(denoised.data.sum(), raw.data.sum(), rtol=0.02)
    assert (out / "first_denoised.mlspec").exists()


def test_anomaly_files_written(files, tmp_path):
    out = tmp_path / "ano"
    assert main(["anomaly", str(files["second"]), "--out", str(out), "--seed", "0"]) == 0
    score = hs.load(out / "second_anomaly_map.hspy")
    assert score.data.shape == (8, 8) and np.isfinite(score.data).all()
    assert (out / "second_anomaly_map.png").stat().st_size > 1000


def test_batch_logs_get_one_progress_line_per_fit(files, tmp_path, capsys):
    """In a script or CI the output is no terminal: a bar would write a line per refresh
    (hundreds per fit); the log gets one summary line per fit instead."""
    hs.preferences.General.show_progressbar = True  # what a user has by default
    rc = main(["decompose", str(files["first"]), str(files["second"]), "--method", "ae",
               "--components", "2", "--epochs", "30", "--seed", "0",
               "--out", str(tmp_path / "res")])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    progress = [line for line in err if "epoch in" in line]
    assert len(progress) == 2, err
    assert all(line.startswith("AutoencoderDecomposition: ") and "loss=" in line
               for line in progress)
