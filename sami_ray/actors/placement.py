"""Reserving a role's resources on the cluster: one placement-group bundle per replica, GPUs or CPUs alike."""

from __future__ import annotations

from ..config import RoleResources
from ..errors import UserError


def bundle(res: RoleResources) -> dict[str, float]:
    b = {"CPU": float(res.num_cpus)}
    if res.num_gpus:
        b["GPU"] = float(res.num_gpus)
    return b


def reserve(role: str, res: RoleResources, replicas: int, name: str, timeout_s: float = 300.0):
    """A placement group with `replicas` bundles, ready, or an error that says what could not be placed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    b = bundle(res)
    pg = placement_group([dict(b) for _ in range(replicas)], strategy="PACK", name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise UserError(f"resources.{role}: {replicas} x {b} could not be placed within {timeout_s:.0f} s; the "
                        f"cluster has {ray.available_resources()} free. Lower the replicas or the per-replica "
                        "resources, or add nodes.")
    return pg


def strategy(pg, index: int):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index,
                                            placement_group_capture_child_tasks=True)
