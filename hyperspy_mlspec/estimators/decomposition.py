"""Autoencoder decomposition: a nonlinear replacement for PCA that HyperSpy can use."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from hyperspy_mlspec._docs import N_COMPONENTS
from hyperspy_mlspec.arrays.counts import (
    MIN_GAIN_ROWS,
    NOISE_LAGS,
    detector_noise,
    on_pedestal,
    photon_transfer,
)
from hyperspy_mlspec.engine.losses import gaussian_loss, poisson_deviance, poisson_deviance_exp
from hyperspy_mlspec.engine.parallel import map_batches
from hyperspy_mlspec.engine.sampling import split_counts
from hyperspy_mlspec.engine.sources import RowSource
from hyperspy_mlspec.estimators.base import SpectralEstimator, looks_like_counts, stat_rows
from hyperspy_mlspec.models import SpectralAutoencoder, default_hidden_sizes
from hyperspy_mlspec.persistence import register_model

_AFTER_FIT_ROWS = 4096  # rows for components_ and variances: plenty for k <= 64 surrogates


@register_model
class AutoencoderDecomposition(TransformerMixin, SpectralEstimator):
    """Autoencoder decomposition of spectra with a scikit-learn (and HyperSpy) interface.

    ``transform`` gives the latent codes ("loadings"), ``inverse_transform`` the exact
    reconstruction from them, ``components_`` the spectral components ("factors"): exact
    with ``decoder="linear"``, a least-squares linear surrogate of the nonlinear decoder
    otherwise. There is deliberately no ``mean_`` attribute (HyperSpy would add it back to
    the data). Intensity (dose, thickness) is carried by the loadings; the decoder is
    positively homogeneous so reconstructions from loadings are exact.

    Parameters
    ----------
    n_components
        Number of latent dimensions (1 <= n_components <= number of channels).
    encoder
        ``"dense"`` (fully connected) or ``"conv"`` (1-D convolutions).
    decoder
        ``"nonlinear"`` (a homogeneous MLP) or ``"linear"`` (components are the decoder
        weights; non-negative for non-negative data, NMF-like).
    variational
        Train a variational autoencoder (KL term weighted by ``beta``); enables
        :meth:`sample`.
    loss
        ``"poisson"`` (deviance, for counts), ``"mse"`` (Gaussian), or ``"auto"``: Poisson
        when the data are non-negative integers, else MSE.
    normalization
        Per-spectrum normalisation, inverted on output: ``"sum"``, ``"max"``,
        ``"poisson"``, ``"none"`` or ``"auto"`` (``"poisson"`` for counts, ``"sum"`` for
        other non-negative data, else ``"none"``). Loadings carry the per-spectrum scale
        (mean counts for ``"sum"``, its square root for ``"poisson"``).
    epochs
        Passes over the data, or ``"auto"``: a budget in spectra seen that grows with the
        data (600 optimiser steps of a cosine schedule and at least one pass, see
        :mod:`hyperspy_mlspec.engine.budget`); early stopping on the held-out split
        usually ends sooner.
    batch_size
        Spectra per minibatch or ``"auto"`` (about n/16, a power of two from 64 to 1024 on
        a CPU, up to 8192 on a GPU).
    learning_rate, weight_decay
        Adam settings.
    hidden_layer_sizes
        Widths ``(h1, h2)`` of the hidden layers; None chooses them from the number of
        channels (see :func:`~hyperspy_mlspec.models.default_hidden_sizes`).
    beta
        Weight of the KL term (``variational=True``).
    validation_fraction
        Fraction of spectra held out for early stopping (none below 80 spectra, at most
        4096 spectra). For counts the held-out loss is that of a binomial split: each
        held-out spectrum is thinned into two halves, the network reconstructs one (at
        full intensity) and is scored against the other, whose noise is independent.
        This follows the error against the noise-free spectra, where the deviance of a
        reconstruction against its own input keeps falling as the network learns to pass
        noise.
    patience
        Rounds (epochs, or ``2**17`` spectra on large maps) without improvement before
        stopping; None trains for the whole budget.
    partial_fit_epochs
        Passes over each block given to :meth:`partial_fit`.
    device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``...
    random_state
        Seed for weights, batch order and sampling; same seed gives the same result on CPU.
    show_progressbar
        None follows ``hs.preferences.General.show_progressbar``.
    init
        ``"auto"``: for counts and the nonlinear decoder, fit the network (k-means start)
        and keep it or the shrunk Poisson-weighted PCA of the data, whichever scores
        better on the held-out binomial split, so the result is not worse than PCA where
        PCA is near optimal (the PCA start when there are too few spectra for a held-out
        split, see ``validation_fraction``); otherwise the network. ``"kmeans"``: the
        network alone.
        ``"pca"``: a signed network whose linear path is that PCA (closed form, fixed),
        trained on the Poisson-weighted squared error for its nonlinear corrections only;
        the PCA start is kept unless training beats it on the held-out split.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Spectral components in data units, sorted by explained variance.
    explained_variance_ : ndarray of shape (n_components,)
        Variance of the reconstruction carried by each latent dimension.
    explained_variance_ratio_ : ndarray of shape (n_components,)
        ``explained_variance_`` divided by the total variance of the data.
    history_ : list of dict
        Loss per epoch (``train_loss``, ``val_loss``, ``learning_rate``, ``seconds``).
    loss_, normalization_ : str
        The loss and normalisation actually used.
    init_ : str
        The model kept: ``"kmeans"`` (the trained network) or ``"pca"`` (the PCA start,
        trained or not).
    start_scores_ : dict
        ``init="auto"`` on counts: held-out scores of the ``"trained"`` network and of the
        ``"pca"`` start (lower is better; NaN without a held-out split).
    module_ : torch.nn.Module
        The trained network.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.poisson(rng.random((200, 2)) @ rng.random((2, 32)) * 20).astype(float)
    >>> ae = AutoencoderDecomposition(n_components=2, epochs=5, random_state=0,
    ...                               show_progressbar=False).fit(X)
    >>> ae.transform(X).shape, ae.components_.shape
    ((200, 2), (2, 32))
    """

    def __init__(self, n_components: int = N_COMPONENTS, *, encoder: str = "dense",
                 decoder: str = "nonlinear", variational: bool = False, loss: str = "auto",
                 normalization: str = "auto", epochs: int | str = "auto",
                 batch_size: int | str = "auto", learning_rate: float = 5e-3,
                 weight_decay: float = 0.0, hidden_layer_sizes: tuple[int, int] | None = None,
                 beta: float = 1.0, validation_fraction: float = 0.1,
                 patience: int | None = 5, partial_fit_epochs: int = 1,
                 device: str = "auto", random_state=None,
                 show_progressbar: bool | None = None, init: str = "auto") -> None:
        self.n_components = n_components
        self.encoder = encoder
        self.decoder = decoder
        self.variational = variational
        self.loss = loss
        self.normalization = normalization
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.hidden_layer_sizes = hidden_layer_sizes
        self.beta = beta
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.partial_fit_epochs = partial_fit_epochs
        self.device = device
        self.random_state = random_state
        self.show_progressbar = show_progressbar
        self.init = init

    # measured in benchmarks/bench_speed.py: with the split validation, 600 steps bound
    # the runs that keep improving (EDS, high doses); low-dose maps stop after ~15 rounds
    _budget_steps = 600
    _min_delta = 1e-5

    # -- engine hooks -----------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        if self.encoder not in ("dense", "conv"):
            raise ValueError(f"encoder must be 'dense' or 'conv', got {self.encoder!r}")
        if self.decoder not in ("linear", "nonlinear"):
            raise ValueError(f"decoder must be 'linear' or 'nonlinear', got {self.decoder!r}")
        if self.init not in ("auto", "pca", "kmeans"):
            raise ValueError(f"init must be 'auto', 'pca' or 'kmeans', got {self.init!r}")

    def _build_module(self, n_features: int) -> torch.nn.Module:
        k = self.n_components
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= n_features):
            raise ValueError(f"n_components must be an integer between 1 and the number of "
                             f"channels ({n_features}), got {k!r}")
        hidden = (getattr(self, "_restored_hidden", None) or self.hidden_layer_sizes
                  or default_hidden_sizes(n_features, int(k)))
        self._restored_hidden = None
        self.hidden_layer_sizes_ = tuple(int(h) for h in hidden)
        return self._new_module(n_features, self.init_ == "pca")

    def _new_module(self, n_features: int, pca: bool) -> SpectralAutoencoder:
        module = SpectralAutoencoder(n_features, int(self.n_components), encoder=self.encoder,
                                     decoder=self.decoder, variational=self.variational,
                                     nonnegative=self.nonnegative_ and not pca,
                                     hidden=self.hidden_layer_sizes_, linear_path=pca,
                                     clip_negative=pca and self.nonnegative_)
        # the noise level of the normalised counts shrinks the PCA start's components
        module.noise_var = getattr(self, "_noise_var", None)
        module.noise_rho = getattr(self, "_noise_rho", None)
        return module

    def _step_loss(self):
        module, norm = self.module_, self.normalizer_
        poisson = self.loss_ == "poisson"
        n_features = self.n_features_in_

        c = torch.as_tensor(norm.channel_scale, device=self.device_)
        split = getattr(self, "_counts", False)
        gain = getattr(self, "_gain", None)  # raw counts: halves split electrons
        rho = getattr(self, "_noise_rho", None)
        fused = poisson and module.nonnegative and not module.linear_decoder

        def step(x: torch.Tensor, training: bool) -> torch.Tensor:
            if poisson and split and not training:
                # held-out split of the counts (Noise2Self): reconstruct from one binomial
                # half (doubled) and score against the other, whose noise is independent;
                # the reconstruction of x scored against x itself keeps improving as the
                # network learns to pass noise, this does not (see the class notes)
                a = split_counts(x, gain, correlation=rho)
                x2 = 2.0 * a
                rate, _, mu, logvar = module.rates(x2, norm.row_scale(x2), c)
                return poisson_deviance(0.5 * rate, x - a)
            if fused:  # the decoder's exp correction and the deviance in one node
                linear, h, mu, logvar = module.rate_parts(x, norm.row_scale(x), c,
                                                          sample=training)
                loss = poisson_deviance_exp(linear, h, x)
            elif poisson:  # rates in count units: normalisation folded into the network
                rate, _, mu, logvar = module.rates(x, norm.row_scale(x), c, sample=training)
                loss = poisson_deviance(rate, x)
            elif split and not training:  # the binomial split of the Gaussian loss
                a = split_counts(x, gain, correlation=rho)
                x2 = 2.0 * a
                rate, _, mu, logvar = module.rates(x2, norm.row_scale(x2), c)
                m = norm.multiplier(norm.row_scale(x))
                return gaussian_loss(2.0 * (x - a) / m, rate / m)
            else:
                xn, _ = norm.forward(x)
                y, _, mu, logvar = module(xn, sample=training)
                loss = gaussian_loss(y, xn)
            if logvar is not None:
                kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1).mean()
                loss = loss + self.beta * kl / n_features
            return loss

        step.validation_seed = 12345  # the same halves at every round
        return step

    def _plan(self, n_train: int, batch_size: int) -> dict:
        plan = super()._plan(n_train, batch_size)
        # the PCA start is kept unless training beats it on the held-out split
        return {**plan, "keep_start": getattr(self, "init_", None) == "pca"}

    def _resolve_from_sample(self, sample: np.ndarray) -> None:
        self.init_ = "kmeans" if self.init == "auto" else self.init
        super()._resolve_from_sample(sample)
        self._counts = looks_like_counts(sample)  # binomial splits need integer counts
        self._init_sample = sample  # the PCA candidate of init="auto" (dropped after fit)
        self._noise_var = None
        self._gain = None
        self._noise_rho = np.zeros(NOISE_LAGS)
        if self._counts and len(sample):
            # raw counts may carry a detector gain g (variance g x counts): it scales the
            # noise level and the held-out halves must split electrons; a detector's
            # point-spread function correlates channels (then measured on held-out rows,
            # the channel differences of count_gain misread it)
            self._gain, self._noise_rho = detector_noise(sample)
            # Poisson: var(x) = g E[x], so var(x / m) is estimated without bias by g x / m^2
            x = torch.as_tensor(sample, dtype=torch.float64)
            m = self.normalizer_.multiplier(self.normalizer_.row_scale(x))
            self._noise_var = float((x / m**2).mean()) * (self._gain or 1.0)
            if len(sample) >= MIN_GAIN_ROWS:
                # counts on a pedestal b (a dark level): var(x) = g (x - b) = g x + c with
                # c = -g b < 0 (photon-transfer fit); the Poisson level would over-shrink
                fit = photon_transfer(sample)
                if on_pedestal(fit, sample):
                    g_pt, c_pt = fit
                    self._noise_var = float(((g_pt * x + c_pt).clamp_min(0) / m**2).mean())
        if self.init_ == "pca" and self.loss == "auto":
            # the PCA start is the optimum of the Poisson-weighted squared error (HyperSpy's
            # PCA); training on that loss can then only improve on it
            self.loss_ = "mse"

    def fit(self, X, y=None):
        """Fit the model to spectra.

        With ``init="auto"`` and count data, the trained network is compared on the
        held-out split (a binomial split of its counts, Poisson-weighted squared error)
        with the shrunk Poisson-weighted PCA of the data, and the better of the two is
        kept (``init_`` tells which).

        Parameters
        ----------
        X
            Array of shape ``(n_spectra, n_channels)``: numpy, or dask (streamed chunk by
            chunk, never loaded whole).
        y
            Ignored.

        Returns
        -------
        self
        """
        self._choosing = self.init == "auto"
        try:
            return super().fit(X, y)
        finally:
            self._choosing = False
            self._init_sample = None

    def _train(self, source: RowSource, epochs: int, batch_size: int, seed: int,
               patience: int | None, **options) -> None:
        super()._train(source, epochs, batch_size, seed, patience, **options)
        if getattr(self, "_choosing", False):
            self._choose_start(source)
        self._init_sample = None  # the data sample is not kept with the model

    def _choose_start(self, source: RowSource) -> None:
        """Keep the trained network or switch to the shrunk PCA start, whichever scores
        better on the held-out split: where PCA is near optimal (high doses, a few
        components) the network is then never worse than it."""
        sample = getattr(self, "_init_sample", None)
        # NMF-like linear decoders (non-negative components) and variational models
        # (sampling) are kept as asked
        if not (self._counts and self._noise_var and sample is not None and len(sample)
                and not self.variational and self.decoder == "nonlinear"):
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # weights that start at zero effect: any seed
            pca = self._new_module(source.n_features, pca=True).to(self.device_)
        xn, _ = self.normalizer_.forward(torch.as_tensor(sample, dtype=torch.float32))
        pca.standardize_inputs(xn.to(self.device_))
        pca.init_from_data(xn.to(self.device_))
        pca.eval()
        if source.count("val") > 0:
            scores = {name: self._split_score(module, source)
                      for name, module in (("trained", self.module_), ("pca", pca))}
        else:  # too few spectra for a held-out split: nothing shows the network is better
            scores = {"trained": float("nan"), "pca": float("nan")}
        self.start_scores_ = scores
        if not scores["pca"] >= scores["trained"]:  # NaN (no split) keeps the PCA start
            # loss_ stays the data's noise model (what scores against this model use)
            self.module_, self.init_ = pca, "pca"
            self._optimizer = None  # a later partial_fit trains the new module

    def _split_score(self, module: SpectralAutoencoder, source: RowSource) -> float:
        """Poisson-weighted squared error of ``module`` on the held-out rows: the
        reconstruction of one binomial half (doubled) against the other half, whose noise
        is independent (the same halves for every module scored)."""
        norm = self.normalizer_
        c = torch.as_tensor(norm.channel_scale, device=self.device_)
        gain = getattr(self, "_gain", None)
        rho = getattr(self, "_noise_rho", None)
        total, n = 0.0, 0
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(12345)
            for batch in source.batches(4096, split="val"):
                x = torch.as_tensor(np.asarray(batch, np.float32), device=self.device_)
                a = split_counts(x, gain, correlation=rho)
                x2 = 2.0 * a
                rate = module.rates(x2, norm.row_scale(x2), c)[0]
                m = norm.multiplier(norm.row_scale(x))
                total += float((((2.0 * (x - a) - rate) / m) ** 2).sum())
                n += x.numel()
        return total / max(n, 1)

    def _after_fit(self, source: RowSource) -> None:
        """Sort latent dimensions by explained variance and derive ``components_``
        (from one encode-decode pass over a sample of at most ``_AFTER_FIT_ROWS``)."""
        rng = np.random.default_rng(0)
        sample = source.sample(min(stat_rows(source.n_features), _AFTER_FIT_ROWS), rng)
        loadings, recon = self._encode_decode(sample)
        self.typical_scale_ = float(np.median(self._row_scale(sample)))
        comps = self._components(loadings, recon)
        var = loadings.var(axis=0) if len(loadings) > 1 else np.zeros(loadings.shape[1])
        ev = (var * (comps.astype(np.float64) ** 2).sum(axis=1)).astype(np.float64)
        order = np.argsort(ev)[::-1].copy()
        if not np.array_equal(order, np.arange(len(order))):
            # the surrogate's rows follow the loadings' columns: permuting both is exact
            self.module_.permute_latent(torch.as_tensor(order, device=self.device_))
            comps, ev = comps[order], ev[order]
        self.components_ = comps
        self.explained_variance_ = ev
        total = float(np.var(sample, axis=0).sum()) if len(sample) > 1 else 0.0
        self.explained_variance_ratio_ = ev / total if total > 0 else np.zeros_like(ev)

    def _encode_decode(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(X):
            return (np.empty((0, self.n_components), np.float32),
                    np.empty((0, self.n_features_in_), np.float32))
        # torch's threads as independent workers, into preallocated outputs
        return map_batches(self._encode_decode_tensor, X, 1024, self.device_)

    def _components(self, loadings: np.ndarray, recon: np.ndarray) -> np.ndarray:
        c = np.asarray(self.normalizer_.channel_scale, dtype=np.float64)
        if self.module_.linear_decoder:
            with torch.no_grad():
                eye = torch.eye(self.n_components, device=self.device_)
                w = self.module_.decode(eye).cpu().numpy().astype(np.float64)
            return (w * c).astype(np.float32)
        # least-squares linear surrogate of the nonlinear decoder on the training sample
        comps, *_ = np.linalg.lstsq(loadings.astype(np.float64), recon.astype(np.float64),
                                    rcond=None)
        return comps.astype(np.float32)

    def _row_scale(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(X, np.float32), device=self.device_)
            return self.normalizer_.row_scale(x).cpu().numpy().ravel()

    def _channel_scale(self, device) -> torch.Tensor:
        return torch.as_tensor(self.normalizer_.channel_scale, device=device)

    def _encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        r = self.normalizer_.row_scale(x)
        mu, _ = self.module_.encode_counts(x, r, self._channel_scale(x.device))
        return self.module_.latent_activation(mu) * r

    def _decode_tensor(self, loadings: torch.Tensor) -> torch.Tensor:
        return self.module_.decode(loadings, self._channel_scale(loadings.device))

    def _reconstruct_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode_decode_tensor(x)[1]

    def _encode_decode_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loadings and reconstruction in one pass (what anomaly scores and the
        streaming monitor need)."""
        rate, loadings, _, _ = self.module_.rates(x, self.normalizer_.row_scale(x),
                                                  self._channel_scale(x.device))
        return loadings, rate

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return self._apply_numpy(X, self._encode_tensor)

    # -- public API -------------------------------------------------------------------------
    def transform(self, X):
        """Latent codes (loadings) of spectra; dask in gives dask out.

        Parameters
        ----------
        X
            Array of shape ``(n_spectra, n_features)``.

        Returns
        -------
        ndarray or dask array of shape (n_spectra, n_components)
        """
        X = self._validate_transform_input(X)
        return self._map_rows(X, self._encode_tensor, self.n_components)

    def inverse_transform(self, X):
        """Exact reconstruction from latent codes (loadings); dask in gives dask out.

        Parameters
        ----------
        X
            Array of shape ``(n_spectra, n_components)``.

        Returns
        -------
        ndarray or dask array of shape (n_spectra, n_features)
        """
        check_is_fitted(self, "module_")
        if not hasattr(X, "dask"):
            X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_components:
            raise ValueError(f"inverse_transform expects shape (n, {self.n_components}), "
                             f"got {X.shape}")
        return self._map_rows(X, self._decode_tensor, self.n_features_in_)

    def reconstruct(self, X):
        """Encode then decode spectra (the exact nonlinear reconstruction).

        Returns
        -------
        ndarray or dask array of the shape of ``X``
        """
        X = self._validate_transform_input(X)
        return self._map_rows(X, self._reconstruct_tensor, self.n_features_in_)

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Draw spectra from the prior of a variational model, at the typical intensity.

        Parameters
        ----------
        n_samples
            Number of spectra.
        random_state
            Seed of the latent draws.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "module_")
        if not self.variational:
            raise ValueError("sample() needs a variational model: fit with variational=True.")
        gen = torch.Generator().manual_seed(int(np.random.default_rng(random_state)
                                                .integers(2**31)))
        z = torch.randn(n_samples, self.n_components, generator=gen).to(self.device_)
        with torch.no_grad():
            code = self.module_.latent_activation(z) * self.typical_scale_
            return self._decode_tensor(code).cpu().numpy()

    # -- persistence ------------------------------------------------------------------------
    def _fitted_arrays(self):
        return {**super()._fitted_arrays(), "components_": self.components_,
                "explained_variance_": self.explained_variance_,
                "explained_variance_ratio_": self.explained_variance_ratio_}

    def _fitted_config(self):
        return {**super()._fitted_config(), "typical_scale_": self.typical_scale_,
                "hidden_layer_sizes_": list(self.hidden_layer_sizes_), "init_": self.init_}

    def _restore(self, config, arrays, weights):
        self._restored_hidden = tuple(config["hidden_layer_sizes_"])
        self.nonnegative_ = config["nonnegative_"]
        self.init_ = config.get("init_", "kmeans")  # files saved before init= existed
        super()._restore(config, arrays, weights)
        self.typical_scale_ = config["typical_scale_"]
        for key in ("components_", "explained_variance_", "explained_variance_ratio_"):
            setattr(self, key, arrays[key])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        # computation is float32 throughout (GPU-friendly, half the memory of float64)
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
