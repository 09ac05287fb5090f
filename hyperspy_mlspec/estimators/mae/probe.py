"""Few-label heads of the masked autoencoder: a linear probe or LoRA adapters.

:class:`ProbeHeads` (a mixin of :class:`~hyperspy_mlspec.estimators.mae.MaskedAutoencoder`)
trains a head on the frozen (``"linear"``) or adapted (``"lora"``) encoder from a few
labelled spectra and predicts class maps, values or probabilities with it.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from hyperspy_mlspec.engine import ArraySource, train
from hyperspy_mlspec.engine.sources import validation_rows
from hyperspy_mlspec.estimators.base import is_dask
from hyperspy_mlspec.estimators.mae.pool import _title
from hyperspy_mlspec.models.mae import MaskedSpectrumTransformer, inject_lora

_LORA_VALIDATION = 0.2  # labels held out to stop LoRA training (with >= 50 labels)
_GRAPH_MEMORY = 4 * 2**30  # bytes graph spreading may hold for a map's embeddings


class _ProbeNet(torch.nn.Module):
    """Frozen (or LoRA-adapted) encoder + standardisation + linear head.

    Classification outputs logits; regression outputs values in the units of ``y``.
    """

    def __init__(self, encoder: MaskedSpectrumTransformer, n_out: int) -> None:
        super().__init__()
        d = encoder.embedding_dim  # the pooled embedding (see MaskedSpectrumTransformer.pool)
        self.encoder = encoder
        self.head = torch.nn.Linear(d, n_out)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.register_buffer("y_mean", torch.zeros(n_out))
        self.register_buffer("y_std", torch.ones(n_out))

    @torch.no_grad()
    def set_head(self, coef, intercept, mean, scale, y_mean, y_std) -> None:
        """Load a linear head fitted outside torch (numpy arrays)."""
        for tensor, value in ((self.head.weight, coef), (self.head.bias, intercept),
                              (self.mean, mean), (self.scale, scale), (self.y_mean, y_mean),
                              (self.y_std, y_std)):
            tensor.copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.encoder.embed(x) - self.mean) / self.scale
        return self.head(z)

    def output(self, x: torch.Tensor, task: str) -> torch.Tensor:
        out = self(x)
        return out if task == "classification" else out * self.y_std + self.y_mean


def _has_head(self) -> bool:
    # predict/predict_proba exist once a head is fitted (scikit-learn's available_if, as
    # Pipeline does): pretraining alone makes a transformer, fit_probe a predictor
    if getattr(self, "_probe_net", None) is None:
        raise AttributeError(f"{type(self).__name__} has no few-label head yet, so no "
                             "predict/predict_proba: call fit_probe(X, y) first")
    return True


class ProbeHeads:
    """Few-label heads (a mixin: the estimator supplies ``module_``, ``_table``,
    ``_map_rows`` and the engine)."""

    def _drop_probe(self) -> None:
        """Further pretraining changes the encoder: a head fitted on it is no longer valid."""
        if getattr(self, "probe_", None) is not None:
            warnings.warn("continuing pretraining discards the few-label head; call "
                          "fit_probe again afterwards", stacklevel=3)
        self.probe_, self._probe_net, self._probe_labels = None, None, None

    def _probe_tensor(self, x: torch.Tensor, what: str = "predict") -> torch.Tensor:
        self._check_finite(x)
        task = self.probe_["task"]
        out = self._probe_net.output(x, task)
        if task != "classification":
            return out
        proba = torch.softmax(out, dim=1)
        if what == "predict_proba":
            return proba
        return proba.argmax(1, keepdim=True).float()

    def _probe_z(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised embeddings the head reads (the adapted encoder for LoRA)."""
        self._check_finite(x)
        net = self._probe_net
        return (net.encoder.embed(x) - net.mean) / net.scale

    # -- few-label heads --------------------------------------------------------------------
    def _labelled(self, X, y, navigation_mask) -> tuple[np.ndarray, np.ndarray]:
        """Labelled rows (numpy, on the model grid) and their targets."""
        t = self._table(X, navigation_mask)
        rows = t.rows
        if is_dask(rows):
            rows = rows.compute()  # only the labelled pixels: small
        rows = np.asarray(rows, dtype=np.float32)
        if hasattr(y, "axes_manager"):
            y = y.data
        if hasattr(y, "compute"):
            y = y.compute()
        y = np.asarray(y)
        n = len(rows)
        if t.reassemble is not None and y.shape[:len(t.nav_shape)] == t.nav_shape:
            # navigation-shaped labels (checked first: a 100x100 map with 100 labelled
            # pixels must not be read as 100 labels of 100 targets)
            y = y.reshape((t.n_nav,) + y.shape[len(t.nav_shape):])
            if t.nav_index is not None:
                y = y[t.nav_index]
        elif y.ndim in (1, 2) and y.shape[0] == n:
            pass
        else:
            where = (f"navigation_mask selects {n} of the {t.n_nav} pixels"
                     if t.nav_index is not None else f"X holds {n} spectra")
            raise ValueError(f"y has shape {y.shape} but {where}: give one label per labelled "
                             "spectrum"
                             + (f", or a navigation-shaped array {t.nav_shape}"
                                if t.reassemble is not None else ""))
        if n < 2:
            raise ValueError(f"at least 2 labelled spectra are needed, got {n}")
        return rows, y

    def fit_probe(self, X, y, *, head: str = "linear", task: str = "auto",
                  navigation_mask=None, rank: int = 4, lora_alpha: float = 8.0,
                  lora_targets: Sequence[str] = ("q", "v"), C: float | str = "auto",
                  epochs: int | str = "auto", learning_rate: float = 1e-3,
                  random_state=None):
        """Train a few-label head on the frozen (``"linear"``) or adapted (``"lora"``) encoder.

        Parameters
        ----------
        X
            Labelled spectra: an array ``(n, channels)``, or a signal whose
            ``navigation_mask`` (True = excluded, as everywhere in hyperspy_mlspec) leaves
            the labelled pixels.
        y
            One label/value per labelled spectrum (``(n,)``, or ``(n, k)`` for several
            regression targets), or a navigation-shaped array/signal from which the
            labelled pixels are taken.
        head
            ``"linear"``: logistic regression (classification) or ridge regression with
            cross-validated strength (regression) on standardised embeddings.
            ``"lora"``: the linear probe (fitted on the labels not held out), then LoRA
            adapters of rank ``rank`` on the ``lora_targets`` attention projections of
            every encoder block, trained with the engine through that fixed head
            (cross-entropy or MSE on standardised targets; 20% of the labels held out for
            early stopping when there are at least 50, the untrained start being a
            candidate too), then the head refitted on all labels on the adapted encoder.
        task
            ``"classification"``, ``"regression"`` or ``"auto"`` (classification for
            integer, boolean or integer-valued labels, else regression).
        navigation_mask
            Signals only (see ``X``).
        rank, lora_alpha, lora_targets
            LoRA rank, scale (update ``alpha / rank * B A``) and wrapped projections
            (subset of ``("q", "k", "v", "out")``).
        C
            Inverse L2 strength of the logistic regression, or ``"auto"``: chosen by
            stratified cross-validation on the labels (up to 5 folds, one value per decade
            from 1e-3 to 1e3; ``C=1`` when a class has a single label). The right strength
            depends on the embedding width (``n_segments * embed_dim`` features from 100
            labels) and on the labels, so it is not fixed; regression cross-validates its
            ridge strength the same way.
        epochs
            LoRA training passes, or ``"auto"`` (about 300 optimiser steps, 20-200 epochs).
        learning_rate
            Adam learning rate of the LoRA head.
        random_state
            Seed (default: the estimator's).

        Returns
        -------
        self
        """
        check_is_fitted(self, "module_")
        if head not in ("linear", "lora"):
            raise ValueError(f"head must be 'linear' or 'lora', got {head!r}")
        if task not in ("auto", "classification", "regression"):
            raise ValueError(f"task must be 'auto', 'classification' or 'regression', "
                             f"got {task!r}")
        if C != "auto" and not (isinstance(C, numbers.Real) and C > 0):
            raise ValueError(f"C must be a positive number or 'auto', got {C!r}")
        rows, y = self._labelled(X, y, navigation_mask)
        if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
            raise ValueError(f"y must hold numbers (dtype {y.dtype}); encode class names as "
                             "integers, e.g. with np.unique(y, return_inverse=True)")
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinity: select only labelled spectra "
                             "(navigation_mask) or fill the labels")
        if task == "auto":
            task = "classification" if y.ndim == 1 and np.all(y == np.round(y)) \
                else "regression"
        seed = self._seed() if random_state is None else int(random_state)
        emb = self._apply_numpy(rows, self._embed_tensor).astype(np.float64)
        mean, scale = emb.mean(0), emb.std(0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        z = (emb - mean) / scale
        info: dict[str, Any] = {"head": head, "task": task, "n_labels": int(len(rows))}
        # LoRA holds out labels for early stopping: the linear probe that starts it must not
        # see them, or the held-out loss is optimistic from the start and training stalls
        fraction = _LORA_VALIDATION if head == "lora" and len(rows) >= 50 else 0.0
        seen = ~validation_rows(np.arange(len(rows)), fraction, seed)
        if task == "classification":
            if y.ndim != 1:
                raise ValueError(f"classification needs one label per spectrum, y has shape "
                                 f"{y.shape}")
            classes, target = np.unique(y, return_inverse=True)
            if np.all(classes == np.round(classes)):
                classes = classes.astype(np.int64)  # integer labels give integer maps
            if len(classes) < 2:
                raise ValueError(f"y holds a single class ({classes[0]:g}): a classifier needs "
                                 "labelled spectra of at least two classes")
            if len(np.unique(target[seen])) < len(classes):
                seen[:] = True  # a class only among held-out labels: use them all
            y_mean, y_std = np.zeros(len(classes)), np.ones(len(classes))
            info["classes"] = classes.tolist()
            n_out = len(classes)
        else:
            y2 = y.reshape(len(y), -1)
            y_mean, y_std = y2.mean(0), y2.std(0)
            y_std = np.where(y_std > 0, y_std, 1.0)
            target = (y2 - y_mean) / y_std
            info["n_targets"] = int(y2.shape[1])
            info["target_shape"] = list(y.shape[1:])
            n_out = y2.shape[1]
        coef, intercept, info["strength"] = self._linear_head(task, z[seen], target[seen], C)
        encoder = self.module_
        if head == "lora":
            rank = int(rank)
            encoder = copy.deepcopy(self.module_)
            # adapters in the encoder only (the decoder plays no part in embeddings); all
            # pretrained weights frozen, so the saved adapters + head rebuild the probe
            encoder.requires_grad_(False)
            inject_lora(encoder.blocks, rank, lora_alpha, tuple(lora_targets))
            info.update(rank=rank, lora_alpha=float(lora_alpha),
                        lora_targets=list(lora_targets))
        net = _ProbeNet(encoder, n_out).to(self.device_)
        net.set_head(coef, intercept, mean, scale, y_mean, y_std)
        if head == "lora":
            info["history"] = self._train_lora(net, rows, target, task, epochs,
                                               learning_rate, seed, fraction)
            if fraction:
                # the held-out labels chose the epoch; now the head learns from every label,
                # on the adapted encoder (cheap: a closed-form, cross-validated fit)
                emb = self._apply_numpy(rows, net.encoder.embed).astype(np.float64)
                mean, scale = emb.mean(0), emb.std(0)
                scale = np.where(scale > 1e-8, scale, 1.0)
                coef, intercept, info["strength"] = self._linear_head(
                    task, (emb - mean) / scale, target, C)
                net.set_head(coef, intercept, mean, scale, y_mean, y_std)
        self.probe_ = info
        self._probe_net = net.eval()
        # the labelled embeddings and targets: graph spreading at predict time links them
        # to the map and refits the head on folds of them to choose its strength
        self._probe_labels = {
            "z": self._apply_numpy(rows, self._probe_z).astype(np.float32),
            "target": np.asarray(target, dtype=np.float32).reshape(len(rows), -1)}
        return self

    @staticmethod
    def _linear_head(task: str, z: np.ndarray, target: np.ndarray, C) -> tuple:
        """``(weights, bias, strength)`` of the linear head on standardised embeddings:
        logistic regression (softmax form, classes ``0..k-1``) or ridge regression, with
        cross-validated strength (``C="auto"``; ridge always)."""
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV

        if task != "classification":
            reg = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(z, target)
            return np.atleast_2d(reg.coef_), np.atleast_1d(reg.intercept_), float(reg.alpha_)
        folds = int(np.bincount(target).min())
        if C == "auto" and folds >= 2:
            clf = LogisticRegressionCV(Cs=np.logspace(-3, 3, 7), cv=min(5, folds),
                                       scoring="accuracy", max_iter=5000)
        else:
            clf = LogisticRegression(C=1.0 if C == "auto" else float(C), max_iter=5000)
        with warnings.catch_warnings():  # sklearn 1.9 announces a change of C_'s shape
            warnings.simplefilter("ignore", FutureWarning)
            clf.fit(z, target)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # two classes: sigmoid(w z + b) == softmax([0, w z + b])
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        return coef, intercept, float(np.ravel(clf.C_)[0] if hasattr(clf, "C_") else clf.C)

    def _train_lora(self, net: _ProbeNet, rows: np.ndarray, target: np.ndarray, task: str,
                    epochs, learning_rate: float, seed: int, fraction: float) -> list[dict]:
        n, c = rows.shape
        # targets travel as extra columns of the rows so the engine's sources and its one
        # training loop can be used unchanged
        t = np.asarray(target, dtype=np.float32).reshape(n, -1)
        data = np.concatenate([rows, t], axis=1)
        source = ArraySource(data, validation_fraction=fraction, seed=seed)
        batch_size = int(np.clip(source.count("train") // 4, 4, 32))
        if epochs == "auto":
            steps = max(1, source.count("train") // batch_size)
            epochs = int(np.clip(math.ceil(300 / steps), 20, 200))
        classification = task == "classification"

        def step(batch: torch.Tensor, training: bool) -> torch.Tensor:
            out = net(batch[:, :c])
            if classification:
                return torch.nn.functional.cross_entropy(out, batch[:, c].long())
            return torch.nn.functional.mse_loss(out, batch[:, c:])
        # only the adapters learn: the head is the cross-validated linear probe, and
        # training it too with Adam on ~80 labels undid its regularisation (benchmark:
        # -5 R^2 points on one draw, never better); it is refitted on all labels afterwards
        net.head.requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=learning_rate, weight_decay=1e-4)
        held_out = validation_rows(np.arange(n), fraction, seed)  # the source's split
        start_loss, start_state = None, None
        if held_out.any():
            # the linear probe LoRA starts from is a candidate too: the engine's early
            # stopping only compares states after whole epochs, so with 100 labels a first
            # epoch that hurts would otherwise be kept over the better start
            start_loss = self._held_out_loss(net, step, data[held_out])
            start_state = copy.deepcopy(net.state_dict())
        result = train(net, step, source, epochs=int(epochs), batch_size=batch_size,
                       patience=10 if fraction else None, device=self.device_, seed=seed,
                       optimizer=optimizer, show_progressbar=self.show_progressbar,
                       desc="LoRA probe")
        history = list(result.history)
        if start_loss is not None:
            best = min(h.get("val_loss", math.inf) for h in history) if history else math.inf
            if start_loss <= best:
                net.load_state_dict(start_state)
            history.insert(0, {"epoch": -1, "val_loss": start_loss, "kept": start_loss <= best})
        return history

    def _held_out_loss(self, net: _ProbeNet, step, rows: np.ndarray) -> float:
        net.eval()
        with torch.no_grad():
            batch = torch.as_tensor(rows, dtype=torch.float32, device=self.device_)
            return float(step(batch, False))

    def _probe_outputs(self, X, navigation_mask, what: str, graph="auto"):
        """``(outputs, table, graph)``: ``graph`` is what graph spreading chose (recorded in
        the result's metadata), False when the pixels were predicted one by one."""
        t = self._table(X, navigation_mask)
        task = self.probe_["task"]
        if what in ("predict_proba",) and task != "classification":
            raise ValueError("predict_proba needs a classification head")
        if self._use_graph(t, graph):
            out, info = self._graph_outputs(t, what)
            return out, t, info
        n_out = (len(self.probe_["classes"]) if what == "predict_proba"
                 else (1 if task == "classification" else self.probe_["n_targets"]))
        out = self._map_rows(t.rows, functools.partial(self._probe_tensor, what=what), n_out)
        return out, t, False

    def _use_graph(self, t, graph) -> bool:
        if graph not in ("auto", True, False):
            raise ValueError(f"graph must be 'auto', True or False, got {graph!r}")
        is_map = t.reassemble is not None and len(t.nav_shape) >= 1 and t.rows.shape[0] >= 2
        if graph is True and not is_map:
            raise ValueError("graph=True spreads labels over a map: give a signal with a "
                             "navigation axis (a linescan or a map) of at least 2 pixels, "
                             "or use graph=False for independent spectra")
        if graph and is_map and getattr(self, "_probe_labels", None) is None:
            if graph is True:
                raise ValueError("this probe holds no labelled embeddings to spread (a model "
                                 "file written before graph spreading): call fit_probe "
                                 "again, or use graph=False")
            return False
        return bool(graph) and is_map

    def _graph_outputs(self, t, what: str) -> tuple[np.ndarray, dict]:
        """Probe outputs of the table's pixels spread over the map graph
        (:func:`~hyperspy_mlspec.estimators.mae.graph.spread_predict`), and what it chose."""
        from hyperspy_mlspec.estimators.mae.graph import spread_predict

        net, task = self._probe_net, self.probe_["task"]
        d = int(net.mean.numel())
        n = int(t.rows.shape[0])
        need = n * (d + 16) * 8 * 3  # embeddings, smoothed copies, graph (float64)
        if need > _GRAPH_MEMORY:
            raise ValueError(
                f"graph spreading holds the embeddings of all {n} pixels in memory "
                f"(~{need / 2**30:.1f} GiB, over the {_GRAPH_MEMORY / 2**30:.0f} GiB limit): "
                "predict a cropped region, or use graph=False (pixel by pixel, lazy)")
        z = self._map_rows(t.rows, self._probe_z, d)
        if is_dask(z):
            z = z.compute()  # n x n_embedding features: the spectra themselves stay lazy
        z = np.asarray(z, dtype=np.float64)
        labels = self._probe_labels
        z_lab = labels["z"].astype(np.float64)
        classification = task == "classification"
        n_classes = len(self.probe_["classes"]) if classification else 0
        if classification:
            idx = labels["target"][:, 0].astype(int)
            targets = np.eye(n_classes)[idx]
        else:
            targets = labels["target"].astype(np.float64)

        def as_head(w: np.ndarray, b: np.ndarray, columns=None):
            def apply(zz: np.ndarray) -> np.ndarray:
                out = zz @ w.T + b
                if not classification:
                    return out
                out = np.exp(out - out.max(1, keepdims=True))
                out /= out.sum(1, keepdims=True)
                if columns is None:
                    return out
                full = np.zeros((len(zz), n_classes))
                full[:, columns] = out
                return full
            return apply

        strength = self.probe_["strength"]

        def fit_head(zz: np.ndarray, tt: np.ndarray, relax: float = 1.0):
            if classification:
                present = np.flatnonzero(tt.sum(0) > 0)
                if len(present) < 2:
                    return lambda q: np.full((len(q), n_classes), 1.0 / n_classes)
                cls = tt.argmax(1)
                remap = np.searchsorted(present, cls)
                w, b, _ = self._linear_head(task, zz, remap, strength * relax)
                return as_head(w, b, present)
            w, b, _ = self._linear_head(task, zz, tt, "auto")  # ridge: always cross-validated
            return as_head(w, b)

        est, info = spread_predict(z, z_lab, targets, fit_head, tuple(t.nav_shape),
                                   t.nav_index, classification, seed=self._seed())
        if what == "predict_proba":
            out = est
        elif classification:
            out = est.argmax(1)[:, None].astype(np.float32)
        else:
            y_mean = net.y_mean.cpu().numpy()
            y_std = net.y_std.cpu().numpy()
            out = est * y_std + y_mean
        out = np.asarray(out, dtype=np.float32)
        if t.lazy:  # lazy in, lazy out (computed already: the graph couples all pixels)
            import dask.array as da

            out = da.from_array(out, chunks=(t.rows.chunks[0], out.shape[1]))
        return out, info

    @available_if(_has_head)
    def predict(self, X, *, navigation_mask=None, graph: bool | str = "auto"):
        """Class labels or regression values of the few-label head.

        Parameters
        ----------
        X
            Array ``(n, channels)`` or a HyperSpy signal.
        navigation_mask
            Signals only: True excludes a pixel (NaN in the map; left out of the graph).
        graph
            Spread the labels over the map (signals with a navigation axis): ``"auto"``
            (default) does so for a linescan or a map and predicts pixel by pixel
            otherwise; True insists (an error without a map), False is the plain probe.
            The probe's output becomes the prior of a graph linking pixels next to each
            other and pixels of similar (spatially smoothed) embeddings, and the labelled
            spectra; how strongly the map is trusted (down to not at all) and which links
            are used are chosen by cross-validation on the labels
            (:mod:`hyperspy_mlspec.estimators.mae.graph`). The choice is recorded in the
            result's ``metadata.MLSpec``. The embeddings of all pixels are held in memory
            (not the spectra: a lazy signal stays lazy until then).

        Returns
        -------
        ndarray or signal
            ``(n,)`` (or ``(n, k)`` for several regression targets) for arrays; for a
            signal, a navigation-shaped map (Signal2D for a 2-D map) with its navigation
            axes, lazy for a lazy signal.
        """
        out, t, graph_info = self._probe_outputs(X, navigation_mask, "predict", graph)
        task = self.probe_["task"]
        if task == "classification":
            classes = np.asarray(self.probe_["classes"])
            if is_dask(out):
                out = out.map_blocks(lambda b: classes[b.astype(int)], dtype=classes.dtype)
            else:
                out = classes[out.astype(int)]
            # labels are integers unless a mask leaves NaN holes
            if t.reassemble is not None and t.nav_index is not None:
                out = out.astype(np.float64)
        squeeze = task == "classification" or not self.probe_["target_shape"]
        details = dict(operation="predict", model=type(self).__name__,
                       head=self.probe_["head"], task=task, n_labels=int(self.probe_["n_labels"]),
                       graph=graph_info)
        title = ("MAE phase map" if task == "classification" else "MAE regression") + \
            f" of {_title(t)}"
        if not squeeze:  # several targets: one spectrum-like vector per pixel
            return t.vectors(out, title, "target", **details)
        if t.reassemble is None:
            return out[:, 0]
        return t.image(out[:, 0], title, "class" if task == "classification" else "value",
                       **details)

    @available_if(_has_head)
    def predict_proba(self, X, *, navigation_mask=None, graph: bool | str = "auto"):
        """Class probabilities ``(n, n_classes)``; for a signal a Signal1D with the
        navigation axes and a ``"class"`` signal axis (order of ``probe_["classes"]``).
        ``graph`` as in :meth:`predict` (the spread probabilities).
        """
        out, t, graph_info = self._probe_outputs(X, navigation_mask, "predict_proba", graph)
        return t.vectors(out, f"Class probabilities of {_title(t)}", "class",
                         operation="predict_proba", model=type(self).__name__,
                         classes=self.probe_["classes"], graph=graph_info)

    def _probe_arrays(self) -> dict[str, np.ndarray]:
        """The head's weights for the model file (the frozen encoder is ``module_``)."""
        arrays: dict[str, np.ndarray] = {}
        net = getattr(self, "_probe_net", None)
        if net is not None:
            for key, value in net.state_dict().items():
                if key.startswith("encoder.") and "lora_" not in key:
                    continue  # the frozen encoder is module_ itself
                arrays[f"probe.{key}"] = value.detach().cpu().numpy()
            labels = getattr(self, "_probe_labels", None)
            if labels is not None:  # what graph spreading needs (files keep it)
                arrays["probe_labels.z"] = labels["z"]
                arrays["probe_labels.target"] = labels["target"]
        return arrays

    def _restore_probe(self, arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the head recorded in ``probe_`` from a model file's arrays."""
        self._probe_net = None
        self._probe_labels = None
        if "probe_labels.z" in arrays:
            self._probe_labels = {"z": np.asarray(arrays["probe_labels.z"], np.float32),
                                  "target": np.asarray(arrays["probe_labels.target"],
                                                       np.float32)}
        if self.probe_ is not None:
            p = self.probe_
            encoder = self.module_
            if p["head"] == "lora":
                encoder = copy.deepcopy(self.module_)
                inject_lora(encoder.blocks, p["rank"], p["lora_alpha"],
                            tuple(p["lora_targets"]))
            n_out = len(p["classes"]) if p["task"] == "classification" else p["n_targets"]
            net = _ProbeNet(encoder, n_out)
            probe = {k[len("probe."):]: torch.as_tensor(v) for k, v in arrays.items()
                     if k.startswith("probe.")}
            expected = {k for k in net.state_dict() if not k.startswith("encoder.")
                        or "lora_" in k}
            if set(probe) != expected:
                raise KeyError(f"probe weights {sorted(set(probe) ^ expected)}")
            net.load_state_dict(probe, strict=False)
            self._probe_net = net.to(self.device_).eval()
