"""Interactive explorers built on HyperSpy's plotting (navigator, markers, ROIs).

They draw with HyperSpy figures, so they work wherever HyperSpy plots: Qt windows, or
Jupyter with ipympl (``%matplotlib widget``). Their few controls (a threshold slider,
selection counts) are traits with ``.gui()`` like any HyperSpy tool.

- :class:`AnomalyExplorer`: the anomaly map is the navigator; the spectrum at the cursor is
  drawn with the model's reconstruction and the residual; a threshold slider outlines the
  anomalous regions on the map.
- :class:`LatentExplorer`: a 2-D embedding as a density image with every pixel as a point;
  a rectangle ROI there highlights the matching pixels on the map, a ROI on the map
  highlights their points, and the cursor's pixel is marked in the scatter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import traits.api as t
from hyperspy.ui_registry import add_gui_method


def _computed(signal):
    if getattr(signal, "_lazy", False):
        signal = signal.deepcopy()
        signal.compute(show_progressbar=False)
    return signal


def _edges(values: np.ndarray) -> np.ndarray:
    """Pixel edges from pixel centres (midpoints; also for non-uniform axes)."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def outline_segments(mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Line segments ``(n, 2, 2)`` along the boundary of the True pixels of a 2-D mask
    (array order: rows follow ``y``, columns ``x``; coordinates are pixel centres).

    Examples
    --------
    >>> m = np.zeros((3, 3), bool); m[1, 1] = True
    >>> outline_segments(m, np.arange(3.0), np.arange(3.0)).shape
    (4, 2, 2)
    """
    mask = np.asarray(mask, dtype=bool)
    xe, ye = _edges(x), _edges(y)
    m = np.pad(mask, 1)
    vi, vk = np.nonzero(m[1:-1, 1:] != m[1:-1, :-1])  # vertical edges at xe[vk]
    hk, hj = np.nonzero(m[1:, 1:-1] != m[:-1, 1:-1])  # horizontal edges at ye[hk]
    vertical = np.stack([np.stack([xe[vk], ye[vi]], -1), np.stack([xe[vk], ye[vi + 1]], -1)], 1)
    horizontal = np.stack([np.stack([xe[hj], ye[hk]], -1),
                           np.stack([xe[hj + 1], ye[hk]], -1)], 1)
    return np.concatenate([vertical, horizontal]).reshape(-1, 2, 2)


class _LiveMarker:
    """A HyperSpy marker whose items are replaced as a selection changes.

    ``Markers.remove_items`` passes every keyword (``units``...) back to the matplotlib
    collection, which Points and Rectangles refuse; a fresh marker of the same style is
    added instead (the figure is redrawn once)."""

    def __init__(self, signal, cls, on_signal: bool = True, **style) -> None:
        self.signal, self.cls, self.on_signal, self.style = signal, cls, on_signal, style
        self.marker = None
        self.items: dict = {}

    def set(self, **items) -> None:
        self.items = items
        if self.marker is not None:
            self.marker.close(render_figure=False)
        self.marker = self.cls(**items, **self.style)
        self.signal.add_marker(self.marker, plot_on_signal=self.on_signal, render_figure=True)

    def __len__(self) -> int:
        return len(next(iter(self.items.values()))) if self.items else 0


def _outline_kwargs(signal, mask: np.ndarray) -> dict:
    """Marker items outlining the True pixels of a navigation mask: boundary segments on
    a map (``Lines``), boundary positions on a line scan (``VerticalLines``)."""
    coords = _nav_coordinates(signal)
    if mask.ndim == 2:
        return {"segments": outline_segments(mask, coords[0], coords[1])}
    edges = _edges(coords[0])
    return {"offsets": edges[np.nonzero(np.diff(np.pad(mask, 1).astype(np.int8)))[0]]}


def _nav_coordinates(signal) -> list[np.ndarray]:
    """Calibrated coordinates of the navigation axes, in HyperSpy order (x, y)."""
    return [np.asarray(ax.axis, dtype=float) for ax in signal.axes_manager.navigation_axes]


@add_gui_method(toolkey="hyperspy_mlspec.AnomalyExplorer")
class AnomalyExplorer(t.HasTraits):
    """Explore an anomaly map: navigator, spectrum + reconstruction + residual, threshold.

    Parameters
    ----------
    signal
        The spectrum image the map was computed on (1-D or 2-D navigation).
    anomalies
        An :class:`~hyperspy_mlspec.AnomalyResult` (``s.mlspec.anomalies()``), or an
        anomaly map signal (``s.mlspec.anomaly_map()``).
    model
        The model whose reconstruction is drawn (default: the result's model; for the
        spatial-context score, the spectrum expected from the pixel's surroundings); None
        draws the spectrum only.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> from hyperspy_mlspec.gui import AnomalyExplorer
    >>> s = hyperspy_mlspec.data.eds_map((16, 16), n_channels=64, rare_phase=True)
    >>> found = s.mlspec.anomalies(show_progressbar=False)
    >>> ex = AnomalyExplorer(s, found)
    >>> ex.plot()  # doctest: +SKIP
    >>> ex.threshold = 2 * found.threshold
    >>> ex.gui()  # doctest: +SKIP
    """

    threshold = t.Float(desc="score above which a pixel is anomalous")
    threshold_low = t.Float(0.0)
    threshold_high = t.Float(1.0)
    n_anomalous = t.Int(0)
    n_regions = t.Int(0)
    summary = t.Str("")

    def __init__(self, signal, anomalies, model=None) -> None:
        super().__init__()
        from hyperspy_mlspec.scoring.scores import threshold_value
        from hyperspy_mlspec.workflows.anomaly import AnomalyResult

        nav_dim = signal.axes_manager.navigation_dimension
        if nav_dim not in (1, 2):
            raise ValueError(f"the anomaly explorer needs a line scan or a map (navigation "
                             f"dimension 1 or 2), this signal has {nav_dim}")
        self.signal = signal
        if isinstance(anomalies, AnomalyResult):
            score, threshold = anomalies.score, anomalies.threshold
            model = anomalies.model if model is None else model
        else:
            score, threshold = anomalies, None
        self.score = _computed(score)
        self.model = model
        values = np.asarray(self.score.data, dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise ValueError("the anomaly map has no finite value")
        if threshold is None:
            threshold = threshold_value(finite)[0]
        self.threshold_low, self.threshold_high = float(finite.min()), float(finite.max())
        self._outline = None
        self._level = None
        self._lines: list = []
        self._cache: dict[tuple, np.ndarray] = {}
        self.threshold = float(np.clip(threshold, self.threshold_low, self.threshold_high))
        self._update()

    def default_traits_view(self):
        """The Qt view of the controls (needs the ``gui`` extra)."""
        from hyperspy_mlspec.gui.traitsui_ui import anomaly_explorer_view

        return anomaly_explorer_view(self)

    # -- numbers (no figure needed) --------------------------------------------------------------
    def mask(self) -> np.ndarray:
        """Anomalous pixels (navigation shape, array order) at the current threshold."""
        values = np.asarray(self.score.data, dtype=float)
        return np.nan_to_num(values, nan=-np.inf) > self.threshold

    def segments(self) -> np.ndarray:
        """Outline of the anomalous regions (map) or their boundaries (line scan)."""
        return next(iter(_outline_kwargs(self.signal, self.mask()).values()))

    @t.observe("threshold")
    def _threshold_changed(self, event) -> None:
        if hasattr(self, "score"):
            self._update()

    def _update(self) -> None:
        from scipy import ndimage

        mask = self.mask()
        labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
        self.n_anomalous, self.n_regions = int(mask.sum()), int(n)
        valid = int(np.isfinite(np.asarray(self.score.data, dtype=float)).sum())
        self.summary = (f"{self.n_anomalous} anomalous pixel(s) of {valid} "
                        f"({self.n_anomalous / max(valid, 1):.2%}) in {n} region(s)")
        if self._outline is not None:
            self._outline.set(**_outline_kwargs(self.signal, mask))
            if self._level is not None:
                self._level.set(offsets=np.array([self.threshold]))

    # -- spectra at the cursor -------------------------------------------------------------------
    def reconstruction(self, indices: tuple) -> np.ndarray:
        """The model's reconstruction of the pixel at navigation ``indices`` (HyperSpy
        order), on the signal's channels (NaN where the model has none)."""
        key = tuple(int(i) for i in indices)
        if key not in self._cache:
            if hasattr(self.model, "expected") and hasattr(self.model, "settings"):
                data = self._context_expected(key)
            else:
                pixel = self.signal.inav[key]
                rec = pixel.mlspec.reconstruct(self.model)
                data = np.asarray(_computed(rec).data, dtype=float).ravel()
                x_model = np.asarray(rec.axes_manager.signal_axes[0].axis, dtype=float)
                x = np.asarray(self.signal.axes_manager.signal_axes[0].axis, dtype=float)
                if x_model.shape != x.shape or not np.allclose(x_model, x):
                    data = np.interp(x, x_model, data, left=np.nan, right=np.nan)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = data
        return self._cache[key]

    def _context_expected(self, key: tuple) -> np.ndarray:
        """Expected spectrum of a pixel from its surroundings (the spatial-context score's
        dual-window model), computed on the neighbourhood the window reaches."""
        r = int(self.model.settings.outer)
        window = tuple(slice(max(i - r, 0), i + r + 1) for i in key)
        block = np.asarray(_computed(self.signal.inav[window]).data, dtype=float)
        expected = self.model.expected(block)
        centre = tuple(i - w.start for i, w in zip(key, window, strict=True))[::-1]
        return np.asarray(expected[centre], dtype=float).ravel()

    def _current(self, axes_manager) -> np.ndarray:
        spec = self.signal.inav[tuple(axes_manager.indices)]
        return np.asarray(_computed(spec).data, dtype=float).ravel()

    def _rec_line(self, axes_manager=None) -> np.ndarray:
        return self.reconstruction(axes_manager.indices)

    def _residual_line(self, axes_manager=None) -> np.ndarray:
        return self._current(axes_manager) - self.reconstruction(axes_manager.indices)

    # -- drawing ---------------------------------------------------------------------------------
    def plot(self) -> None:
        """Plot the signal with the anomaly map as navigator, the reconstruction (blue) and
        residual (green) at the cursor, and the outline of the anomalous regions."""
        import hyperspy.api as hs
        from hyperspy.drawing.signal1d import Signal1DLine

        s = self.signal
        s.plot(navigator=self.score)
        self._lines = []
        if self.model is not None:
            for fn, color in ((self._rec_line, "tab:blue"), (self._residual_line, "tab:green")):
                line = Signal1DLine()
                line.data_function = fn
                line.set_line_properties(color=color, type="line")
                s._plot.signal_plot.add_line(line)
                line.plot()
                self._lines.append(line)
            s._plot.signal_plot.render_figure()
        if s.axes_manager.navigation_dimension == 2:
            self._outline = _LiveMarker(s, hs.plot.markers.Lines, False, colors="white",
                                        linewidths=1.5)
        else:
            self._outline = _LiveMarker(s, hs.plot.markers.VerticalLines, False, colors="red")
            self._level = _LiveMarker(s, hs.plot.markers.HorizontalLines, False, colors="red",
                                      linestyle="--")
        self._update()


@add_gui_method(toolkey="hyperspy_mlspec.LatentExplorer")
class LatentExplorer(t.HasTraits):
    """A 2-D embedding linked to the map: select points, see the pixels, and back.

    Parameters
    ----------
    signal
        The spectrum image (1-D or 2-D navigation).
    embedding
        Signal with the navigation axes of ``signal`` and a signal axis of size 2, e.g.
        ``s.mlspec.embedding_2d()``.
    labels
        Optional colours of the points: a :class:`~hyperspy_mlspec.ClusterResult`, a
        navigation signal or an array of integer labels.
    bins
        Bins per axis of the density image under the points.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> from hyperspy_mlspec.gui import LatentExplorer
    >>> s = hyperspy_mlspec.data.eds_map((16, 16), n_channels=64)
    >>> xy = s.mlspec.embedding_2d(epochs=3, show_progressbar=False)
    >>> ex = LatentExplorer(s, xy)
    >>> int(ex.select_latent(-np.inf, np.inf, -np.inf, np.inf).sum())
    256
    >>> ex.plot()  # doctest: +SKIP
    """

    n_selected_pixels = t.Int(0, desc="pixels inside the ROI of the embedding")
    n_selected_points = t.Int(0, desc="points of the pixels inside the ROI of the map")
    summary = t.Str("")

    def __init__(self, signal, embedding, labels=None, bins: int = 64) -> None:
        super().__init__()
        nav_dim = signal.axes_manager.navigation_dimension
        if nav_dim not in (1, 2):
            raise ValueError(f"the latent explorer needs a line scan or a map (navigation "
                             f"dimension 1 or 2), this signal has {nav_dim}")
        embedding = _computed(embedding)
        nav_shape = signal.data.shape[:nav_dim]
        xy = np.asarray(embedding.data, dtype=float)
        if xy.shape != (*nav_shape, 2):
            raise ValueError(f"the embedding must have the navigation shape of the signal and "
                             f"2 features, got {xy.shape} for navigation {nav_shape}")
        self.signal = signal
        self.embedding = embedding
        self.xy = xy.reshape(-1, 2)
        self.nav_shape = nav_shape
        self.valid = np.all(np.isfinite(self.xy), axis=1)
        if not self.valid.any():
            raise ValueError("the embedding has no finite point")
        self.labels = self._labels(labels)
        self.density = self._density(int(bins))
        self.latent_roi = None
        self.map_roi = None
        self._markers: dict[str, Any] = {}

    def _labels(self, labels) -> np.ndarray | None:
        if labels is None:
            return None
        labels = getattr(labels, "labels", labels)
        data = np.asarray(_computed(labels).data if hasattr(labels, "data") else labels)
        return data.reshape(-1)

    def _density(self, bins: int):
        import hyperspy.api as hs

        pts = self.xy[self.valid]
        lo, hi = pts.min(0), pts.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        lo, hi = lo - 0.05 * span, hi + 0.05 * span
        hist, xe, ye = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins,
                                      range=[[lo[0], hi[0]], [lo[1], hi[1]]])
        img = hs.signals.Signal2D(np.log1p(hist.T))
        for ax, edges, name in zip(img.axes_manager.signal_axes, (xe, ye),
                                   ("embedding 1", "embedding 2"), strict=True):
            ax.name, ax.scale = name, float(edges[1] - edges[0])
            ax.offset = float(edges[0] + ax.scale / 2)
        img.metadata.General.title = (f"Latent space of {self.signal.metadata.General.title}"
                                      " (log density)")
        return img

    def default_traits_view(self):
        """The Qt view of the controls (needs the ``gui`` extra)."""
        from hyperspy_mlspec.gui.traitsui_ui import latent_explorer_view

        return latent_explorer_view(self)

    # -- selections (no figure needed) ----------------------------------------------------------
    def select_latent(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        """Pixels (navigation shape, array order) whose point lies in the rectangle."""
        x, y = self.xy[:, 0], self.xy[:, 1]
        inside = self.valid & (x >= min(x0, x1)) & (x <= max(x0, x1)) & (
            y >= min(y0, y1)) & (y <= max(y0, y1))
        return inside.reshape(self.nav_shape)

    def select_map(self, x0: float, x1: float, y0: float | None = None,
                   y1: float | None = None) -> np.ndarray:
        """Points (``(n, 2)`` embedding coordinates) of the pixels in a rectangle of the
        map (calibrated navigation units; a span for a line scan)."""
        coords = _nav_coordinates(self.signal)
        inx = (coords[0] >= min(x0, x1)) & (coords[0] <= max(x0, x1))
        if len(coords) == 2:
            iny = (coords[1] >= min(y0, y1)) & (coords[1] <= max(y0, y1))
            inside = iny[:, None] & inx[None, :]
        else:
            inside = inx
        flat = inside.reshape(-1) & self.valid
        return self.xy[flat]

    # -- drawing ---------------------------------------------------------------------------------
    def plot(self) -> None:
        """Plot the signal and the embedding, with a ROI in each that selects in the
        other and a marker of the cursor's pixel in the embedding."""
        import hyperspy.api as hs

        s = self.signal
        nav_dim = len(self.nav_shape)
        if nav_dim == 1:
            navigator = _computed(s.sum(-1)).as_signal1D(0)  # a line plot takes a SpanROI
            s.plot(navigator=navigator)
        else:
            s.plot()
        density = self.density
        density.plot(cmap="Greys", colorbar=False)
        pts = self.xy[self.valid]
        kw = {}
        if self.labels is not None:
            import matplotlib

            cmap = matplotlib.colormaps["tab10"]
            lab = self.labels[self.valid]
            kw["facecolors"] = [cmap(int(v) % 10) if v >= 0 else (0.5, 0.5, 0.5, 1)
                                for v in lab]
        else:
            kw["facecolors"] = "tab:blue"
        density.add_marker(hs.plot.markers.Points(offsets=pts, sizes=3, **kw))
        self._markers["chosen"] = _LiveMarker(density, hs.plot.markers.Points, sizes=7,
                                              facecolors="orange")
        self._markers["cursor"] = _LiveMarker(density, hs.plot.markers.Points, sizes=14,
                                              facecolors="none", edgecolors="red")
        self._cursor_moved()

        xa, ya = density.axes_manager.signal_axes
        cx, cy = np.median(pts, axis=0)
        wx, wy = 0.15 * xa.size * xa.scale, 0.15 * ya.size * ya.scale
        self.latent_roi = hs.roi.RectangularROI(left=cx - wx, top=cy - wy, right=cx + wx,
                                              bottom=cy + wy)
        self.latent_roi.add_widget(density, axes=density.axes_manager.signal_axes,
                                   color="orange")
        self.latent_roi.events.changed.connect(self._latent_changed, [])

        coords = _nav_coordinates(s)
        if nav_dim == 2:
            pixels = _LiveMarker(s, hs.plot.markers.Lines, False, colors="orange",
                                 linewidths=1.5)
            x, y = coords
            self.map_roi = hs.roi.RectangularROI(left=x[0], top=y[0],
                                                 right=x[min(3, x.size - 1)],
                                                 bottom=y[min(3, y.size - 1)])
        else:
            pixels = _LiveMarker(s, hs.plot.markers.VerticalLines, False, colors="orange")
            x = coords[0]
            self.map_roi = hs.roi.SpanROI(left=x[0], right=x[min(3, x.size - 1)])
        self._markers["pixels"] = pixels
        self.map_roi.add_widget(s, axes=s.axes_manager.navigation_axes, color="red")
        self.map_roi.events.changed.connect(self._map_changed, [])
        s.axes_manager.events.indices_changed.connect(self._cursor_moved, [])
        self._latent_changed()
        self._map_changed()

    def _cursor_point(self) -> np.ndarray:
        idx = tuple(self.signal.axes_manager.indices)[::-1]  # array order
        flat = np.ravel_multi_index(idx, self.nav_shape) if idx else 0
        return self.xy[flat:flat + 1] if self.valid[flat] else np.empty((0, 2))

    def _cursor_moved(self) -> None:
        if "cursor" in self._markers:
            self._markers["cursor"].set(offsets=self._cursor_point())

    def _latent_changed(self) -> None:
        roi = self.latent_roi
        selected = self.select_latent(roi.left, roi.right, roi.top, roi.bottom)
        self.n_selected_pixels = int(selected.sum())
        self._summarise()
        marker = self._markers.get("pixels")
        if marker is None:
            return
        marker.set(**_outline_kwargs(self.signal, selected))

    def _map_changed(self) -> None:
        roi = self.map_roi
        if len(self.nav_shape) == 2:
            pts = self.select_map(roi.left, roi.right, roi.top, roi.bottom)
        else:
            pts = self.select_map(roi.left, roi.right)
        self.n_selected_points = len(pts)
        self._summarise()
        if "chosen" in self._markers:
            self._markers["chosen"].set(offsets=pts)

    def _summarise(self) -> None:
        self.summary = (f"{self.n_selected_pixels} pixel(s) in the embedding's ROI (orange "
                        f"on the map); {self.n_selected_points} point(s) from the map's ROI "
                        "(orange in the embedding)")
