"""device_bundle.py: one archive with what a lent GPU machine lacks to run sweeps, for benchmarks/on_device.sh.

    python3 benchmarks/device_bundle.py                          # .devicepkgs/site.tar.xz for the GPU image's
                                                                 # Python 3.12
    python3 benchmarks/device_bundle.py --python-version 3.11    # the same for this machine's Python (to try it here)

The GPU machine has no package index, and its tool carries at most 64 MiB of untracked files. Its image has torch,
numpy, pandas, pyarrow, matplotlib, scikit-learn, aiohttp, grpcio, protobuf, … but not Ray, Optuna, MLflow, pydantic
and what only they need. PACKAGES lists exactly those, at the versions this project's .venv resolved: each is
fetched as a wheel for the target Python (``pip download --no-deps --only-binary=:all:``), unpacked into one site
folder, stripped of what a sweep never loads (Ray's Java jars, RLlib, Serve, LLM and dashboard web app; MLflow's web
app; tests; __pycache__) and written as ONE archive ``<out>/site.tar.xz`` (untar it anywhere and put that folder first
on PYTHONPATH). Standard library only; needs network access to the package index here, nothing on the GPU machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (distribution, version, why it is here). The closure of ray[default,tune], optuna, mlflow and pydantic in .venv
# (pip freeze), minus what the GPU image already has (see on_device.sh). Left out on purpose: py-spy (ray[default]'s
# stack-trace *binary*, no Python module, only for the dashboard), psycopg[binary] (PostgreSQL tracking store on a
# cluster; a single machine logs to SQLite).
PACKAGES: list[tuple[str, str, str]] = [
    # --- the four the project imports
    ("ray", "2.60.0", "Ray Tune: the scheduler of every sweep (Tuner, ASHA, ConcurrencyLimiter, checkpoints)"),
    ("optuna", "5.0.0", "the searcher (SweepSearcher's study: ask-and-tell, samplers) and fANOVA importance"),
    (
        "mlflow",
        "3.17.2",
        "tracking: every metric, figure and checkpoint; the full package is the one with the SQL store",
    ),
    ("mlflow-skinny", "3.17.2", "mlflow's core (client, tracking API); mlflow requires it"),
    ("mlflow-tracing", "3.17.2", "mlflow's tracing part; mlflow and mlflow-skinny import it"),
    (
        "pydantic",
        "2.14.3",
        "search_spaces/schema.py validates sweep files with it; Ray, MLflow and FastAPI need it too",
    ),
    # --- pydantic's
    ("pydantic-core", "2.50.4", "pydantic's compiled core"),
    ("annotated-types", "0.8.0", "pydantic"),
    ("typing-inspection", "0.4.5", "pydantic"),
    # --- Ray's (core, [default] and [tune])
    ("jsonschema", "4.26.0", "ray (runtime_env and job validation)"),
    ("jsonschema-specifications", "2025.9.1", "jsonschema"),
    ("referencing", "0.37.0", "jsonschema"),
    ("rpds-py", "2026.9.1", "referencing (compiled)"),
    ("tensorboardX", "2.6.5", "ray[tune]: Tune's TensorBoard logger callback, on by default"),
    ("aiohttp-cors", "0.8.1", "ray[default]: the dashboard agent each node starts"),
    ("colorful", "0.5.8", "ray[default]: the status/CLI output"),
    ("opencensus", "0.11.4", "ray[default]: metrics export of the node agents"),
    ("opencensus-context", "0.1.3", "opencensus"),
    ("opentelemetry-api", "1.45.2", "ray[default] metrics; also mlflow-skinny's tracing"),
    ("opentelemetry-sdk", "1.45.2", "ray[default] metrics; mlflow-skinny's tracing"),
    ("opentelemetry-proto", "1.45.2", "ray[default] metrics; mlflow-skinny's tracing"),
    ("opentelemetry-exporter-prometheus", "0.66b2", "ray[default]: metrics exporter"),
    ("opentelemetry-semantic-conventions", "0.66b2", "opentelemetry-sdk"),
    ("smart-open", "9.0.2", "ray[default]: runtime_env package downloads"),
    ("virtualenv", "21.15.8", "ray[default]: runtime_env (imported by its plugins)"),
    ("distlib", "0.4.4", "virtualenv"),
    ("platformdirs", "4.14.7", "virtualenv"),
    ("python-discovery", "1.9.5", "virtualenv"),
    ("google-api-core", "2.44.0", "opencensus (ray[default])"),
    ("google-auth", "2.62.2", "google-api-core"),
    ("googleapis-common-protos", "1.76.0", "google-api-core; opentelemetry exporters"),
    ("proto-plus", "1.29.0", "google-api-core"),
    ("pyasn1", "0.6.5", "google-auth (via pyasn1-modules)"),
    ("pyasn1-modules", "0.4.2", "google-auth"),
    ("cryptography", "50.0.2", "google-auth; mlflow (secrets of its server)"),
    ("cffi", "2.1.1", "cryptography (compiled)"),
    ("pycparser", "3.12", "cffi"),
    ("cachetools", "7.3.2", "mlflow-skinny; google-auth"),
    # --- Optuna's
    ("alembic", "1.20.1", "optuna's RDB storage; mlflow's SQL store migrations"),
    ("mako", "1.4.3", "alembic"),
    (
        "sqlalchemy",
        "2.1.9",
        "mlflow's SQLite tracking store (trainables/mlflow_client.py hooks into it); optuna; alembic",
    ),
    ("colorlog", "6.12.0", "optuna's logging"),
    # --- MLflow's (full and skinny)
    ("databricks-sdk", "0.156.0", "mlflow-skinny (imported by its tracking utilities)"),
    ("fastapi", "0.165.0", "mlflow-skinny (server and tracing modules it imports)"),
    ("starlette", "1.10.0", "fastapi"),
    ("uvicorn", "0.54.0", "mlflow-skinny (server)"),
    ("gitpython", "3.2.1", "mlflow-skinny: records the code's git commit of each run"),
    ("gitdb", "4.0.12", "gitpython"),
    ("smmap", "5.0.3", "gitdb"),
    ("importlib-metadata", "9.1.0", "mlflow-skinny"),
    ("python-dotenv", "1.2.4", "mlflow-skinny"),
    ("sqlparse", "0.6.1", "mlflow-skinny: the search-filter parser (MlflowClient.search_runs)"),
    ("flask", "3.1.3", "mlflow (server modules the client side imports)"),
    ("flask-cors", "6.0.5", "mlflow"),
    ("blinker", "1.9.0", "flask"),
    ("itsdangerous", "2.2.0", "flask"),
    ("docker", "7.2.0", "mlflow (model serving helpers)"),
    ("graphene", "3.4.3", "mlflow (its server's GraphQL schema)"),
    ("graphql-core", "3.2.14", "graphene"),
    ("graphql-relay", "3.2.0", "graphene"),
    ("gunicorn", "26.2.0", "mlflow (server)"),
    ("huey", "3.5.4", "mlflow (server-side jobs)"),
    ("skops", "0.16.0", "mlflow (sklearn model format)"),
    ("prettytable", "3.18.0", "skops"),
    ("wcwidth", "0.9.4", "prettytable"),
]

# wheel tags the GPU image (glibc >= 2.28, x86_64) runs; most specific first
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_26_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]

# folders (relative to the site folder) a sweep never loads
STRIP_DIRS = [
    "ray/jars",  # Java workers (33 MB)
    "ray/rllib",  # reinforcement learning; tune/registry.py tolerates its absence
    "ray/serve",  # model serving
    "ray/llm",  # LLM serving / batch inference (needs vLLM anyway)
    "ray/dashboard/client/build",  # the dashboard's web app; cluster/local.py starts Ray without the dashboard
    "mlflow/server/js",  # MLflow's web app (the sweep logs; it does not serve the UI)
]
# ray.data must stay: ray.air (thus ray.tune) does `import ray.data` at import time.
STRIP_NAMES = {"__pycache__", "tests"}  # directories of these names, anywhere


def venv_versions(venv: Path) -> dict[str, str]:
    """{normalised name: version} of the distributions in ``venv`` (empty when it is absent)."""
    paths = sorted(str(p) for p in venv.glob("lib/python3*/site-packages"))
    if not paths:
        return {}
    return {norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=paths)}


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def download(python_version: str, dest: Path) -> list[Path]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    cmd += [f"{name}=={version}" for name, version, _ in PACKAGES]
    # the machine's pip constraints cap torch only; none of these, so they cannot conflict
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    got = {norm(w.name.split("-")[0]) for w in wheels}
    missing = [n for n, _, _ in PACKAGES if norm(n) not in got]
    if missing:
        sys.exit(f"no wheel for: {', '.join(missing)}")
    return wheels


def unpack(wheel: Path, site: Path) -> None:
    """Install ``wheel`` into ``site`` the way pip lays it out (no scripts): *.data/purelib|platlib merge into the
    root, other *.data parts are dropped; file modes (the executables in ray/core) are kept."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            target = site.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode & stat.S_IXUSR:
                target.chmod(0o755)


def tree_bytes(p: Path) -> int:
    """The bytes of the files in folder ``p`` (or of file ``p``)."""
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def strip(site: Path) -> int:
    """Remove what a sweep never loads; returns the bytes removed."""
    removed = 0
    for rel in STRIP_DIRS:
        p = site / rel
        if p.exists():
            removed += tree_bytes(p)
            shutil.rmtree(p)
    for p in sorted(site.rglob("*"), key=lambda q: -len(q.parts)):
        if p.is_dir() and p.name in STRIP_NAMES:
            removed += tree_bytes(p)
            shutil.rmtree(p)
        elif p.is_file() and p.suffix == ".pyc":
            removed += p.stat().st_size
            p.unlink()
    # google/ is a namespace package shared with the image's protobuf (google.protobuf):
    # an __init__.py here would hide it
    init = site / "google" / "__init__.py"
    if init.exists():
        init.unlink()
    return removed


def bundle(wheels: list[Path], archive: Path, label: str, preset: int = 6) -> tuple[int, int]:
    """``wheels`` unpacked into one site folder, stripped, written as ``archive`` (tar.xz, renamed into place when
    whole); returns (bytes unpacked, bytes stripped)."""
    with tempfile.TemporaryDirectory(prefix="device-site-") as tmp:
        site = Path(tmp)
        for w in wheels:
            unpack(w, site)
        unpacked = tree_bytes(site)
        removed = strip(site)
        (site / "DEVICE_BUNDLE.txt").write_text(f"{label}\n" + "".join(f"{w.name}\n" for w in wheels))
        partial = archive.with_name(archive.name + ".part")
        with tarfile.open(partial, "w:xz", preset=preset) as tar:
            for f in sorted(site.rglob("*")):
                if not f.is_dir():
                    tar.add(f, arcname=str(f.relative_to(site)), recursive=False)
        os.replace(partial, archive)
    return unpacked, removed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python-version", default="3.12", help="the target Python (default 3.12, the GPU image's)")
    p.add_argument("--out", default=str(ROOT / ".devicepkgs"), help="folder of the archive (default: .devicepkgs)")
    p.add_argument("--venv", default=str(ROOT / ".venv"), help="warn where this venv's versions differ from PACKAGES")
    p.add_argument("--preset", type=int, default=6, help="xz preset (default 6)")
    args = p.parse_args(argv)

    resolved = venv_versions(Path(args.venv))
    for name, version, _ in PACKAGES:
        have = resolved.get(norm(name))
        if resolved and have != version:
            print(f"warning: {args.venv} has {name} {have}, PACKAGES pins {version}", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "site.tar.xz"
    with tempfile.TemporaryDirectory(prefix="device-bundle-") as tmp:
        wheels = download(args.python_version, Path(tmp) / "wheels")
        unpacked, removed = bundle(wheels, archive, f"python {args.python_version}", args.preset)
    mib = archive.stat().st_size / 2**20
    print(
        f"{len(wheels)} wheels for Python {args.python_version}: {unpacked / 2**20:.0f} MiB unpacked, "
        f"{removed / 2**20:.0f} MiB stripped"
    )
    print(f"{archive}: {mib:.1f} MiB")
    if mib > 60:
        print("error: over 60 MiB; the device tool carries 64 MiB in all", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
