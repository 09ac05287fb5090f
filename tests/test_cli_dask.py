"""``--lazy`` and ``--scheduler`` of the command line (local schedulers and a real cluster)."""

from __future__ import annotations

import argparse
import json
import logging
import time

import hyperspy.api as hs
import numpy as np
import pytest

import hyperspy_mlspec
from hyperspy_mlspec.cli import add_dask_options, build_parser, dask_scheduler, main
from hyperspy_mlspec.data import eels_map
from hyperspy_mlspec.engine import remote


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask_cli")
    path = folder / "map.hspy"
    eels_map((8, 8), n_channels=64, dose=20, random_state=3).save(path, chunks=(2, 8, 64))
    msa = folder / "one.msa"
    hs.signals.Signal1D(np.arange(64.0)).save(msa)
    return {"map": path, "msa": msa}


@pytest.fixture(scope="module")
def model(files, tmp_path_factory):
    s = hs.load(files["map"])
    dae = hyperspy_mlspec.DenoisingAutoencoder(epochs=2, random_state=0, show_progressbar=False)
    dae.fit(s.data.reshape(-1, 64))
    path = tmp_path_factory.mktemp("model") / "dae.mlspec"
    dae.save(path)
    return path


def test_every_subcommand_has_lazy_and_scheduler():
    parser = build_parser()
    commands = {"decompose": ["f.hspy", "-o", "out", "-k", "2"],
                "denoise": ["f.hspy", "-o", "out"], "anomaly": ["f.hspy", "-o", "out"],
                "train": ["f.hspy", "--model", "decomposition", "--out", "m.mlspec"],
                "pretrain": ["f.hspy", "--out", "m.mlspec"],
                "embed": ["m.mlspec", "f.hspy", "--out", "out"], "demo": []}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands) == set(sub.choices)  # a new subcommand must be listed here too
    for command, rest in commands.items():
        args = parser.parse_args([command, *rest, "--lazy", "--scheduler", "threads"])
        assert args.lazy and args.scheduler == "threads" and args.scheduler_timeout == 10.0
    p = argparse.ArgumentParser()  # the helper for new subcommands
    add_dask_options(p)
    assert p.parse_args([]).scheduler is None and not p.parse_args([]).lazy


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_local_schedulers_give_the_same_denoised_file(files, model, tmp_path, scheduler):
    out = tmp_path / scheduler
    assert main(["denoise", str(files["map"]), "-o", str(out), "--lazy", "--model", str(model),
                 "--scheduler", scheduler]) == 0
    eager = tmp_path / "eager"
    assert main(["denoise", str(files["map"]), "-o", str(eager), "--model", str(model)]) == 0
    got = hs.load(out / "map_denoised.hspy").data
    np.testing.assert_allclose(got, hs.load(eager / "map_denoised.hspy").data, rtol=1e-5,
                               atol=1e-5)


def test_unreachable_scheduler_is_a_clear_quick_error(files, tmp_path, capsys):
    t0 = time.perf_counter()
    code = main(["anomaly", str(files["map"]), "-o", str(tmp_path), "--lazy",
                 "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1"])
    assert code == 1 and time.perf_counter() - t0 < 20
    err = capsys.readouterr().err
    assert "cannot connect to the dask scheduler at tcp://127.0.0.1:9" in err
    assert "dask scheduler" in err and not list(tmp_path.iterdir())
    assert main(["anomaly", str(files["map"]), "-o", str(tmp_path), "--scheduler",
                 "nonsense"]) == 1
    assert "neither a scheduler address" in capsys.readouterr().err


def test_file_that_cannot_be_read_lazily(files, tmp_path, capsys):
    assert main(["decompose", str(files["msa"]), "-k", "2", "-o", str(tmp_path),
                 "--lazy"]) == 1
    assert "cannot be read lazily" in capsys.readouterr().err


def test_scheduler_address_runs_on_the_cluster(files, model, tmp_path):
    import distributed
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                  dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as cluster:
        out = tmp_path / "cluster"
        remote._CACHE.clear()
        builds = remote.n_builds
        assert main(["denoise", str(files["map"]), "-o", str(out), "--lazy", "--model",
                     str(model), "--scheduler", cluster.scheduler_address]) == 0
        prefixes = set(cluster.scheduler.task_prefixes)
    assert "hdf5-array" in prefixes, prefixes  # the file was read by the cluster's worker
    assert remote.n_builds > builds  # which rebuilt the model from its weights
    local = tmp_path / "local"
    assert main(["denoise", str(files["map"]), "-o", str(local), "--model", str(model)]) == 0
    np.testing.assert_allclose(hs.load(out / "map_denoised.hspy").data,
                               hs.load(local / "map_denoised.hspy").data, rtol=1e-5, atol=1e-5)


def test_dask_scheduler_restores_the_default():
    import dask

    before = dask.config.get("scheduler", None)
    with dask_scheduler("synchronous"):
        assert dask.config.get("scheduler") == "synchronous"
    assert dask.config.get("scheduler", None) == before


def test_demo_runs_the_autoencoders_lazily(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--lazy", "--scheduler", "synchronous",
                 "--out", str(out)]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "on a lazy (dask) copy of the map" in md
    results = json.loads((out / "results.json").read_text())
    errors = {m["name"]: m["poisson_error"] for m in results["methods"]}
    # streamed chunk by chunk, the autoencoder still beats PCA at equal K (as in memory)
    assert errors["AE (linear decoder)"] < errors["PCA (HyperSpy)"]
