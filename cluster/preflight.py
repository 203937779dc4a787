"""Checks a sweep passes before its first trial: can every Ray node reach the storage and the tracking server?

    check_cluster(tracking_uri, storage)    # after connect(); raises ClusterError naming the option to fix

On the embedded local Ray (one node: the driver's) only the tracking server's answer is checked. On a
cluster a local tracking store (SQLite, file) is refused at once; then one small task on every other alive
node reads a marker the driver wrote into the storage path and calls the tracking server. A node that
cannot is named with the reason, before MLflow or Tune have done anything.
"""

from __future__ import annotations

import uuid

from cluster import storage as st
from cluster.tracking import SERVER_HINT, is_local_store, is_server, probe_server

MARKER_DIR = ".lslu-sweep-check"
PROBE_TIMEOUT_S = 120.0  # a node busy starting workers can take a while; one that never runs the task is reported


class ClusterError(ValueError):
    """The cluster cannot run this sweep as asked; ``option`` is the command-line option to change."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message


def check_cluster(tracking_uri: str, storage: str) -> int:
    """Refuse what would fail on the cluster; returns how many alive nodes it has."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1 and is_local_store(tracking_uri):
        raise ClusterError(
            "--tracking-uri",
            f"{tracking_uri} is a local store on the driver's machine, "
            f"but this Ray cluster has {len(nodes)} nodes and trials on the others "
            f"cannot write to it; {SERVER_HINT}",
        )
    if is_server(tracking_uri) and (reason := probe_server(tracking_uri)):
        raise ClusterError(
            "--tracking-uri",
            f"the MLflow server at {tracking_uri} does not answer the driver: "
            f"{reason}. If it is not running: {SERVER_HINT}",
        )
    driver_node = ray.get_runtime_context().get_node_id()
    others = [n for n in nodes if n["NodeID"] != driver_node]
    if others:
        _check_nodes(others, tracking_uri, storage)
    return len(nodes)


def node_capacities() -> list[tuple[float, float]]:
    """``(CPUs, GPUs)`` of each alive Ray node: a trial's resources must fit on one of them."""
    import ray

    return [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n["Alive"]]


def _check_nodes(nodes: list[dict], tracking_uri: str, storage: str) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    marker = st.join(storage, MARKER_DIR, token)
    try:
        st.write_text(marker, token)
    except Exception as exc:
        raise ClusterError("--storage", f"the driver cannot write to {storage}: {exc}") from None
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)  # 0 CPUs: runs on a head started with --num-cpus 0 too
    refs = {
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            marker, token, tracking_uri
        ): n
        for n in nodes
    }
    try:
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        storage_problems, tracking_problems = [], []
        for ref in ready:
            where = _name(refs[ref])
            try:
                found = ray.get(ref)
            except Exception as exc:
                storage_problems.append(f"{where}: the check task failed ({str(exc).splitlines()[0]})")
                continue
            if found["storage"]:
                storage_problems.append(f"{where}: {found['storage']}")
            if found["tracking"]:
                tracking_problems.append(f"{where}: {found['tracking']}")
        for ref in late:
            ray.cancel(ref, force=True)
            storage_problems.append(f"{_name(refs[ref])}: did not run the check within {PROBE_TIMEOUT_S:.0f} s")
    finally:
        st.delete_file(marker)
    if storage_problems:
        raise ClusterError(
            "--storage",
            f"{storage} is not shared by every Ray node ({'; '.join(storage_problems)}). "
            "Trials keep their checkpoints there and a trial moved off a lost node "
            "reads them back, so use a filesystem mounted at the same path on every node, "
            "or a bucket "
            "(--storage s3://BUCKET/PATH or gs://BUCKET/PATH)",
        )
    if tracking_problems:
        raise ClusterError(
            "--tracking-uri",
            f"the MLflow server at {tracking_uri} cannot be reached "
            f"from every Ray node ({'; '.join(tracking_problems)}); {SERVER_HINT}",
        )


def probe_node(marker: str, token: str, tracking_uri: str) -> dict:
    """Runs on one node: does it see the driver's marker, and does the tracking server answer it?"""
    try:
        seen = st.read_text(marker)
        problem = (
            None if seen == token else (f"{marker} holds another sweep's marker: a different storage is mounted there")
        )
    except FileNotFoundError:
        problem = f"the marker the driver wrote, {marker}, is not there: this node does not see the driver's storage"
    except Exception as exc:
        problem = f"cannot read {marker} ({exc})"
    return {"storage": problem, "tracking": probe_server(tracking_uri) if is_server(tracking_uri) else None}


def _name(node: dict) -> str:
    return f"node {node['NodeID'][:12]} ({node['NodeManagerAddress']})"
