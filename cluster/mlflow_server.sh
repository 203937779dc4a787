#!/usr/bin/env bash
# An MLflow tracking server for sweeps on a cluster: PostgreSQL backend, artifacts proxied by the server.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://USER:PASSWORD@DBHOST:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/mlflow \
#   cluster/mlflow_server.sh --host 0.0.0.0
#
# then, from the driver:  lslu-sweep run FILE --address HEAD:6379 --tracking-uri http://THIS_HOST:5000
#
# Options (each also an environment variable; the command line wins):
#   --backend-store-uri URI      MLFLOW_BACKEND_STORE_URI      required: postgresql://USER:PASSWORD@HOST:PORT/DB
#   --artifacts-destination URI  MLFLOW_ARTIFACTS_DESTINATION  where the server keeps artifacts: a bucket or a
#                                                              directory (default: ./mlartifacts)
#   --host HOST                  MLFLOW_HOST                   default 127.0.0.1: this machine only; 0.0.0.0 for a cluster
#   --port PORT                  MLFLOW_PORT                   default 5000
#   --workers N                  MLFLOW_WORKERS                default 1
#   --allowed-hosts HOSTS        MLFLOW_SERVER_ALLOWED_HOSTS   Host headers the server accepts (MLflow's default: localhost
#                                                              and private IPs); list a DNS name the nodes use, with its
#                                                              port: mlflow.internal:5000,localhost:*
# Anything after `--` goes to `mlflow server` as it is. Keep the password out of shell history: put the URI
# in an environment file readable only by you, or use PostgreSQL's ~/.pgpass and leave the password out.
set -euo pipefail

backend=${MLFLOW_BACKEND_STORE_URI:-}
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-./mlartifacts}
host=${MLFLOW_HOST:-127.0.0.1}
port=${MLFLOW_PORT:-5000}
workers=${MLFLOW_WORKERS:-1}
allowed=${MLFLOW_SERVER_ALLOWED_HOSTS:-}
extra=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n $2 ]] || { echo "mlflow_server.sh: $1 needs a value" >&2; exit 2; }; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --backend-store-uri) need "$@"; backend=$2; shift 2 ;;
        --artifacts-destination) need "$@"; artifacts=$2; shift 2 ;;
        --host) need "$@"; host=$2; shift 2 ;;
        --port) need "$@"; port=$2; shift 2 ;;
        --workers) need "$@"; workers=$2; shift 2 ;;
        --allowed-hosts) need "$@"; allowed=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "mlflow_server.sh: unknown option $1 (see --help; pass mlflow server's own options after --)" >&2; exit 2 ;;
    esac
done

case $backend in
    postgresql://*|postgresql+*://*) ;;
    "") echo "mlflow_server.sh: no backend store: set MLFLOW_BACKEND_STORE_URI (or --backend-store-uri) to" \
             "postgresql://USER:PASSWORD@DBHOST:5432/DBNAME" >&2; exit 2 ;;
    *) echo "mlflow_server.sh: the backend store must be PostgreSQL (postgresql://…), got ${backend%%:*}://…;" \
            "trials on many nodes write at once, which a SQLite file or MLflow's file store does not take" >&2; exit 2 ;;
esac

# The mlflow of this checkout's venv when there is one, else the one on PATH.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mlflow=${MLFLOW_BIN:-}
if [[ -z $mlflow ]]; then
    if [[ -x $here/../.venv/bin/mlflow ]]; then mlflow=$here/../.venv/bin/mlflow; else mlflow=$(command -v mlflow || true); fi
fi
[[ -n $mlflow ]] || { echo "mlflow_server.sh: no mlflow found; install the project (pip install -e .) or set MLFLOW_BIN" >&2; exit 2; }

# Long-running GenAI job workers are not needed for sweeps; leave them off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}

args=(server --backend-store-uri "$backend" --serve-artifacts --artifacts-destination "$artifacts"
      --host "$host" --port "$port" --workers "$workers")
[[ -z $allowed ]] || args+=(--allowed-hosts "$allowed")

echo "mlflow_server.sh: MLflow on http://$host:$port, backend ${backend%%://*}://$(sed -E 's#^[^@]*@##' <<<"${backend#*://}")," \
     "artifacts $artifacts, $workers worker(s)" >&2
exec "$mlflow" "${args[@]}" "${extra[@]}"
