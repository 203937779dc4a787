"""``lslu-sweep``: run, validate and resume sweeps.

    lslu-sweep run search_spaces/quickstart.yaml [--set KEY=VALUE …] [--smoke-test] [--tracking-uri URI] [--storage DIR]
                   [--address ADDR] [--optuna-storage URL]
    lslu-sweep validate FILE [--set KEY=VALUE …] [--smoke-test]
    lslu-sweep resume NAME [--storage DIR] [--tracking-uri URI] [--address ADDR]
    lslu-sweep report NAME [--tracking-uri URI]
    lslu-sweep export RUN_OR_SWEEP [--format pt2|onnx] [--output PATH] [--tracking-uri URI]
    lslu-sweep sites MODEL [--policy P] [--cifar-stem]
    lslu-sweep models [PATTERN]
    lslu-sweep presets
    lslu-sweep ui [--tracking-uri URI] [--port P]

A bad sweep file is reported as ``FILE: key.path: what was expected``, one line per error (all of them at once),
with exit code 2, before Ray or MLflow start. So is a cluster that cannot run the sweep as asked (``--tracking-uri: …``,
``--storage: …``): a local tracking store on a multi-node cluster, a storage path or server some node cannot reach.
Values that do nothing (LSLU with n = 0, an empty space) are warnings: ``warning: FILE: key.path: …``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from cluster.preflight import ClusterError
from cluster.local import prepare_env
from cluster.ui_server import DEFAULT_PORT, UiError
from search_spaces.oneshot import describe_search
from search_spaces.schema import SpecError, SpecErrors, list_presets, load_sweep

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports Ctrl+C


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lslu-sweep", description="Distributed sweeps for learnable activation functions.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep file (or a preset from search_spaces/ by name)")
    run.add_argument("file")
    _overrides(run)
    run.add_argument(
        "--smoke-test", action="store_true", help="same searcher and space, shrunk: digits, <= 4 trials, <= 2 epochs"
    )
    _common(run)
    run.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="Optuna RDB storage of the sweep's study, named after the sweep's run (sqlite:///optuna.db, "
        "postgresql://USER:PASSWORD@HOST:5432/DB) or 'memory' (default: optuna.db beside a local "
        "tracking store; in memory with a tracking server); resume keeps using it",
    )

    val = sub.add_parser("validate", help="check a sweep file without running it")
    val.add_argument("file")
    _overrides(val)
    val.add_argument("--smoke-test", action="store_true", help="validate and describe the smoke form run would use")

    sites = sub.add_parser("sites", help="print a model's activation sites and which ones a policy selects")
    sites.add_argument("model")
    sites.add_argument(
        "--policy",
        default="all",
        help="e.g. downsampling, stages:1,3, last_k:4, mask:0101…, paths:layer4.* (default: all)",
    )
    sites.add_argument("--cifar-stem", action="store_true", help="the model with its 3×3 stride-1 stem")

    models = sub.add_parser(
        "models",
        help="list the model names `model:` accepts: the project's and timm's (besides "
        "an import path package.module:factory)",
    )
    models.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="an fnmatch pattern, e.g. 'convnext*', or a part of a name (default: all)",
    )

    sub.add_parser("presets", help="list the sweep files in search_spaces/ that run by name (lslu-sweep run NAME)")

    res = sub.add_parser(
        "resume", help="continue an interrupted sweep (by experiment name, or sweep name for its newest)"
    )
    res.add_argument("name")
    _common(res)

    rep = sub.add_parser(
        "report",
        help="the paper-style table of a finished sweep (grouped, mean ± std over seeds), "
        "printed and logged to its parent run",
    )
    rep.add_argument(
        "name", help="a sweep name (its newest finished run) or a sweep run / Tune experiment name, <sweep>-<date>"
    )
    _tracking_uri(rep)

    exp = sub.add_parser(
        "export",
        help="write a trial's deploy form (fused) as torch.export .pt2 or ONNX, checked "
        "against the trained model's output",
    )
    exp.add_argument(
        "run",
        metavar="RUN_OR_SWEEP",
        help="a trial's run id, or a sweep (run id, <sweep>-<date> or sweep name) for its best trial",
    )
    exp.add_argument(
        "--format",
        default="pt2",
        choices=["pt2", "onnx"],
        help="pt2: torch.export (default); onnx: needs the onnx extra (pip install 'lslu-sweep[onnx]')",
    )
    exp.add_argument("--output", help="the file to write (default: <trial run name>.<format>)")
    _tracking_uri(exp)

    ui = sub.add_parser(
        "ui", help="serve the MLflow UI on the tracking store (127.0.0.1) and print the newest sweep's links"
    )
    _tracking_uri(ui)
    ui.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default: {DEFAULT_PORT}; 0 picks a free one)",
    )
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lslu-sweep")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the sweep file (dotted, e.g. trial.epochs=2; the value is YAML); repeatable",
    )


def _tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")


def _common(p: argparse.ArgumentParser) -> None:
    _tracking_uri(p)
    p.add_argument(
        "--storage",
        help="Ray Tune storage path, shared by every node on a cluster: a directory or "
        "s3://… / gs://… (default: ./ray_results)",
    )
    p.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")


class SitesError(ValueError):
    pass


def sites_table(model_name: str, policy: str, cifar_stem: bool = False) -> str:
    """The site table of ``model_name`` with the sites ``policy`` selects marked, and the mask to copy."""
    import torch

    from trainables.insertion import format_site_table, functional_note, mask_of, sites_for, trace_sites
    from trainables.models import build_model
    from trainables.policy import Policy

    note = []
    try:
        with torch.device("meta"):  # the module graph is enough: nothing is allocated
            model = build_model(model_name, num_classes=1000, cifar_stem=cifar_stem)
        trace = trace_sites(model)
        sites = trace.sites
        selected = Policy.parse(policy).select(sites)
    except ValueError as exc:
        raise SitesError(str(exc)) from None
    try:  # what LSLU gets: `all` is every eligible site; an ineligible site selected is refused in a sweep
        selected = sites_for(sites, policy, "lslu")
    except ValueError as exc:
        note = [f"note: {exc}"]
    mask = mask_of(sites, selected)
    return "\n".join(
        [
            format_site_table(sites, mask, "selected"),
            f"{model_name}: {len(sites)} sites; {policy} selects {mask.count('1')}",
            f"mask: {mask}",
            functional_note(trace),
            *note,
        ]
    )


def models_listing(pattern: str = "*") -> str:
    """The project's model names and timm's that match the fnmatch ``pattern``, one block each; a pattern without
    wildcards matches where it appears in a name (``res`` as ``*res*``)."""
    import fnmatch

    pattern = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"

    from trainables.models import list_models
    from trainables.models.external import timm_names

    ours = [m for m in list_models() if fnmatch.fnmatch(m, pattern)]
    theirs = [m for m in timm_names() if fnmatch.fnmatch(m, pattern) and m not in ours]
    lines = [
        f"project models matching {pattern!r} ({len(ours)}):",
        *(f"  {m}" for m in ours),
        f"timm models matching {pattern!r} ({len(theirs)}):",
        *(f"  {m}" for m in theirs),
        "any other network: model: package.module:factory (e.g. torchvision.models:resnet18)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prepare_env()  # before the driver imports Ray
    if args.command == "ui":
        from orchestrator.ui import serve  # MLflow loads only when needed

        try:
            return serve(args.tracking_uri, args.port)
        except UiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.command == "report":
        return _report(args.name, args.tracking_uri)
    if args.command == "export":
        return _export(args.run, args.format, args.output, args.tracking_uri)
    try:
        if args.command == "validate":
            _validate(args.file, args.overrides, args.smoke_test)
            return 0
        if args.command == "models":
            print(models_listing(args.pattern))
            return 0
        if args.command == "presets":
            presets = list_presets()
            width = max(len(name) for name, _ in presets)
            print("\n".join(f"{name:<{width}}  {what}" for name, what in presets))
            print("run one with: lslu-sweep run NAME [--smoke-test]; its file: search_spaces/NAME.yaml")
            return 0
        if args.command == "sites":
            print(sites_table(args.model, args.policy, args.cifar_stem))
            return 0
        if args.command == "run":
            sweep = load_sweep(args.file, args.overrides)  # run_sweep says its warnings
            from orchestrator.driver import run_sweep  # Ray and MLflow load only past validation

            outcome = run_sweep(
                sweep,
                tracking_uri=args.tracking_uri,
                storage=args.storage,
                address=args.address,
                smoke_test=args.smoke_test,
                optuna_storage=args.optuna_storage,
            )
        else:
            from orchestrator.driver import resume_sweep

            outcome = resume_sweep(
                args.name, storage=args.storage, tracking_uri=args.tracking_uri, address=args.address
            )
    except (SpecError, SitesError, FileNotFoundError, ClusterError) as exc:  # bad input, found before any trial ran
        for error in exc.errors if isinstance(exc, SpecErrors) else [exc]:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 0 if outcome.best else 1


def _validate(file: str, overrides: list[str], smoke_test: bool) -> None:
    """``lslu-sweep validate``: the file's warnings, then what the sweep runs; with ``smoke_test``, its smoke form as
    ``run --smoke-test`` runs it (shrunk after the warnings, its data not checked: it trains on digits) and the trial
    values the smoke form changes."""
    sweep = load_sweep(file, overrides)
    if not smoke_test:
        sweep.check_data()
    from search_spaces.sweep_warnings import warning_lines  # past validation, which loaded torch already

    for line in warning_lines(sweep):  # the file's, as run says them (before it shrinks a smoke test)
        print(line, file=sys.stderr)
    full, sweep = sweep, sweep.shrunk() if smoke_test else sweep
    objectives = ", ".join(f"{m} ({mode})" for m, mode in sweep.objectives)
    print(
        f"{sweep.file}: ok{', as a smoke test' if smoke_test else ''} ({describe_search(sweep)}, "
        f"{objectives}, searching {', '.join(sweep.spec.space) or 'nothing'}"
        + (f"; the mask spans {sweep.site_count} sites" if sweep.site_count else "")
        + ")"
    )
    if smoke_test:
        was, now = full.base.to_dict(), sweep.base.to_dict()
        from search_spaces.smoke import SMOKE_CPU

        changed = ", ".join(f"{k} {now[k]!r} (was {was[k]!r})" for k in now if now[k] != was[k])
        print(
            f"smoke test: {changed or 'the trial values as the file gives them'}; each trial on at most "
            f"{SMOKE_CPU:g} CPU, and a GPU only where the machine it runs on has one"
        )


def _report(name: str, tracking_uri: str | None) -> int:
    from cluster.tracking import resolve_tracking_uri
    from orchestrator.report import ReportError, report_sweep  # MLflow loads only when needed

    try:
        print(report_sweep(name, resolve_tracking_uri(tracking_uri)))
    except (ReportError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _export(name: str, fmt: str, output: str | None, tracking_uri: str | None) -> int:
    from cluster.tracking import resolve_tracking_uri
    from orchestrator.export import TOLERANCE, ExportError, export_run, trial_run
    from trainables.mlflow_client import mlflow_client

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():  # not an empty new store
        print(
            f"error: no MLflow store at {uri[len('sqlite:///') :]}; name the sweeps' store with --tracking-uri",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        client = mlflow_client(uri)
        run = trial_run(client, name, uri)
        path, diff = export_run(client, run, fmt, output)
    except (ExportError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ok = diff <= TOLERANCE
    print(
        f"wrote {path}: the deploy form of run {run.info.run_id} ({run.info.run_name}), input (N, "
        f"{run.data.tags.get('input_shape', '?').replace('x', ', ')}) float32; max abs difference from "
        f"the trained model's output {diff:.3g} ({'within' if ok else 'ABOVE'} the tolerance {TOLERANCE:g})"
    )
    return 0 if ok else 1


def console_main() -> int:
    """The ``lslu-sweep`` program: ``main``, then every object left is frozen, so that the interpreter's last
    collection at exit does not walk all of torch's, Ray's and MLflow's objects one by one (it took seconds a sweep,
    benchmarks/README.md); the operating system frees them. Not in ``main``, which tests call in one process.
    The working directory is importable, as ``python -m`` makes it (``lslu-sweep sites mypkg.nets:build`` in the
    folder that holds ``mypkg``; the workers get the user's code through the sweep file's ``runtime_env``)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        code = main()
    except BrokenPipeError:  # `lslu-sweep models | head` stopped reading: quiet, as Python's docs on SIGPIPE do it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
