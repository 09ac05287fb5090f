"""The PCA start of AutoencoderDecomposition (init="auto" / "pca", issue 11 item 5)."""

import numpy as np
import pytest
import torch

from hyperspy_mlspec import AutoencoderDecomposition, load_model
from hyperspy_mlspec.engine import ArraySource, train
from hyperspy_mlspec.models import SpectralAutoencoder
from hyperspy_mlspec.models.autoencoder import optimal_shrinkage


def _poisson_err(rec, clean):
    rec = np.asarray(rec, float).reshape(clean.shape)
    return float(np.mean((rec - clean) ** 2 / np.maximum(clean, 1e-3)))


@pytest.fixture(scope="module")
def high_dose():
    """A small EELS map at a high dose, where HyperSpy's PCA is near optimal at K=2."""
    from hyperspy_mlspec.data import eels_map

    s, truth = eels_map((24, 24), 256, 100, thickness=True, drift=0.3, random_state=1,
                        return_truth=True)
    return s, np.asarray(truth.clean)


def test_default_not_worse_than_hyperspy_pca_at_k2_high_dose(high_dose):
    """At K=2 and a high dose the trained network alone is 1.04-1.40x HyperSpy's PCA
    (map seeds 0-3); the default keeps the shrunk PCA start when the held-out split
    prefers it, so it is never worse."""
    import hyperspy_mlspec  # noqa: F401 - registers s.mlspec

    s, clean = high_dose
    k = 2
    c = s.deepcopy()
    c.decomposition(normalize_poissonian_noise=True, output_dimension=k, print_info=False)
    pca_err = _poisson_err(c.get_decomposition_model(k).data, clean)
    ae = s.mlspec.decomposition(k, random_state=0, show_progressbar=False)
    ae_err = _poisson_err(s.mlspec.reconstruct(ae).data, clean)
    assert ae.init_ == "pca"
    assert set(ae.start_scores_) == {"trained", "pca"}
    assert ae.start_scores_["pca"] < ae.start_scores_["trained"]
    assert ae_err <= pca_err  # 0.986x here


def test_chosen_pca_start_is_exact_and_saved(high_dose, tmp_path):
    s, _ = high_dose
    X = s.data.reshape(-1, s.data.shape[-1])
    ae = AutoencoderDecomposition(2, epochs=3, random_state=0, show_progressbar=False).fit(X)
    assert ae.init_ == "pca" and ae.loss_ == "poisson"  # a 3-epoch network loses to PCA
    rec = ae.reconstruct(X)
    assert rec.min() >= 0  # rates of counts are floored at zero
    np.testing.assert_allclose(ae.inverse_transform(ae.transform(X)), rec, rtol=1e-4,
                               atol=1e-3)
    ae.save(tmp_path / "m.mlspec")
    back = load_model(tmp_path / "m.mlspec")
    assert back.init_ == "pca"
    np.testing.assert_allclose(back.reconstruct(X), rec, rtol=1e-5, atol=1e-4)
    kept = AutoencoderDecomposition(2, epochs=3, init="kmeans", random_state=0,
                                    show_progressbar=False).fit(X)
    assert kept.init_ == "kmeans" and not hasattr(kept, "start_scores_")


def test_pca_start_reproduces_the_truncated_svd():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.random((300, 3)) @ rng.random((3, 40)) + 0.05
                        * rng.normal(size=(300, 40)), dtype=torch.float32)
    ae = SpectralAutoencoder(40, 3, nonnegative=False, hidden=(32, 16), linear_path=True)
    ae.standardize_inputs(x)
    w = ae.init_from_pca(x)  # no noise level: plain truncation
    np.testing.assert_allclose(w.numpy(), 1.0)
    u, sv, vt = np.linalg.svd(x.numpy().astype(float), full_matrices=False)
    ref = (u[:, :3] * sv[:3]) @ vt[:3]
    with torch.no_grad():
        out = ae(x)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=2e-4)
    assert not ae.skip.weight.requires_grad and not ae.out.weight.requires_grad
    with pytest.raises(ValueError, match="nonnegative=False"):
        SpectralAutoencoder(40, 3, linear_path=True)


def test_optimal_shrinkage_beats_truncation_on_a_spiked_model():
    gen = torch.Generator().manual_seed(0)
    n, m = 600, 80
    u = torch.linalg.qr(torch.randn(n, 3, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(m, 3, generator=gen))[0]
    signal = (u * torch.tensor([200.0, 50.0, 30.0])) @ v.T
    y = signal + 0.7 * torch.randn(n, m, generator=gen)
    uu, sv, vt = torch.linalg.svd(y, full_matrices=False)
    k = 5  # two components are pure noise
    f = optimal_shrinkage(sv[:k], (n, m), 0.49).float()
    assert torch.all(f[1:] <= f[:-1]) and f[0] > 0.99 and torch.all(f[3:] == 0)
    trunc = ((uu[:, :k] * sv[:k]) @ vt[:k] - signal).pow(2).sum()
    shrunk = ((uu[:, :k] * (sv[:k] * f)) @ vt[:k] - signal).pow(2).sum()
    assert shrunk < 0.7 * trunc


def test_keep_start_returns_the_start_when_training_never_beats_it():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    lin = torch.nn.Linear(4, 4)
    with torch.no_grad():  # the optimum of the loss below
        lin.weight.copy_(torch.eye(4))
        lin.bias.zero_()
    start = {k: v.clone() for k, v in lin.state_dict().items()}
    res = train(lin, lambda b, t: ((lin(b) - b) ** 2).mean(),
                ArraySource(X, validation_fraction=0.2), epochs=3, batch_size=20,
                learning_rate=0.5, keep_start=True, show_progressbar=False)
    assert res.best_epoch == -1
    for key, value in lin.state_dict().items():
        torch.testing.assert_close(value, start[key])


def test_too_few_spectra_for_a_split_keep_the_pca_start(high_dose):
    """Below 80 spectra there is no held-out split: nothing can show the network is
    better, so the default keeps the PCA start (the network alone is 1.06-10x PCA on the
    real 40-spectrum LSMO linescan thinned to 2 %)."""
    s, clean = high_dose
    X = s.data.reshape(-1, s.data.shape[-1])[:60]
    ae = AutoencoderDecomposition(2, epochs=3, random_state=0, show_progressbar=False).fit(X)
    assert ae.init_ == "pca" and np.isnan(ae.start_scores_["pca"])
    u, sv, vt = np.linalg.svd(X / np.sqrt(X.mean(1, keepdims=True) * X.mean(0)),
                              full_matrices=False)
    # the kept components span the Poisson-weighted PCA subspace
    comps = ae.components_ / np.sqrt(X.mean(0))
    resid = comps - (comps @ vt[:2].T) @ vt[:2]
    assert np.linalg.norm(resid) < 1e-3 * np.linalg.norm(comps)
