#!/usr/bin/env bash
# on_device.sh: run a command on a lent GPU machine that has torch & co. but not Ray, Optuna, MLflow or pydantic.
#
#   bash benchmarks/on_device.sh python3 -m orchestrator.cli run quickstart --smoke-test
#   bash benchmarks/on_device.sh python3 benchmarks/bench_sweep.py --packing 1 2 4
#
# Run it in the repository root with .devicepkgs/site.tar.xz there (built here by benchmarks/device_bundle.py and
# carried along as the ignored path ".devicepkgs"). It unpacks the archive into $SITE (default /tmp/site), puts it
# and the repository on PYTHONPATH (the project is not pip-installed there: use `python3 -m orchestrator.cli`, not
# `lslu-sweep`), checks the imports, then runs the command with its output also in $OUT/log.txt (OUT defaults to
# /tmp/out). Exits with the command's status.
set -uo pipefail

OUT="${OUT:-/tmp/out}"
SITE="${SITE:-/tmp/site}"
ARCHIVE="${ARCHIVE:-.devicepkgs/site.tar.xz}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"

{
  [ -f "$ARCHIVE" ] || { echo "on_device.sh: no $ARCHIVE (carry .devicepkgs)"; exit 3; }
  SUM="$(md5sum < "$ARCHIVE")"
  if [ "$(cat "$SITE/.archive.md5" 2>/dev/null)" != "$SUM" ]; then  # a warm machine keeps /tmp: unpack once per archive
    rm -rf "$SITE" && mkdir -p "$SITE"
    python3 - "$ARCHIVE" "$SITE" <<'EOF' || exit 3
import sys, tarfile, time
t = time.time()
with tarfile.open(sys.argv[1]) as tar:
    try:
        tar.extractall(sys.argv[2], filter="tar")  # keeps the executable bits of ray/core's binaries
    except TypeError:  # Python without extraction filters
        tar.extractall(sys.argv[2])
print(f"on_device.sh: unpacked {sys.argv[1]} into {sys.argv[2]} in {time.time() - t:.0f} s")
EOF
    echo "$SUM" > "$SITE/.archive.md5"
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  python3 --version
  # the bundle's requirements that the image's packages do not meet (a warning: most are harmless; an old protobuf is not)
  python3 - "$SITE" <<'EOF'
import sys, importlib.metadata as md
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn
EXTRAS = {"ray": ("default", "tune")}
OMITTED = {"py-spy", "psycopg", "psycopg-binary"}  # left out of the bundle on purpose (device_bundle.py)
bad = []
for d in md.distributions(path=[sys.argv[1]]):
    name = cn(d.metadata["Name"])
    for r in map(Requirement, d.requires or []):
        if cn(r.name) in OMITTED or (r.marker and not any(
                r.marker.evaluate({"extra": e}) for e in ("",) + EXTRAS.get(name, ()))):
            continue
        try:
            have = md.version(r.name)
        except md.PackageNotFoundError:
            have = None
        if have is None or (r.specifier and not r.specifier.contains(have, prereleases=True)):
            bad.append(f"{name} needs {r.name}{r.specifier}, has {have or 'none'}")
print("on_device.sh: requirements " + ("met" if not bad else "NOT met:\n  " + "\n  ".join(sorted(set(bad)))))
print("on_device.sh: image has " + ", ".join(f"{n} {md.version(n)}" for n in ("numpy", "protobuf", "grpcio", "pyarrow", "pandas")))
EOF
  python3 -c "import ray, ray.tune, optuna, mlflow, pydantic, torch; from ray.tune.search import ConcurrencyLimiter, Searcher
print('on_device.sh: imports ok: ray', ray.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__,
      'pydantic', pydantic.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 4
  echo "on_device.sh: \$ $*"
  "$@"
} 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
