"""Denoising spectrum images: the logic behind ``s.mlspec.denoise`` and the command line.

:func:`denoise_signal` fits (or applies) a :class:`~hyperspy_mlspec.DenoisingAutoencoder` on a
HyperSpy signal and builds the output signals; :func:`denoise_files` does the same for files
on disk (what ``hyperspy-mlspec denoise FILES... --out DIR`` calls).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio

_TITLE_SUFFIX = "(DAE denoised)"


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


def denoise_signal(signal, model=None, noise: str = "poisson-split", *, navigation_mask=None,
                   signal_range=None, return_residuals: bool = False,
                   residual_statistics: bool = False, show_progressbar: bool | None = None,
                   **estimator_params: Any):
    """Denoise a spectrum image; see :meth:`hyperspy_mlspec.MLSpecNamespace.denoise`.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((8, 8), n_channels=64, dose=5)
    >>> d = denoise_signal(s, epochs=2, random_state=0, show_progressbar=False)
    >>> d.metadata.General.title
    'Synthetic EELS map (dose=5) (DAE denoised)'
    """
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
