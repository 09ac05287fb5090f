"""Denoising spectrum images: the logic behind ``s.mlspec.denoise`` and the command line.

:func:`denoise_signal` denoises a HyperSpy signal and builds the output signals. Maps and
line scans use their neighbourhoods by default (:class:`~hyperspy_mlspec.spatial.
SpatialDenoiser`, with the energy drift estimated and removed first when there is one);
``spatial=False`` (and single spectra) fit the per-pixel
:class:`~hyperspy_mlspec.DenoisingAutoencoder`; a fitted autoencoder (e.g. trained on a
simulation library) is applied pixel by pixel, after the spatial step when ``spatial``
is on (``spatial="auto"`` picks the network when autoencoder parameters such as
``epochs`` are given). :func:`estimate_shift_signal` is ``s.mlspec.estimate_shift``;
:func:`alignment_shift` resolves an ``align=`` request (also for ``decomposition``).
:func:`denoise_files` does the same for files on disk (what
``hyperspy-mlspec denoise FILES... --out DIR`` calls).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio

_TITLE_SUFFIX = "(DAE denoised)"
_SPATIAL_SUFFIX = "(spatially denoised)"
#: fewest pixels for the spatial route under spatial="auto" (smaller grids: per-pixel DAE)
_MIN_SPATIAL_PIXELS = 4
#: align="auto" removes the drift when its spread is at least this many channels and
#: several times its own uncertainty
_MIN_DRIFT_CHANNELS = 0.2
#: components of the aligned map fitted with each spectrum when its shift is estimated for
#: denoising: chemistry and thickness that these components miss leak into the shift (a
#: chemical shift looks like a drift), and aligning then removes part of the chemistry
#: (Fe3+ pixels read 0.63 instead of 0.81 on one map with 3); each one more costs shift
#: precision (measured on 64x64x1024 EELS maps, 3 / 6 / 8 / 10 / 12: see RESULTS.md). The
#: components are found on the pixels themselves, so small grids keep 3 (one component
#: per 64 pixels at most: a 40-pixel line scan lost 30 % with 6)
_ALIGN_COMPONENTS = 6
_MIN_ALIGN_COMPONENTS = 3
_PIXELS_PER_ALIGN_COMPONENT = 64


def normalized_residuals(rows, denoised, poisson: bool) -> tuple[Any, Any]:
    """Per-spectrum mean normalised residual and chi-square per channel.

    The normalised residual is ``z = (x - d) / sqrt(v)``: for count data ``v`` is the
    denoised spectrum itself (the Poisson variance, floored at 1e-3 of the spectrum's mean
    so empty channels do not explode); for other data ``v`` is the mean squared residual of
    the whole data set (so the chi-square map averages 1 by construction and shows where
    residuals are *relatively* large). A good denoiser of count data gives
    ``mean(z) ~ 0`` and ``mean(z**2) ~ 1`` (slightly below 1: the model absorbs a little
    noise); structure removed by the denoiser shows up as pixels with ``chi2 >> 1`` or
    ``|mean(z)| >> 1 / sqrt(n_channels)``.

    Parameters
    ----------
    rows, denoised
        ``(n_spectra, n_channels)`` numpy or dask arrays: data and denoised data.
    poisson
        Normalise by the Poisson variance (count data).

    Returns
    -------
    mean_z, chi2 : arrays of shape (n_spectra,)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> lam = np.full((50, 200), 20.0)
    >>> mean_z, chi2 = normalized_residuals(rng.poisson(lam).astype(float), lam, True)
    >>> round(float(chi2.mean()), 1)
    1.0
    """
    residual = rows - denoised
    if poisson:
        floor = 1e-3 * abs(denoised).mean(axis=1, keepdims=True) + 1e-12
        variance = (denoised * (denoised > floor)) + floor * (denoised <= floor)
    else:
        variance = (residual**2).mean() + 1e-30
    z = residual / variance**0.5
    return z.mean(axis=1), (z**2).mean(axis=1)


def _resolve_model(model):
    from hyperspy_mlspec.estimators.denoising import DenoisingAutoencoder
    from hyperspy_mlspec.persistence import load_model

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if not isinstance(model, DenoisingAutoencoder):
        raise TypeError(
            f"model must be a fitted DenoisingAutoencoder (or the path of one saved with "
            f".save), got {type(model).__name__}. To reconstruct spectra with an "
            "AutoencoderDecomposition use s.mlspec.reconstruct(model).")
    return model


def fit_denoiser(signal, noise: str = "poisson-split", *, navigation_mask=None,
                 signal_range=None, show_progressbar: bool | None = None,
                 **estimator_params: Any):
    """Fit a :class:`~hyperspy_mlspec.DenoisingAutoencoder` on a signal's own spectra.

    The training energy axis is recorded in the model, so it can later be applied to maps
    with another calibration (they are resampled onto it).

    Returns
    -------
    DenoisingAutoencoder

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((8, 8), n_channels=64, dose=5)
    >>> fit_denoiser(s, epochs=2, random_state=0, show_progressbar=False).n_features_in_
    64
    """
    from hyperspy_mlspec.estimators.denoising import DenoisingAutoencoder

    if noise == "supervised":
        raise ValueError(
            "noise='supervised' learns from clean spectra, which a noisy signal cannot "
            "provide: fit DenoisingAutoencoder(noise='supervised').fit(clean_spectra) (e.g. "
            "simulations or a high-dose map) and pass it as model=...")
    t = sio.table(signal, navigation_mask, signal_range=signal_range)
    est = DenoisingAutoencoder(noise=noise, show_progressbar=show_progressbar,
                               **estimator_params)
    est.fit(t.rows)
    est.signal_axis_ = t.axis.to_dict()
    return est


def denoise_signal(signal, model=None, noise: str = "poisson-split", *, spatial="auto",
                   align="auto", navigation_mask=None, signal_range=None,
                   return_residuals: bool = False, residual_statistics: bool = False,
                   return_shift: bool = False, show_progressbar: bool | None = None,
                   **estimator_params: Any):
    """Denoise a spectrum image; see :meth:`hyperspy_mlspec.MLSpecNamespace.denoise`.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=64, dose=5)
    >>> denoise_signal(s, show_progressbar=False).metadata.General.title
    'Synthetic EELS map (dose=5) (spatially denoised)'
    >>> d = denoise_signal(s, spatial=False, epochs=2, random_state=0, show_progressbar=False)
    >>> d.metadata.General.title
    'Synthetic EELS map (dose=5) (DAE denoised)'
    """
    sio.check_signal(signal)
    if not _use_spatial(signal, spatial, model, estimator_params, noise):
        if return_shift:
            raise ValueError("return_shift=True needs the spatial route (spatial=True or "
                             "'auto' on a map); the per-pixel model does not align spectra.")
        if align is True or sio.is_shift_map(align):
            raise ValueError("alignment (align=True or a given shift map) needs the spatial "
                             "route (spatial=True or 'auto' on a map or line scan).")
        return _pixel_denoise(signal, model, noise, navigation_mask=navigation_mask,
                              signal_range=signal_range, return_residuals=return_residuals,
                              residual_statistics=residual_statistics,
                              show_progressbar=show_progressbar, **estimator_params)
    return _spatial_denoise(signal, model, noise, align=align, navigation_mask=navigation_mask,
                            signal_range=signal_range, return_residuals=return_residuals,
                            residual_statistics=residual_statistics,
                            return_shift=return_shift, show_progressbar=show_progressbar,
                            **estimator_params)


def _spatial_denoise(signal, model, noise, *, align, navigation_mask, signal_range,
                     return_residuals, residual_statistics, return_shift, show_progressbar,
                     **estimator_params):
    import warnings

    s = signal
    if noise != "poisson-split":
        raise ValueError(
            f"noise={noise!r} selects a per-pixel autoencoder's noise model; the spatial route "
            "finds its noise model itself (Poisson counts, with any detector gain, or "
            "Gaussian). Pass noise_model='poisson' or 'gaussian' to force one, or "
            "spatial=False for the autoencoder.")
    estimator_params = dict(estimator_params)
    if "noise_model" in estimator_params:
        estimator_params["noise"] = estimator_params.pop("noise_model")
    if "axis_scale" in estimator_params:
        raise TypeError("axis_scale comes from the navigation axes' calibration; set the "
                        "axes' scales instead.")
    if model is not None:
        model = _resolve_model(model)
    lazy = sio.is_lazy(s)
    data, valid, t = _spatial_input(s, navigation_mask, signal_range)
    if not lazy:
        finite = np.isfinite(np.asarray(data)).all(axis=-1)
        bad = valid & ~finite
        if bad.any():
            warnings.warn(f"{int(bad.sum())} spectra hold NaN or infinity: they are left out "
                          "(their denoised spectra are NaN) and take no part in their "
                          "neighbours' estimates.", stacklevel=3)
            valid = valid & finite
        if not valid.any():
            raise ValueError("no finite spectrum is left to denoise (navigation_mask and "
                             "NaN/inf pixels exclude every pixel; True in navigation_mask "
                             "marks pixels to EXCLUDE).")
    given = None
    if sio.is_shift_map(align):
        given = sio.shift_map_channels(align, s, valid, lazy, int(data.shape[-1]))
        align_mode = "given"
    else:
        align_mode = _resolve_align(align, s, lazy, int(data.shape[-1]))
    out, den, shift = spatial_denoise_array(
        data, valid, _navigation_scale(s), align_mode, show_progressbar=show_progressbar,
        known_shift=given, **estimator_params)
    title = s.metadata.General.title
    result = sio.signal_like(s, out, f"{title} {_SPATIAL_SUFFIX}".strip(), axis=t.axis)
    widths = den.choice_.width
    sio.record(result, "denoise", model="SpatialDenoiser", noise=den.noise_,
               gain=float(den.gain_), n_components=int(den.n_components_),
               n_window_components=int(den.n_window_components_),
               pooled_coordinates=int(np.isfinite(widths).sum()),
               median_width_pixels=float(np.nanmedian(np.where(np.isfinite(widths), widths,
                                                               np.nan)))
               if np.isfinite(widths).any() else float("nan"),
               aligned=shift is not None,
               shift_source="given" if given is not None else
               ("estimated" if shift is not None else "none"),
               fitted_on_this_signal=True)
    if model is not None:
        result = _pixel_denoise(result, model, "poisson-split")
    results = [result]
    rows_in = data.reshape(-1, data.shape[-1])
    rows_out = result.data.reshape(-1, result.data.shape[-1])
    if return_residuals:
        resid = sio.signal_like(s, (data - result.data.astype(np.float32)),
                                f"{title} (spatial denoising residuals)".strip(), axis=t.axis)
        sio.record(resid, "denoise residuals", model="SpatialDenoiser")
        results.append(resid)
    if residual_statistics:
        poisson = den.noise_ == "poisson"
        ok = valid.reshape(-1)
        mean_z = np.full(len(ok), np.nan)
        chi2 = np.full(len(ok), np.nan)
        if lazy:
            mz, c2 = normalized_residuals(rows_in.astype(np.float32), rows_out, poisson)
            import dask

            mz, c2 = dask.compute(mz, c2)
            mean_z[ok], chi2[ok] = np.asarray(mz)[ok], np.asarray(c2)[ok]
        else:
            rin = np.asarray(rows_in, dtype=np.float64)[ok]
            mz, c2 = normalized_residuals(rin, np.asarray(rows_out, np.float64)[ok], poisson)
            mean_z[ok], chi2[ok] = mz, c2
        unit = "Poisson" if poisson else "global RMS"
        maps = {}
        nav_shape = valid.shape
        for key, values, what in (("mean_normalized_residual", mean_z,
                                   f"Mean residual / sqrt({unit} variance)"),
                                  ("chi2_per_channel", chi2,
                                   f"Chi-square per channel ({unit} variance)")):
            maps[key] = sio.navigation_image(s, values.reshape(nav_shape).astype(np.float32),
                                             f"{what} of {title} (spatial)", quantity=what)
            sio.record(maps[key], "denoise residual statistics", statistic=key)
        results.append(maps)
    if return_shift:
        results.append(shift_signal(s, None if shift is None else shift.shift,
                                    None if given is not None else shift))
    return results[0] if len(results) == 1 else tuple(results)


def _pixel_denoise(signal, model=None, noise: str = "poisson-split", *, navigation_mask=None,
                   signal_range=None, return_residuals: bool = False,
                   residual_statistics: bool = False, show_progressbar: bool | None = None,
                   **estimator_params: Any):
    """The per-pixel route: fit (or apply) a DenoisingAutoencoder."""
    s = signal
    fitted_here = model is None
    if fitted_here:
        est = fit_denoiser(s, noise, navigation_mask=navigation_mask,
                           signal_range=signal_range, show_progressbar=show_progressbar,
                           **estimator_params)
        t = sio.table(s, navigation_mask, signal_range=signal_range)
    else:
        if estimator_params:
            raise TypeError(f"estimator parameters {sorted(estimator_params)} only apply when "
                            "fitting (model=None); a fitted model is applied as it is.")
        if signal_range is not None:
            raise ValueError("signal_range selects the channels to fit; with a fitted model "
                             "the model's own channels are used (the signal is resampled onto "
                             "them when the calibrations differ).")
        est = _resolve_model(model)
        t = sio.table_for_model(s, est, navigation_mask)
    denoised_rows = est.transform(t.rows)
    title = s.metadata.General.title
    out = sio.signal_like(s, t.scatter(denoised_rows), f"{title} {_TITLE_SUFFIX}".strip(),
                          axis=t.axis)
    sio.record(out, "denoise", model=type(est).__name__, noise=est.noise,
               architecture=est.architecture, loss=est.loss_, fitted_on_this_signal=fitted_here,
               n_epochs=int(est.n_epochs_))
    results = [out]
    if return_residuals:
        resid = sio.signal_like(s, t.scatter(t.rows - denoised_rows),
                                f"{title} (DAE residuals)".strip(), axis=t.axis)
        sio.record(resid, "denoise residuals", model=type(est).__name__, noise=est.noise)
        results.append(resid)
    if residual_statistics:
        mean_z, chi2 = normalized_residuals(t.rows, denoised_rows, est.conserves_counts_)
        unit = "Poisson" if est.conserves_counts_ else "global RMS"
        maps = {}
        for key, values, what in (("mean_normalized_residual", mean_z,
                                   f"Mean residual / sqrt({unit} variance)"),
                                  ("chi2_per_channel", chi2,
                                   f"Chi-square per channel ({unit} variance)")):
            data = t.scatter(values[:, None])[..., 0]
            maps[key] = sio.navigation_image(s, data, f"{what} of {title} (DAE)", quantity=what)
            sio.record(maps[key], "denoise residual statistics", statistic=key)
        results.append(maps)
    return results[0] if len(results) == 1 else tuple(results)


def denoise_files(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                  noise: str = "poisson-split", lazy: bool = False, *, model=None,
                  suffix: str = "_denoised", file_format: str = "hspy", overwrite: bool = False,
                  save_models: bool = False, show_progressbar: bool | None = None,
                  **estimator_params: Any) -> list[dict]:
    """Denoise spectrum-image files and write the results (the command-line back end).

    Every file is loaded with :func:`hyperspy.api.load`; every 1-D-signal it holds is
    denoised (one model fitted per signal unless ``model`` is given) and saved to
    ``out_dir/<stem><suffix>.<file_format>`` (``<stem>_<i><suffix>`` for files holding
    several signals).

    Parameters
    ----------
    paths
        Input files (any format HyperSpy reads).
    out_dir
        Output folder (created if needed).
    noise
        Noise model when fitting (see :class:`~hyperspy_mlspec.DenoisingAutoencoder`).
    lazy
        Load lazily: the data are streamed chunk by chunk, never held in memory at once.
    model
        A fitted :class:`~hyperspy_mlspec.DenoisingAutoencoder` or the path of a saved one,
        applied to every file instead of fitting.
    suffix, file_format
        Output name suffix and extension (``"hspy"``, ``"zspy"``...).
    overwrite
        Replace existing outputs (otherwise :class:`FileExistsError`).
    save_models
        Also save each fitted model next to its output (``<stem><suffix>.mlspec``).
    show_progressbar
        None follows ``hs.preferences.General.show_progressbar``.
    **estimator_params
        Passed to :class:`~hyperspy_mlspec.DenoisingAutoencoder` when fitting.

    Returns
    -------
    list of dict
        One record per denoised signal: ``input``, ``output``, ``model_file`` (or None),
        ``signal`` (class name), ``navigation_shape``, ``n_channels``, ``noise``,
        ``chi2_per_channel`` (map average), ``counts_ratio`` (denoised/input total counts)
        and ``seconds``.

    Examples
    --------
    >>> import tempfile, os, hyperspy_mlspec
    >>> folder = tempfile.mkdtemp()
    >>> hyperspy_mlspec.data.eels_map((8, 8), n_channels=64).save(os.path.join(folder, "m.hspy"))
    >>> rows = denoise_files([os.path.join(folder, "m.hspy")], folder, epochs=2,
    ...                      random_state=0, show_progressbar=False)
    >>> os.path.basename(rows[0]["output"])
    'm_denoised.hspy'
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model = _resolve_model(model)
    records = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        loaded = sio.load(path, lazy=lazy)
        signals = loaded if isinstance(loaded, list) else [loaded]
        for i, s in enumerate(signals):
            if s.axes_manager.signal_dimension != 1:
                continue
            stem = path.stem if len(signals) == 1 else f"{path.stem}_{i}"
            target = out_dir / f"{stem}{suffix}.{file_format.lstrip('.')}"
            if target.exists() and not overwrite:
                raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
            t0 = time.perf_counter()
            est = model if model is not None else fit_denoiser(
                s, noise, show_progressbar=show_progressbar, **estimator_params)
            lazy_s = sio.is_lazy(s)
            if lazy_s:
                denoised = denoise_signal(s, est)
            else:
                denoised, stats = denoise_signal(s, est, residual_statistics=True)
            sio.save(denoised, str(target), overwrite=True)
            if lazy_s:
                # statistics from the file just written: one more read of the data, but no
                # second inference pass (the lazy result was streamed to disk, not kept)
                import dask

                saved = sio.load(target, lazy=True)
                rows_in = sio.table_for_model(s, est).rows
                rows_out = sio.rows_of(saved).rechunk((rows_in.chunks[0], -1))
                _, chi2 = normalized_residuals(rows_in, rows_out, est.conserves_counts_)
                chi2, total_in, total_out = dask.compute(chi2, s.data.sum(), saved.data.sum())
            else:
                chi2 = stats["chi2_per_channel"].data
                total_in, total_out = s.data.sum(), denoised.data.sum()
            model_file = None
            if save_models and model is None:
                model_file = out_dir / f"{stem}{suffix}.mlspec"
                est.save(model_file)
            records.append({
                "input": str(path), "output": str(target),
                "model_file": None if model_file is None else str(model_file),
                "signal": type(s).__name__,
                "navigation_shape": tuple(int(n) for n in s.axes_manager.navigation_shape),
                "n_channels": int(s.axes_manager.signal_axes[0].size),
                "noise": noise if model is None else model.noise,
                "chi2_per_channel": float(np.nanmean(chi2)),
                "counts_ratio": float(total_out / total_in) if total_in else float("nan"),
                "seconds": time.perf_counter() - t0,
            })
    if not records:
        raise ValueError("none of the files holds a spectrum image with one signal dimension")
    return records


# -- spatial route --------------------------------------------------------------------------
def _navigation_scale(signal) -> tuple[float, ...]:
    """Width multiplier per navigation axis (array order) so that spatial filters are
    round in physical units; refuses strongly non-uniform navigation axes."""
    axes = list(signal.axes_manager.navigation_axes)[::-1]  # array order
    steps, units = [], set()
    for ax in axes:
        values = np.asarray(ax.axis, dtype=np.float64)
        if values.size < 2:
            steps.append(1.0)
            continue
        d = np.abs(np.diff(values))
        if d.min() <= 0 or d.max() > 2.0 * d.min():
            raise ValueError(
                f"the navigation axis {ax.name!r} is strongly non-uniform (steps from "
                f"{d.min():.4g} to {d.max():.4g}): the spatial denoiser treats pixels as a "
                "regular grid. Resample it onto a uniform grid first (e.g. "
                "s.interpolate_on_axis) or use spatial=False (per-pixel model).")
        steps.append(float(np.median(d)))
        units.add(str(ax.units))
    if len(units) > 1 or len(steps) < 2:
        return (1.0,) * len(axes)  # different quantities: index units
    finest = min(steps)
    # a width of s pixels of the finest axis is s * finest / step pixels along an axis
    return tuple(finest / st for st in steps)


def _spatial_input(signal, navigation_mask, signal_range):
    """The map as ``nav_shape + (channels,)`` (numpy view or dask), its valid pixels, the
    kept channels and their axis."""
    t = sio.table(signal, None, signal_range=signal_range, check_finite=False)
    data = signal.data
    if t.channels is not None:
        data = data[..., t.channels]
    nav_shape = tuple(data.shape[:-1])
    user = sio.navigation_mask_array(signal, navigation_mask)
    valid = np.ones(nav_shape, dtype=bool) if user is None else ~user.reshape(nav_shape)
    return data, valid, t


def _check_spatial_signal(signal, spatial) -> None:
    nd = signal.axes_manager.navigation_dimension
    if nd == 0:
        raise ValueError(
            "spatial=True needs a map or a line scan, but this signal is a single spectrum "
            "(no neighbours to pool). Use spatial=False (the per-pixel denoising "
            "autoencoder, which needs many spectra) or denoise the map it comes from.")
    n = int(np.prod(signal.data.shape[:nd]))
    if n < 4:
        raise ValueError(f"spatial denoising needs at least 4 pixels, this signal has {n}; "
                         "use spatial=False.")


def _spatial_params() -> set[str]:
    from hyperspy_mlspec.spatial import SpatialDenoiser

    return set(SpatialDenoiser().get_params()) | {"noise_model"}


def _use_spatial(signal, spatial, model, params: dict | None = None,
                 noise: str = "poisson-split") -> bool:
    """Whether the spatial route applies. Under ``"auto"``: maps and line scans of at least
    16 pixels, unless a model, an autoencoder noise model other than the default or
    per-pixel autoencoder parameters (``epochs``...) are given (they ask for the
    network)."""
    if spatial not in ("auto", True, False):
        raise ValueError(f"spatial must be 'auto', True or False, got {spatial!r}")
    own = _spatial_params()
    foreign = sorted(set(params or {}) - own - {"axis_scale"})
    if spatial == "auto":
        nd = signal.axes_manager.navigation_dimension
        n = int(np.prod(signal.data.shape[:nd])) if nd else 1
        return (nd >= 1 and n >= _MIN_SPATIAL_PIXELS and model is None and not foreign
                and noise == "poisson-split")
    if spatial:
        _check_spatial_signal(signal, spatial)
        if foreign:
            raise TypeError(
                f"{foreign} are not parameters of the spatial route (SpatialDenoiser takes "
                f"{sorted(own - {'axis_scale', 'noise'})}); for the per-pixel autoencoder "
                "use spatial=False.")
    return bool(spatial)


def _resolve_align(align, signal, lazy: bool, n_channels: int) -> str:
    if sio.is_shift_map(align) or align not in ("auto", True, False):
        raise ValueError(f"align must be 'auto', True, False or a shift map, got {align!r}")
    sig = signal.axes_manager.signal_axes[0]
    uniform = getattr(sig, "is_uniform", True)
    if align is True:
        sio.check_alignable(signal, lazy, n_channels,
                            "align=True (use 'auto' to skip alignment where it cannot run)",
                            min_channels=16)
        return "yes"
    if align is False or lazy or not uniform or n_channels < 16:
        return "no"
    return "auto"


def estimate_shift_array(data: np.ndarray, valid: np.ndarray, axis_scale):
    """:func:`~hyperspy_mlspec.spatial.estimate_shift` on a map with NaN pixels left out."""
    from hyperspy_mlspec.spatial import estimate_shift

    X = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(X).all(axis=-1)
    ok = valid & finite
    k = int(np.clip(int(ok.sum()) // _PIXELS_PER_ALIGN_COMPONENT, _MIN_ALIGN_COMPONENTS,
                    _ALIGN_COMPONENTS))
    return estimate_shift(np.where(ok[..., None], X, 0.0), ok, axis_scale=axis_scale,
                          n_components=k)


def estimate_shift_signal(signal, *, navigation_mask=None, signal_range=None,
                          return_uncertainty: bool = False):
    """Per-pixel energy drift of a map or line scan; see
    :meth:`hyperspy_mlspec.MLSpecNamespace.estimate_shift`.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=256, dose=20, drift=1.0)
    >>> shift = estimate_shift_signal(s)
    >>> shift.data.shape, shift.metadata.Signal.quantity
    ((16, 16), 'Energy shift (eV)')
    """
    sio.check_signal(signal)
    _check_spatial_signal(signal, True)
    # the drift of a pixel is estimated from its neighbours and the map's template
    sio.check_alignable(signal, sio.is_lazy(signal), signal.axes_manager.signal_axes[0].size,
                        "estimate_shift")
    data, valid, t = _spatial_input(signal, navigation_mask, signal_range)
    est = estimate_shift_array(data, valid, _navigation_scale(signal))
    title = signal.metadata.General.title
    out = sio.shift_image(signal, est.shift, f"Energy shift of {title}")
    sio.record(out, "estimate_shift", pooling=est.pooling, width=float(est.sigma),
               iterations=int(est.n_iter), units=sio.shift_units(signal))
    if not return_uncertainty:
        return out
    unc = sio.shift_image(signal, est.uncertainty, f"Energy shift uncertainty of {title}",
                          "Energy shift standard error")
    return out, unc


def drift_is_significant(est) -> bool:
    """Whether an estimated drift is worth removing (``align="auto"``): a spread of at
    least :data:`_MIN_DRIFT_CHANNELS` channels and three times its own uncertainty."""
    ok = np.isfinite(est.shift)
    if not ok.any():
        return False
    spread = float(np.std(est.shift[ok]))
    return spread >= _MIN_DRIFT_CHANNELS and spread >= 3.0 * float(np.nanmedian(est.uncertainty))


def alignment_shift(signal, align, *, navigation_mask=None,
                    signal_range=None) -> tuple[np.ndarray | None, Any]:
    """The per-pixel shift (channels) that ``align=`` asks to remove from ``signal``.

    ``align`` is ``"auto"`` (estimate, and keep it when :func:`drift_is_significant`),
    True (estimate and keep), False, or a known shift map (see
    :func:`hyperspy_mlspec.signals.shift_map_channels`). The estimate uses the channels of
    ``signal_range`` and the pixels not excluded by ``navigation_mask``.

    Returns
    -------
    shift, estimate
        ``nav_shape`` shift in channels (0 at excluded pixels) or None for no alignment;
        the :class:`~hyperspy_mlspec.spatial.ShiftEstimate` when one was made, else None
        (a given map: ``shift`` without ``estimate``).

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=256, dose=50, drift=2.0)
    >>> shift, est = alignment_shift(s, "auto")
    >>> shift.shape, est.pooling
    ((16, 16), 'raster')
    """
    if align is False:
        return None, None
    lazy = sio.is_lazy(signal)
    data, valid, _ = _spatial_input(signal, navigation_mask, signal_range)
    n_ch = int(data.shape[-1])
    if sio.is_shift_map(align):
        given = sio.shift_map_channels(align, signal, valid, lazy, n_ch)
        return np.where(valid, np.nan_to_num(given), 0.0), None
    mode = _resolve_align(align, signal, lazy, n_ch)
    if mode == "no":
        return None, None
    _check_spatial_signal(signal, True)
    est = estimate_shift_array(data, valid, _navigation_scale(signal))
    if mode == "auto" and not drift_is_significant(est):
        return None, est
    return np.nan_to_num(est.shift), est


def shift_signal(signal, shift: np.ndarray | None, estimate=None):
    """The shift removed from ``signal`` (channels, or None: zeros) as the navigation image
    that ``return_shift=True`` returns, its estimate recorded in ``metadata.MLSpec``."""
    title = signal.metadata.General.title
    nav_shape = tuple(signal.data.shape[: signal.axes_manager.navigation_dimension])
    out = sio.shift_image(signal, np.zeros(nav_shape) if shift is None else shift,
                          f"Energy shift of {title}")
    sio.record(out, "estimate_shift", used_for_alignment=shift is not None,
               pooling="given" if estimate is None and shift is not None else
               ("none" if estimate is None else estimate.pooling),
               width=float("nan") if estimate is None else float(estimate.sigma))
    return out


def spatial_denoise_array(data, valid: np.ndarray, axis_scale, align: str = "auto",
                          model=None, show_progressbar: bool | None = None,
                          known_shift: np.ndarray | None = None, **params: Any):
    """Denoise a ``nav_shape + (channels,)`` array (numpy or dask) with the spatial route.

    Returns ``(denoised, estimator, shift)`` where ``shift`` is the
    :class:`~hyperspy_mlspec.spatial.ShiftEstimate` used for alignment (None if none).
    ``model`` is an optional per-pixel denoiser applied to the spatially denoised spectra
    (e.g. a supervised :class:`~hyperspy_mlspec.DenoisingAutoencoder`). With
    ``align="given"``, ``known_shift`` is the per-pixel shift in channels to use (e.g.
    from the zero-loss peak).
    """
    from hyperspy_mlspec.engine.progress import progress
    from hyperspy_mlspec.spatial import SpatialDenoiser, shift_spectra
    from hyperspy_mlspec.spatial.shift import ShiftEstimate

    lazy = hasattr(data, "dask")
    bar = progress(3 if align != "no" else 2, "spatial denoising", show_progressbar,
                   unit="step")
    try:
        shift = None
        if align == "given":
            if known_shift is None:
                raise ValueError("align='given' needs the shift map (known_shift=)")
            known = np.where(valid, np.asarray(known_shift, dtype=np.float64), np.nan)
            shift = ShiftEstimate(known, np.zeros_like(known), math.nan, 0, "given", known)
            bar.update(1)
        elif align != "no":
            est = estimate_shift_array(data, valid, axis_scale)
            bar.update(1)
            if align == "yes" or drift_is_significant(est):
                shift = est
        est_params = dict(params)
        if shift is not None and est_params.get("noise", "auto") == "auto":
            # decide on the data as measured (edge channels repeat when re-indexed)
            from hyperspy_mlspec.spatial.denoiser import auto_noise

            X0 = np.asarray(data)[valid]
            X0 = X0[:: max(1, len(X0) // 2000)]
            X0 = X0[np.isfinite(X0).all(axis=-1)]
            est_params["noise"] = auto_noise(X0)[0]
        den = SpatialDenoiser(axis_scale=axis_scale, **est_params)
        if shift is not None:
            # the model is fitted on the map aligned by whole channels (re-indexing keeps
            # counts Poisson counts; interpolated counts have channels correlated, which the
            # fit takes for structure: measured 2x the error at a drift of a few channels)
            # and applied to the map aligned to the sub-channel, whose denoised spectra are
            # then moved back (interpolating smooth spectra costs nothing)
            s = np.nan_to_num(shift.shift)
            X = np.asarray(data, dtype=np.float32)
            den.fit(shift_spectra(X, -np.rint(s)), valid=valid)
            bar.update(1)
            out = shift_spectra(den.transform(shift_spectra(X, -s), valid=valid), s)
            out[~np.isfinite(np.asarray(data, dtype=np.float32)).all(axis=-1)] = np.nan
            out[~valid] = np.nan
        else:
            den.fit(data, valid=valid)
            bar.update(1)
            out = den.transform(data, valid=valid)
        if model is not None:
            out = _apply_pixel_model(model, out, lazy)
        bar.update(1)
    finally:
        bar.close()
    return out, den, shift


def _apply_pixel_model(model, maps, lazy: bool):
    """A per-pixel denoiser applied to every (finite) spectrum of a map."""
    shape = maps.shape
    rows = maps.reshape(-1, shape[-1])
    if lazy:
        return model.transform(rows).reshape(shape)
    rows = np.asarray(rows)
    ok = np.isfinite(rows).all(axis=1)
    out = np.full(rows.shape, np.nan, dtype=np.float32)
    if ok.any():
        out[ok] = model.transform(rows[ok])
    return out.reshape(shape)
