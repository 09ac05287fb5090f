"""The ``hyperspy-mlspec`` command line: batch decomposition and the demo report.

A thin layer: it parses arguments, calls the library (``s.mlspec.decomposition``,
HyperSpy's ``decomposition``, :func:`hyperspy_mlspec.report.run_demo`) and reports one line
per file. Problems with one file (missing, unreadable, not a spectrum image) are reported in
one line and the other files are still processed; the exit status is then 1.

Examples
--------
.. code-block:: console

    $ hyperspy-mlspec decompose map1.hspy map2.zspy --method ae --components 4 --out results
    $ hyperspy-mlspec demo --out mlspec_report
    $ torchrun --standalone --nproc_per_node=2 -m hyperspy_mlspec train map.hspy \
          --model decomposition -k 4 --seed 0 --out model.mlspec
    $ hyperspy-mlspec pretrain 'lab_data/**/*.hspy' --out mae.mlspec
    $ hyperspy-mlspec embed mae.mlspec map1.hspy --out embeddings
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyperspy_mlspec._version import __version__

__all__ = ["add_dask_options", "build_parser", "dask_scheduler", "main"]


class CLIError(Exception):
    """A problem with one input, reported as a single line (no traceback)."""


# -- argument parsing -----------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_or_auto(text: str) -> int | str:
    """A positive integer or 'auto' (epochs, batch size, segments)."""
    if text == "auto":
        return "auto"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}") from None


def _position(text: str) -> float | str:
    """A signal-range end: a number in axis units, or text with units such as '0.6 keV'."""
    try:
        return float(text)
    except ValueError:
        return text


def _file_options(parser: argparse.ArgumentParser) -> None:
    """Options every per-file subcommand shares: inputs, output folder, --lazy,
    --scheduler, --seed."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="input files")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="DIR",
                        help="output folder (created if needed)")
    add_dask_options(parser)
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="random seed (reproducible results on CPU)")


LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")


def add_dask_options(parser: argparse.ArgumentParser, lazy: bool = True) -> None:
    """Add ``--lazy`` and ``--scheduler ADDRESS`` (plus ``--scheduler-timeout``) to a
    subcommand's parser.

    :func:`main` runs every handler inside :func:`dask_scheduler` for the parsed
    ``--scheduler``, so a subcommand only has to call this and pass ``args.lazy`` on to
    its loading code (e.g. :func:`hyperspy_mlspec.signals.load`).

    Parameters
    ----------
    parser
        The subcommand's parser.
    lazy
        Also add ``--lazy`` (False for commands that have their own).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_dask_options(p)
    >>> p.parse_args(["--lazy", "--scheduler", "tcp://10.0.0.5:8786"]).scheduler
    'tcp://10.0.0.5:8786'
    """
    if lazy:
        parser.add_argument("--lazy", action="store_true",
                            help="load lazily and stream the data chunk by chunk (for files "
                                 "larger than memory)")
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="dask scheduler for lazy work: the address of a dask.distributed scheduler "
             "(e.g. tcp://host:8786; workers must see the input files at the same paths), "
             f"or one of {', '.join(LOCAL_SCHEDULERS)} (default: dask's threads)")
    parser.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up connecting to --scheduler after this long "
                             "(default: 10)")


@contextlib.contextmanager
def dask_scheduler(address: str | None, timeout: float = 10.0):
    """Use a dask scheduler for the duration of a command.

    Parameters
    ----------
    address
        None (dask's default), ``"threads"``, ``"processes"``, ``"synchronous"``, or the
        address of a ``dask.distributed`` scheduler (``tcp://host:8786``, ``host:8786``): a
        client is connected for the duration and closed afterwards.
    timeout
        Seconds to wait for the connection.

    Yields
    ------
    distributed.Client or str or None

    Raises
    ------
    CLIError
        The address is malformed, ``distributed`` is missing, or the scheduler cannot be
        reached in time (the message says how to start one).

    Examples
    --------
    >>> with dask_scheduler("synchronous"):
    ...     pass
    """
    import dask

    if address is None:
        yield None
        return
    if address in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=address):
            yield address
        return
    if ":" not in address:
        raise CLIError(f"--scheduler {address!r} is neither a scheduler address "
                       f"(tcp://host:port) nor one of {', '.join(LOCAL_SCHEDULERS)}")
    try:
        from distributed import Client
    except ImportError:
        raise CLIError("--scheduler ADDRESS needs the 'distributed' package "
                       "(pip install distributed)") from None
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CLIError(
            f"cannot connect to the dask scheduler at {address} within {timeout:g} s "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}). "
            "Start one with 'dask scheduler' and 'dask worker ADDRESS', check the address "
            "and port, or use --scheduler threads.") from None
    try:
        with dask.config.set(scheduler=client):
            yield client
    finally:
        client.close()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hyperspy-mlspec`` (see ``hyperspy-mlspec --help``)."""
    parser = argparse.ArgumentParser(
        prog="hyperspy-mlspec",
        description="Machine learning (autoencoder decomposition) for HyperSpy spectrum "
                    "images (EELS, EDS, any signal with one spectral axis).",
        epilog="Run 'hyperspy-mlspec COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version",
                        version=f"hyperspy-mlspec (hyperspy_mlspec {__version__})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show HyperSpy's warnings and full tracebacks")
    parser.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                        help="CPU threads of torch and of numpy's BLAS (default: 1; the "
                             "small networks train fastest single-threaded, and several "
                             "threads slow down badly when other processes share the cores)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    dec = sub.add_parser(
        "decompose", help="decompose spectrum-image files (autoencoder or PCA)",
        description="Decompose each file HyperSpy can read (.hspy, .zspy, .msa, .dm3/.dm4, "
                    ".emd...) and write, for each, DIR/<name>/loadings.hspy, factors.hspy, "
                    "summary.json and, for --method ae, the model (model.mlspec, reload it "
                    "with hyperspy_mlspec.load_model).")
    dec.add_argument("--method", choices=("ae", "pca"), default="ae",
                     help="ae: autoencoder (s.mlspec.decomposition); pca: HyperSpy's SVD with "
                          "Poisson noise normalisation for non-negative data (default: ae)")
    dec.add_argument("-k", "--components", type=_positive_int, required=True, metavar="K",
                     help="number of components")
    dec.add_argument("--decoder", choices=("linear", "nonlinear"), default="nonlinear",
                     help="autoencoder decoder; 'linear' makes HyperSpy's "
                          "get_decomposition_model exact (default: nonlinear)")
    dec.add_argument("--epochs", type=_int_or_auto, default="auto", metavar="N|auto",
                     help="maximum training epochs of the autoencoder (default: auto)")
    dec.add_argument("--align", choices=("no", "auto", "yes"), default="no",
                     help="ae only: remove the energy drift before decomposing ('auto': when "
                          "significant); the loadings and factors then describe the aligned "
                          "spectra and the removed shift is written as shift.hspy "
                          "(default: no)")
    dec.add_argument("--signal-range", nargs=2, type=_position, metavar=("START", "END"),
                     help="use only this part of the spectral axis, in axis units "
                          "(e.g. 400 900) or with units (e.g. '0.6 keV' '9 keV')")
    _file_options(dec)
    dec.set_defaults(handler=_cmd_decompose)

    den = sub.add_parser(
        "denoise", help="denoise spectrum-image files with a denoising autoencoder",
        description="Denoise each file HyperSpy can read and write DIR/<name>_denoised.hspy. "
                    "With no --model, a DenoisingAutoencoder is trained on each file itself "
                    "(self-supervised, no clean data needed).")
    den.add_argument("--noise", choices=("poisson-split", "mask"), default="poisson-split",
                     help="self-supervised noise model (default: poisson-split, for counts)")
    den.add_argument("--model", type=Path, default=None, metavar="FILE.mlspec",
                     help="apply this saved DenoisingAutoencoder instead of training")
    den.add_argument("--save-models", action="store_true",
                     help="also save each trained model next to its output")
    den.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _file_options(den)
    den.set_defaults(handler=_cmd_denoise)

    ano = sub.add_parser(
        "anomaly", help="anomaly maps and anomalous-region spectra of spectrum-image files",
        description="For each file HyperSpy can read, write the per-pixel anomaly score "
                    "(reconstruction error), the anomalous regions and their mean spectra "
                    "into DIR (.hspy and .png).")
    ano.add_argument("--threshold", choices=("mad", "quantile", "pvalue"), default="mad",
                     help="how anomalous pixels are chosen (default: median + k MAD)")
    _file_options(ano)
    ano.set_defaults(handler=_cmd_anomaly)

    _add_mae_parsers(sub)

    demo = sub.add_parser(
        "demo", help="compare the autoencoder with PCA on built-in synthetic EELS data",
        description="Generate a synthetic EELS spectrum image with known noise-free truth, fit "
                    "the autoencoder (nonlinear and linear decoders) and HyperSpy's PCA with "
                    "the same number of components, and write an HTML report (DIR/index.html, "
                    "plus DIR/report.md and the figures as PNG files).")
    demo.add_argument("-o", "--out", type=Path, default=Path("mlspec_report"), metavar="DIR",
                      help="report folder (default: mlspec_report)")
    demo.add_argument("--quick", action="store_true",
                      help="a small map and few epochs: seconds instead of minutes")
    demo.add_argument("--seed", type=int, default=0, metavar="S",
                      help="seed of the data and of the autoencoders (default: 0)")
    add_dask_options(demo, lazy=False)
    demo.add_argument("--lazy", action="store_true",
                      help="run the autoencoders on a lazy (dask) copy of the map, chunk by "
                           "chunk, as on a file opened with hs.load(..., lazy=True)")
    demo.set_defaults(handler=_cmd_demo)
    _add_train_parser(sub)
    return parser


# -- decompose ------------------------------------------------------------------------------
def _load_one(path: Path, lazy: bool, verbose: bool = False, single_ok: bool = False):
    """Load a single 1-D-signal spectrum image (or spectrum, with ``single_ok``), or raise
    :class:`CLIError`."""
    from hyperspy_mlspec import signals

    if not path.exists():
        raise CLIError("no such file")
    if path.is_dir() and path.suffix != ".zspy":
        raise CLIError("is a folder, not a data file")
    hs_logger = logging.getLogger("hyperspy")
    level = hs_logger.level
    if not verbose:  # HyperSpy logs its own message for unreadable files; ours says it all
        hs_logger.setLevel(logging.CRITICAL)
    try:
        s = signals.load(path, lazy=lazy)
    except Exception as exc:  # readers raise many types; the message is what matters
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot read it: {msg}") from None
    finally:
        hs_logger.setLevel(level)
    if isinstance(s, list):
        raise CLIError(f"holds {len(s)} signals; save the spectrum image alone and retry")
    try:
        signals.check_signal(s)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if s.axes_manager.navigation_dimension == 0 and not single_ok:
        raise CLIError("holds a single spectrum; decomposition needs a spectrum image "
                       "(several spectra)")
    return s


def _signal_mask(s, signal_range) -> Any:
    """HyperSpy's signal_mask (True = excluded) for a signal range, or None."""
    import numpy as np

    from hyperspy_mlspec import signals

    if signal_range is None:
        return None
    channels = signals.signal_channels(s, None, signal_range)
    if channels is None:
        return None
    mask = np.ones(s.axes_manager.signal_axes[0].size, dtype=bool)
    mask[channels] = False
    return mask


def _is_nonnegative(s) -> bool:
    low = s.data.min()
    if hasattr(low, "compute"):
        low = low.compute()
    return bool(low >= 0)


def _as_list(values) -> list[float] | None:
    if values is None:
        return None
    return [float(v) for v in list(values)]


def _decompose_file(path: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    import numpy as np

    s = _load_one(path, args.lazy, args.verbose)
    k = args.components
    n_channels = s.axes_manager.signal_axes[0].size
    if k > n_channels:
        raise CLIError(f"--components {k} exceeds the {n_channels} channels of the signal")
    summary: dict[str, Any] = {
        "file": str(path), "method": args.method, "n_components": k, "lazy": args.lazy,
        "signal_range": None if args.signal_range is None else list(args.signal_range),
        "navigation_shape": list(s.axes_manager.navigation_shape),
        "n_channels": n_channels, "package": f"hyperspy_mlspec {__version__}",
    }
    t0 = time.perf_counter()
    model = shift = None
    if args.align != "no" and args.method != "ae":
        raise CLIError("--align needs --method ae (align the files first for PCA)")
    try:
        if args.method == "ae":
            align = {"no": False, "auto": "auto", "yes": True}[args.align]
            model, shift = s.mlspec.decomposition(
                n_components=k, decoder=args.decoder, epochs=args.epochs,
                random_state=args.seed, signal_range=args.signal_range, align=align,
                return_shift=True)
            summary.update(
                align=args.align,
                aligned=bool(shift.metadata.MLSpec.operation_0.used_for_alignment),
                decoder=args.decoder, epochs=args.epochs, seed=args.seed,
                history_length=len(model.history_), loss=model.loss_,
                normalization=model.normalization_, device=model.device_,
                explained_variance=_as_list(model.explained_variance_),
                explained_variance_ratio=_as_list(model.explained_variance_ratio_),
                final_train_loss=model.history_[-1]["train_loss"] if model.history_ else None,
                final_val_loss=model.history_[-1]["val_loss"] if model.history_ else None)
        else:
            poisson = _is_nonnegative(s)
            if not np.issubdtype(s.data.dtype, np.floating):
                s.change_dtype("float32")  # HyperSpy's SVD needs floats (our own copy)
            s.decomposition(algorithm="SVD", normalize_poissonian_noise=poisson,
                            output_dimension=k, signal_mask=_signal_mask(s, args.signal_range),
                            print_info=False)
            lr = s.learning_results
            summary.update(
                algorithm="SVD", normalize_poissonian_noise=poisson, history_length=None,
                explained_variance=_as_list(lr.explained_variance[:k])
                if lr.explained_variance is not None else None,
                explained_variance_ratio=_as_list(lr.explained_variance_ratio[:k])
                if lr.explained_variance_ratio is not None else None)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"decomposition failed: {exc}") from None
    summary["seconds"] = round(time.perf_counter() - t0, 3)

    out_dir.mkdir(parents=True, exist_ok=True)
    s.get_decomposition_loadings().save(out_dir / "loadings.hspy", overwrite=True)
    s.get_decomposition_factors().save(out_dir / "factors.hspy", overwrite=True)
    outputs = ["loadings.hspy", "factors.hspy"]
    if summary.get("aligned"):
        shift.save(out_dir / "shift.hspy", overwrite=True)
        outputs.append("shift.hspy")
    if model is not None:
        model.save(out_dir / "model.mlspec")
        outputs.append("model.mlspec")
    summary["outputs"] = outputs + ["summary.json"]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str),
                                          encoding="utf-8")
    return summary


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output folder names: the file stems, with a suffix where two files share one."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem or p.name or "signal"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n + 1}")
    return stems


def _cmd_decompose(args: argparse.Namespace) -> int:
    paths = [Path(f) for f in args.files]
    n_failed = 0
    for path, stem in zip(paths, _unique_stems(paths), strict=True):
        target = args.out / stem
        try:
            summary = _decompose_file(path, target, args)
        except CLIError as exc:
            n_failed += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
            continue
        except Exception as exc:
            if args.verbose:
                raise
            n_failed += 1
            print(f"error: {path}: {type(exc).__name__}: {exc} (rerun with --verbose for "
                  "the traceback)", file=sys.stderr)
            continue
        epochs = (f", {summary['history_length']} epochs"
                  if summary.get("history_length") is not None else "")
        print(f"ok: {path} -> {target} ({args.method}, K={args.components}{epochs}, "
              f"{summary['seconds']:.1f} s)")
    if n_failed:
        print(f"{n_failed} of {len(paths)} file(s) failed", file=sys.stderr)
        return 1
    return 0


# -- denoise and anomaly: per-file work lives in the library --------------------------------
def _run_files(label: str, run, args: argparse.Namespace) -> int:
    """Call ``run(path)`` (a library function returning one record per signal) for each file,
    reporting failures per file without stopping."""
    n_failed = 0
    for path in (Path(f) for f in args.files):
        try:
            records = run(path)
        except Exception as exc:
            if args.verbose:
                raise
            n_failed += 1
            print(f"error: {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        for rec in records:
            print(f"ok: {path} -> {label} {rec.get('output') or args.out}")
    if n_failed:
        print(f"{n_failed} of {len(args.files)} file(s) failed", file=sys.stderr)
        return 1
    return 0


def _cmd_denoise(args: argparse.Namespace) -> int:
    from hyperspy_mlspec.denoise import denoise_files

    params = {} if args.seed is None else {"random_state": args.seed}
    return _run_files("denoised", lambda p: denoise_files(
        [p], args.out, noise=args.noise, lazy=args.lazy, model=args.model,
        overwrite=args.overwrite, save_models=args.save_models, **params), args)


def _cmd_anomaly(args: argparse.Namespace) -> int:
    from hyperspy_mlspec.workflows.batch import anomaly_files

    params = {} if args.seed is None else {"random_state": args.seed}
    return _run_files("anomaly maps in", lambda p: anomaly_files(
        [p], args.out, lazy=args.lazy, threshold=args.threshold, **params), args)


# -- demo -----------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # a command-line run never opens windows
    from hyperspy_mlspec.report import DemoConfig, run_demo

    config = (DemoConfig.quick(seed=args.seed, lazy=args.lazy) if args.quick
              else DemoConfig(seed=args.seed, lazy=args.lazy))
    try:
        index = run_demo(args.out, config=config, log=print)
    except OSError as exc:
        print(f"error: cannot write the report to {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"Report written to {index.resolve()}")
    return 0


# -- train (one model from several files; several processes under torchrun) ---------------
def _add_train_parser(sub) -> None:
    tr = sub.add_parser(
        "train", help="train one model on one or more files (multi-process under torchrun)",
        description="Train one model on the spectra of all FILEs (concatenated as rows; they "
                    "must share the signal axis) and save it to MODEL.mlspec (reload it with "
                    "hyperspy_mlspec.load_model). Run it plainly, or under torchrun for "
                    "data-parallel training on several processes or machines, e.g. "
                    "'torchrun --standalone --nproc_per_node=2 -m hyperspy_mlspec train ...': "
                    "the result equals a single-process run (up to float rounding for "
                    "--model decomposition); rank 0 shows progress and writes the file.")
    tr.add_argument("--model", choices=("decomposition", "denoise"), required=True,
                    help="decomposition: AutoencoderDecomposition; denoise: "
                         "DenoisingAutoencoder (self-supervised)")
    tr.add_argument("-k", "--n-components", "--components", dest="components",
                    type=_positive_int, default=4, metavar="K",
                    help="latent dimensions of --model decomposition (default: 4)")
    tr.add_argument("--decoder", choices=("linear", "nonlinear"), default="nonlinear",
                    help="decoder of --model decomposition (default: nonlinear)")
    tr.add_argument("--noise", choices=("poisson-split", "mask"), default="poisson-split",
                    help="self-supervised noise model of --model denoise "
                         "(default: poisson-split)")
    tr.add_argument("--epochs", type=_int_or_auto, default="auto", metavar="N|auto",
                    help="maximum training epochs (default: auto)")
    tr.add_argument("--batch-size", type=_int_or_auto, default="auto", metavar="N|auto",
                    help="spectra per optimiser step, over all processes together "
                         "(default: auto)")
    tr.add_argument("--learning-rate", type=float, default=None, metavar="LR",
                    help="Adam learning rate (default: the model's)")
    tr.add_argument("--signal-range", nargs=2, type=_position, metavar=("START", "END"),
                    help="use only this part of the spectral axis, in axis units or with "
                         "units (e.g. '0.6 keV' '9 keV')")
    tr.add_argument("--device", default="auto", metavar="DEVICE",
                    help="auto (CUDA if available), cpu, cuda... (default: auto); under "
                         "torchrun each process uses GPU LOCAL_RANK")
    tr.add_argument("--backend", default=None, metavar="NAME",
                    help="torch.distributed backend under torchrun (default: gloo on the "
                         "CPU, cpu:gloo,cuda:nccl with CUDA)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    _file_options(tr)
    for action in tr._actions:  # --out names the model file here, not a folder
        if action.dest == "out":
            action.metavar = "MODEL.mlspec"
            action.help = "model file to write (parent folders are created)"
    tr.set_defaults(handler=_cmd_train)


def _training_rows(args: argparse.Namespace):
    """Rows of every file, concatenated, and their signal axis; :class:`CLIError` if a file
    cannot be used or the files do not share the signal axis."""
    import numpy as np

    from hyperspy_mlspec import signals

    tables = []
    for path in (Path(f) for f in args.files):
        try:
            s = _load_one(path, args.lazy, args.verbose)
            t = signals.table(s, signal_range=args.signal_range)
        except CLIError as exc:
            raise CLIError(f"{path}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{path}: {exc}") from None
        if tables:
            first, ax = tables[0][1].axis, t.axis
            same = (ax.size == first.size and ax.units == first.units
                    and np.allclose(ax.values, first.values, rtol=1e-6,
                                    atol=1e-9 * float(np.ptp(first.values) or 1.0)))
            if not same:
                raise CLIError(
                    f"{path}: its signal axis ({ax.size} channels, {ax.values[0]:g} to "
                    f"{ax.values[-1]:g} {ax.units or ''}) differs from that of "
                    f"{tables[0][0]} ({first.size} channels, {first.values[0]:g} to "
                    f"{first.values[-1]:g} {first.units or ''}); the files are concatenated as "
                    "rows and must share the signal axis: resample them onto one axis (e.g. "
                    "HyperSpy's interpolate_on_axis) or train on them separately")
        tables.append((path, t))
    rows = [t.rows for _, t in tables]
    if len(rows) == 1:
        return rows[0], tables[0][1].axis
    if args.lazy:
        import dask.array as da

        return da.concatenate(rows, axis=0), tables[0][1].axis
    return np.concatenate(rows, axis=0), tables[0][1].axis


def _cmd_train(args: argparse.Namespace) -> int:
    from hyperspy_mlspec.engine import distributed

    if args.out.exists() and not args.overwrite:
        if distributed.is_main_process():
            print(f"error: {args.out} exists; use --overwrite to replace it", file=sys.stderr)
        return 1
    prefix = ""
    try:
        # on an error the process leaves without waiting for the others (torchrun then
        # stops them); waiting could pair its barrier with their training collectives
        with distributed.launched(backend=args.backend, device=args.device) as group:
            prefix = f"rank {group.rank}: " if group.active else ""
            summary = _train_model(args, group)
    except (CLIError, RuntimeError) as exc:  # RuntimeError: torchrun environment/rendezvous
        print(f"error: {prefix}{exc}", file=sys.stderr)
        return 1
    if summary:
        print(summary)
    return 0


def _train_model(args: argparse.Namespace, group) -> str | None:
    """Fit and (rank 0) save the model; return rank 0's one-line summary."""
    t0 = time.perf_counter()
    X, axis = _training_rows(args)
    params: dict[str, Any] = {"epochs": args.epochs, "batch_size": args.batch_size,
                              "device": args.device, "random_state": args.seed}
    if args.learning_rate is not None:
        params["learning_rate"] = args.learning_rate
    if args.model == "decomposition":
        from hyperspy_mlspec.estimators import AutoencoderDecomposition

        est = AutoencoderDecomposition(n_components=args.components, decoder=args.decoder,
                                       **params)
    else:
        from hyperspy_mlspec.estimators import DenoisingAutoencoder

        est = DenoisingAutoencoder(noise=args.noise, **params)
    try:
        est.fit(X)
    except ValueError as exc:
        raise CLIError(f"training failed: {exc}") from None
    est.signal_axis_ = axis.to_dict()
    if not group.is_main:
        return None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    est.save(args.out)
    last = est.history_[-1] if est.history_ else {}
    val = last.get("val_loss")
    return (f"ok: {len(args.files)} file(s), {X.shape[0]} spectra -> {args.out} "
            f"({args.model}, {len(est.history_)} epochs, train loss "
            f"{last.get('train_loss', float('nan')):.6g}"
            + (f", val loss {val:.6g}" if val is not None else "")
            + f", {group.world_size} process(es), {time.perf_counter() - t0:.1f} s)")


# -- masked autoencoder: pretrain and embed -------------------------------------------------
def _add_mae_parsers(sub) -> None:
    pre = sub.add_parser(
        "pretrain", help="pretrain a masked autoencoder on many spectrum files",
        description="Pretrain a MaskedAutoencoder on every spectrum of the given files and "
                    "globs (any channel count and calibration: each spectrum is resampled "
                    "onto --channels bins over its own range, or over --signal-range) and "
                    "save it as a model file (reload it with hyperspy_mlspec.load_model).")
    pre.add_argument("files", nargs="+", metavar="FILE_OR_GLOB",
                     help="input files or quoted globs such as 'data/**/*.hspy'")
    pre.add_argument("-o", "--out", type=Path, required=True, metavar="MODEL.mlspec",
                     help="model file to write")
    pre.add_argument("--epochs", type=_int_or_auto, default="auto", metavar="N|auto",
                     help="maximum passes over all spectra (default: auto)")
    pre.add_argument("--channels", type=_int_or_auto, default="auto", metavar="N|auto",
                     help="bins every spectrum is resampled onto (default: auto, the "
                          "largest channel count of the files, at most 4096, rounded to "
                          "whole patches)")
    pre.add_argument("--patch-size", type=_int_or_auto, default="auto", metavar="N|auto",
                     help="bins per patch; must divide --channels (default: auto, about "
                          "32 patches)")
    pre.add_argument("--batch-size", type=_int_or_auto, default="auto", metavar="N|auto",
                     help="spectra per minibatch (default: auto)")
    pre.add_argument("--pooling", choices=("segments", "mean"), default="segments",
                     help="embedding: encoder tokens averaged per energy segment and "
                          "concatenated (keeps where features are), or over all patches "
                          "(default: segments)")
    pre.add_argument("--segments", type=_int_or_auto, default="auto", metavar="N|auto",
                     help="segments of --pooling segments (default: auto, 8)")
    pre.add_argument("--signal-range", nargs=2, type=_position, metavar=("START", "END"),
                     help="common range, e.g. '400 eV' '900 eV' (default: each spectrum "
                          "over its own range)")
    pre.add_argument("--checkpoint", type=Path, default=None, metavar="FILE.mlspec",
                     help="save a checkpoint after every epoch")
    pre.add_argument("--resume", action="store_true",
                     help="continue from --checkpoint when it exists")
    pre.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: auto)")
    pre.add_argument("--lazy", action="store_true",
                     help="stream the files chunk by chunk instead of loading each whole "
                          "(for pools larger than memory)")
    add_dask_options(pre, lazy=False)
    pre.add_argument("--seed", type=int, default=None, metavar="S",
                     help="random seed (reproducible results on CPU)")
    pre.set_defaults(handler=_cmd_pretrain)

    emb = sub.add_parser(
        "embed", help="embed spectrum files with a pretrained masked autoencoder",
        description="Write DIR/<name>_embedding.hspy for each file: the MaskedAutoencoder "
                    "embedding of every pixel (navigation axes kept, signal axis "
                    "'embedding').")
    emb.add_argument("model", type=Path, metavar="MODEL.mlspec", help="a saved MaskedAutoencoder")
    _file_options(emb)
    emb.set_defaults(handler=_cmd_embed)


def _expand(patterns: Sequence[str]) -> list[Path]:
    """Files named by paths or globs (a glob matching nothing is an error)."""
    import glob

    paths: list[Path] = []
    for pattern in patterns:
        if set("*?[") & set(pattern):
            found = sorted(glob.glob(pattern, recursive=True))
            if not found:
                raise CLIError(f"{pattern}: no file matches")
            paths.extend(Path(p) for p in found)
        else:
            paths.append(Path(pattern))
    return paths


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from hyperspy_mlspec import MaskedAutoencoder

    if args.resume and args.checkpoint is None:
        print("error: --resume needs --checkpoint FILE", file=sys.stderr)
        return 2
    try:
        paths = _expand(args.files)
        signals = []
        for path in paths:
            try:
                signals.append(_load_one(path, args.lazy, args.verbose, single_ok=True))
            except CLIError as exc:
                raise CLIError(f"{path}: {exc}") from None
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mae = MaskedAutoencoder(args.channels, args.patch_size, epochs=args.epochs,
                            batch_size=args.batch_size, signal_range=args.signal_range,
                            pooling=args.pooling, n_segments=args.segments,
                            checkpoint=args.checkpoint, device=args.device,
                            random_state=args.seed)
    t0 = time.perf_counter()
    from hyperspy_mlspec.engine import distributed

    try:
        # under torchrun the processes train data-parallel in the one loop; rank 0 saves
        with distributed.launched(device=args.device) as group:
            mae.fit(signals, resume=args.resume)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not group.is_main:
        return 0
    for path, rec in zip(paths, mae.pool_, strict=True):
        note = "resampled" if rec["resampled"] else "as is"
        print(f"  {path}: {rec['n_spectra']} spectra, {rec['n_channels']} channels ({note})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mae.save(args.out)
    n = sum(r["n_spectra"] for r in mae.pool_)
    last = mae.history_[-1]["train_loss"] if mae.history_ else float("nan")
    print(f"ok: pretrained on {n} spectra from {len(paths)} file(s) -> {args.out} "
          f"({mae.n_epochs_} epochs, loss {last:.4g}, {time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from hyperspy_mlspec import load_model

    try:
        model = load_model(args.model)
        if type(model).__name__ != "MaskedAutoencoder":
            raise ValueError(f"{args.model} holds a {type(model).__name__}, not a "
                             "MaskedAutoencoder")
        paths = _expand(args.files)
    except (ValueError, FileNotFoundError, CLIError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    def run(path: Path) -> list[dict]:
        s = _load_one(path, args.lazy, args.verbose, single_ok=True)
        out = model.embed(s)
        target = args.out / f"{path.stem}_embedding.hspy"
        out.save(target, overwrite=True)
        return [{"output": target}]
    args.files = [str(p) for p in paths]
    return _run_files("embedding", lambda p: run(Path(p)), args)


# -- entry point ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hyperspy-mlspec`` with ``argv`` (default: ``sys.argv[1:]``).

    Parameters
    ----------
    argv
        Command-line arguments, without the program name.

    Returns
    -------
    int
        Exit status: 0 on success, 1 if a file or the report failed, 2 for usage errors
        (including no command).

    Examples
    --------
    >>> main(["decompose", "map.hspy", "--method", "pca", "-k", "4", "--out", "res"])
    ... # doctest: +SKIP
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help()
        return 2
    import hyperspy.api  # noqa: F401  (sets HyperSpy's log level: do it before we change it)

    hs_logger = logging.getLogger("hyperspy")
    level = hs_logger.level
    with warnings.catch_warnings():
        if not args.verbose:
            hs_logger.setLevel(logging.ERROR)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="hyperspy")
            try:
                from numpy.exceptions import VisibleDeprecationWarning
            except ImportError:  # numpy < 1.25
                from numpy import VisibleDeprecationWarning
            warnings.simplefilter("ignore", VisibleDeprecationWarning)
        import torch
        from threadpoolctl import threadpool_limits  # installed with scikit-learn

        n_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            with threadpool_limits(limits=args.threads), \
                    dask_scheduler(getattr(args, "scheduler", None),
                                   getattr(args, "scheduler_timeout", 10.0)):
                return args.handler(args)  # numpy's BLAS (PCA) limited alike
        except CLIError as exc:  # the scheduler could not be used: nothing was run
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            hs_logger.setLevel(level)
            torch.set_num_threads(n_threads)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
