"""Ray's fake multi-node provider, plus what a cloud provider does when it reclaims a spot instance.

``FakeMultiNodeProvider`` starts each "instance" as Ray node processes on this machine, but it keeps listing a node
whose processes were killed (and, with node updaters disabled, never marks it healthy enough for the autoscaler to
replace it). A cloud API stops listing a reclaimed instance; so does this subclass, once the node's raylet is gone.
The autoscaler then sees the missing capacity and launches a new worker for the pending trials, as on AWS.

Used by ``tests/data/fake_cluster.yaml`` (``provider: {type: external, module: tests.fake_provider.Preemptible}``);
the head's monitor imports it, so the head must start with this repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ray._private import ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class Preemptible(FakeMultiNodeProvider):
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        with self.lock:
            for node_id, entry in list(self._nodes.items()):
                node = entry.get("node")  # None for the head, which this provider did not start
                if node is not None and not _raylet_alive(node):
                    del self._nodes[node_id]  # the instance is gone: no longer listed, as a cloud API would
                    with contextlib.suppress(Exception):  # whatever of it still runs goes with it
                        node.kill_all_processes(check_alive=False, allow_graceful=False)
        return super().non_terminated_nodes(tag_filters)


def _raylet_alive(node: Any) -> bool:
    raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, [])
    return any(info.process.poll() is None for info in raylets)
