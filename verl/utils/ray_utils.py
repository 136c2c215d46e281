"""Small Ray helpers: parallel object puts, placement-group checks and ordering, cluster shape."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup


def parallel_put(data_list: list[Any], max_workers: int | None = None) -> list[ray.ObjectRef]:
    """``ray.put`` every item, several at once (serialising large chunks dominates), keeping the order.

    Args:
        data_list: objects to store; must not be empty.
        max_workers: threads to use; default ``min(len(data_list), 16)``.

    Returns:
        One ObjectRef per item, in order.
    """
    assert len(data_list) > 0, "parallel_put needs at least one object"
    workers = max(1, min(len(data_list), max_workers or 16))
    if workers == 1:
        return [ray.put(item) for item in data_list]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(ray.put, data_list))


def check_bundles_feasible(bundle: dict[str, float], n_bundles: int, what: str) -> None:
    """Raise ValueError at once, naming the shortfall, when the whole cluster could never hold the bundles.

    Without this a placement group that can never be placed waits forever.
    """
    totals = ray.cluster_resources()
    for resource, amount in bundle.items():
        need, have = amount * n_bundles, totals.get(resource, 0)
        if need > have + 1e-6:
            hint = " (on CPU each worker process takes one CPU slot)" if resource == "CPU" else ""
            raise ValueError(
                f"{what} needs {need:g} {resource} for {n_bundles} processes but the cluster has {have:g}{hint}"
            )


def sort_placement_groups_by_node_ip(pgs: list[PlacementGroup]) -> list[PlacementGroup]:
    """Ready placement groups ordered by the IP of the node holding their first bundle (a stable rank order)."""
    if len(pgs) <= 1:
        return pgs
    ip_of = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    table = ray.util.placement_group_table()

    def node_ip(pg: PlacementGroup) -> str:
        return ip_of.get(table[pg.id.hex()]["bundles_to_node_id"][0], "")

    return sorted(pgs, key=node_ip)


def is_single_local_node() -> bool:
    """True when the cluster is one alive node and it is the node this process runs on."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()
