"""Harder synthetic maps for the spatial-denoising benchmark (not the generators' defaults).

* :func:`eds_particle_map`: STEM-EDS of nanoparticles of three compositions (and a few
  one- to three-pixel ones) on an amorphous carbon film, ~320 counts per pixel, with
  hemispherical thickness profiles: sharp particle edges, tiny features, a bremsstrahlung
  background everywhere.
* :func:`eels_sharp_map`: core-loss EELS with *sharp* grain boundaries (hard Voronoi cells),
  tiny inclusions of a rare phase (1-5 pixels), a thickness wedge and an energy drift of a
  few channels (slow scan drift plus per-pixel jitter), built from the pure-phase spectra of
  :func:`hyperspy_mlspec.data.eels_map`.

Both return the noisy signal (integer counts as float32, exspy signal classes) and the
clean expected counts, so errors against the truth can be computed.
"""

from __future__ import annotations

import numpy as np


def _hard_voronoi(shape, n_grains, rng):
    ny, nx = shape
    seeds = rng.uniform(0, 1, (n_grains, 2)) * np.array([ny, nx])
    yy, xx = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij")
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return d.argmin(-1)


def eds_particle_map(shape=(64, 64), n_channels=1024, counts_per_pixel=320.0,
                     random_state=0):
    """EDS map of particles on a carbon film; returns ``(signal, clean, info)``.

    ``info`` holds ``"particle_mask"`` (pixels covered by a particle), ``"tiny_mask"``
    (pixels of particles with radius < 1.5 px) and ``"labels"`` (0 = film, 1-3 =
    particle composition).
    """
    import exspy

    from hyperspy_mlspec.data._eds import ThinFilmAbsorption, _EDSPhase, _phase_spectrum

    rng = np.random.default_rng(random_state)
    lo, hi = 0.0, 10.24
    scale = (hi - lo) / n_channels
    edges = lo + (np.arange(n_channels + 1) - 0.5) * scale
    centres = 0.5 * (edges[1:] + edges[:-1])
    phases = [
        _EDSPhase("carbon film", {"C": 0.95, "O": 0.04, "Si": 0.01}),
        _EDSPhase("Pt-Fe alloy", {"Pt": 0.5, "Fe": 0.5}),
        _EDSPhase("Au", {"Au": 0.97, "Ag": 0.03}),
        _EDSPhase("Ni-Co oxide", {"Ni": 0.3, "Co": 0.2, "O": 0.5}),
    ]
    spectra = np.stack([_phase_spectrum(p, edges) for p in phases])
    ny, nx = shape
    yy, xx = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij")
    height = np.zeros((len(phases),) + shape)
    height[0] = 0.15  # the film, everywhere
    tiny = np.zeros(shape, dtype=bool)
    n_particles = int(round(ny * nx / 180))
    radii = np.concatenate([rng.uniform(2.0, 7.0, n_particles), rng.uniform(0.6, 1.4, 6)])
    for i, r in enumerate(radii):
        cy, cx = rng.uniform(r, ny - r), rng.uniform(r, nx - r)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        # hemispherical height profile, area-weighted at the rim (sub-pixel coverage)
        h = np.sqrt(np.clip(r * r - d2, 0, None)) / max(r, 1.0)
        h = np.maximum(h, np.clip(1.0 - (np.sqrt(d2) - r), 0, 1) * 0.15 * (d2 < (r + 1) ** 2))
        kind = 1 + i % 3
        height[kind] += h
        if r < 1.5:
            tiny |= h > 0.2
    # thicker film towards one corner (an extra, smooth thickness gradient)
    height[0] *= 1.0 + 0.8 * (yy + xx) / (ny + nx)
    total_t = height.sum(0)
    absorption = ThinFilmAbsorption(centres)
    mix = np.einsum("pyx,pc->yxc", height, spectra).reshape(-1, n_channels)
    clean = absorption(mix, total_t.ravel() * 0.5).reshape(shape + (n_channels,))
    clean *= counts_per_pixel / clean.sum(-1).mean()
    noisy = rng.poisson(clean).astype(np.float32)
    s = exspy.signals.EDSTEMSpectrum(noisy)
    s.axes_manager[-1].name, s.axes_manager[-1].units = "Energy", "keV"
    s.axes_manager[-1].offset, s.axes_manager[-1].scale = lo, scale
    for ax, name in zip(s.axes_manager.navigation_axes, ("x", "y"), strict=False):
        ax.name, ax.units, ax.scale = name, "nm", 0.5
    s.metadata.General.title = f"Synthetic EDS particles ({counts_per_pixel:g} counts/pixel)"
    labels = np.where(height[1:].max(0) > 0.05, 1 + height[1:].argmax(0), 0)
    return s, clean, {"particle_mask": labels > 0, "tiny_mask": tiny, "labels": labels}


def eels_sharp_map(shape=(64, 64), n_channels=1024, dose=10.0, drift_channels=2.0,
                   jitter_channels=0.6, random_state=0):
    """EELS map with sharp grain boundaries and tiny inclusions; returns
    ``(signal, clean, info)`` with ``info`` holding ``"labels"`` (grain phase),
    ``"rare_mask"`` (inclusion pixels), ``"boundary_mask"`` (pixels next to a boundary),
    ``"shift_channels"`` (per-pixel drift in channels) and ``"fe3_fraction"``.
    """
    import exspy

    from hyperspy_mlspec.data import eels_map

    rng = np.random.default_rng(random_state)
    ref, truth = eels_map((1,), n_channels, 1.0, thickness=False, drift=0.0,
                          rare_phase=True, random_state=random_state, return_truth=True)
    spectra = np.asarray(truth.phase_spectra, dtype=np.float64)  # FeO, Fe2O3, TiO2, NiO
    ny, nx = shape
    grains = _hard_voronoi(shape, max(6, ny * nx // 300), rng)
    kind = rng.integers(0, 3, grains.max() + 1)  # 0: iron oxide, 1: TiO2, 2: iron oxide
    yy, xx = np.meshgrid(np.arange(ny) / ny, np.arange(nx) / nx, indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    front = np.clip((np.cos(angle) * (yy - 0.5) + np.sin(angle) * (xx - 0.5)) / 0.5 + 0.5, 0, 1)
    iron = kind[grains] != 1
    ab = np.zeros(shape + (4,))
    ab[..., 0] = iron * (1 - front)
    ab[..., 1] = iron * front / 0.83  # the Fe2O3 reference holds 0.83 Fe per FeO
    ab[..., 2] = ~iron
    rare = np.zeros(shape, dtype=bool)
    for _ in range(max(2, ny * nx // 1000)):
        cy, cx = rng.integers(2, ny - 2), rng.integers(2, nx - 2)
        size = rng.integers(1, 6)
        cells = [(cy, cx)]
        while len(cells) < size:
            dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][rng.integers(4)]
            y, x = cells[rng.integers(len(cells))]
            if (y + dy, x + dx) not in cells and 0 <= y + dy < ny and 0 <= x + dx < nx:
                cells.append((y + dy, x + dx))
        for y, x in cells:
            rare[y, x] = True
    ab[rare] *= 0.3
    ab[rare, 3] = 0.7
    thickness = 0.5 + 1.0 * (0.6 * xx + 0.4 * yy)  # a wedge, 0.5 to 1.5
    clean_unshifted = (ab.reshape(-1, 4) @ spectra) * thickness.reshape(-1, 1)
    t = np.linspace(0, 1, ny * nx)
    slow = drift_channels * np.sin(2 * np.pi * (0.7 * t + rng.uniform()))
    shift = slow + jitter_channels * rng.normal(size=ny * nx)
    ch = np.arange(n_channels, dtype=np.float64)
    clean = np.stack([np.interp(ch - d, ch, row) for row, d in zip(clean_unshifted, shift,
                                                                     strict=True)])
    clean = clean.reshape(shape + (n_channels,))
    clean *= dose / clean.mean()
    noisy = rng.poisson(clean).astype(np.float32)
    s = exspy.signals.EELSSpectrum(noisy)
    sig = s.axes_manager[-1]
    sig.name, sig.units = "Energy loss", "eV"
    sig.offset, sig.scale = ref.axes_manager[-1].offset, ref.axes_manager[-1].scale
    for ax, name in zip(s.axes_manager.navigation_axes, ("x", "y"), strict=False):
        ax.name, ax.units, ax.scale = name, "nm", 1.0
    s.metadata.General.title = f"Synthetic sharp EELS map (dose={dose:g})"
    lab = np.where(rare, 3, np.where(iron, 0, 2))
    boundary = np.zeros(shape, dtype=bool)
    boundary[1:] |= lab[1:] != lab[:-1]
    boundary[:-1] |= lab[1:] != lab[:-1]
    boundary[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    boundary[:, :-1] |= lab[:, 1:] != lab[:, :-1]
    fe = ab[..., 0] + 0.83 * ab[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        fe3 = np.where(fe > 0, 0.83 * ab[..., 1] / fe, np.nan)
    return s, clean, {"labels": lab, "rare_mask": rare, "boundary_mask": boundary,
                      "shift_channels": shift.reshape(shape), "fe3_fraction": fe3,
                      "phase_spectra": spectra, "abundances": ab}
