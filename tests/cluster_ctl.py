"""A Ray cluster of a head and worker nodes on this machine (``ray.cluster_utils.Cluster``), owned by this process.

The pytest process keeps its session Ray (conftest's ``ray_local``), and a Cluster cannot share a process
with it, so the tests start this script and send it orders on stdin, one JSON line each; it answers one
JSON line each on stdout:

    (at start)                          -> {"address": "IP:PORT", "head": ID, "workers": [ID, ...]}
    {"cmd": "remove", "node_id": ID}    -> {"removed": ID}          (SIGKILL to the node's processes: a lost node)
    {"cmd": "alive"}                    -> {"alive": [ID, ...]}     (every node the GCS sees alive, not only ours)
    {"cmd": "shutdown"}                 -> {}                       (then it exits)

    python tests/cluster_ctl.py --workers 2 --worker-cpus 1

The head has no CPUs, so trials run on the workers and the driver (attached to the head) survives a lost worker.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from cluster.local import prepare_env

# Notice a dead node within seconds (Ray's default allows it half a minute).
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--workers", type=int, default=2)
    args.add_argument("--worker-cpus", type=int, default=1)
    opts = args.parse_args()
    prepare_env()
    import ray._common.utils
    from ray.cluster_utils import Cluster

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally below
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    try:
        ray._common.utils.reset_ray_address()  # a bare ray.init() elsewhere on this machine must not join this cluster
        workers = {}
        for _ in range(opts.workers):
            node = cluster.add_node(num_cpus=opts.worker_cpus)
            workers[node.node_id] = node
        cluster.wait_for_nodes()
        _answer({"address": cluster.address, "head": cluster.head_node.node_id, "workers": list(workers)})
        for line in sys.stdin:
            order = json.loads(line)
            if order["cmd"] == "remove":
                cluster.remove_node(workers.pop(order["node_id"]), allow_graceful=False)
                _answer({"removed": order["node_id"]})
            elif order["cmd"] == "alive":
                _answer({"alive": sorted(cluster.global_state._live_node_ids())})
            elif order["cmd"] == "shutdown":
                break
            else:
                _answer({"error": f"unknown command {order['cmd']!r}"})
    finally:
        cluster.shutdown()
        _answer({})


def _answer(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
