"""Reserving a role's resources on the cluster: one placement-group bundle per replica, GPUs or CPUs alike, plus
the custom resources the role's config names (`resources.<role>.custom`, e.g. {sami_sampler: 4}), so that a role
lands only on the nodes meant for it (cluster/aws.yaml and cluster/kuberay.yaml name their nodes' roles so)."""

from __future__ import annotations

from ..config import RoleResources
from ..errors import UserError


def bundle(res: RoleResources) -> dict[str, float]:
    """One replica's (or one trainer worker's) resources as Ray names them."""
    b = {"CPU": float(res.num_cpus)}
    if res.num_gpus:
        b["GPU"] = float(res.num_gpus)
    for name, amount in res.custom.items():
        b[name] = float(amount)
    return b


def missing_custom(res: RoleResources, cluster: dict[str, float], replicas: int = 1) -> dict[str, float]:
    """The custom resources that `replicas` replicas ask for and the cluster's totals lack: name -> amount asked."""
    return {name: amount * replicas for name, amount in res.custom.items()
            if cluster.get(name, 0.0) < amount * replicas}


def _resources(d: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(d.items()) if not k.startswith("node:")) + "}"


def unplaceable_message(role: str, res: RoleResources, replicas: int, timeout_s: float,
                        cluster: dict[str, float], available: dict[str, float]) -> str:
    """Why `replicas` bundles of a role could not be placed: a custom resource no node offers (enough of), named
    with its field, or else the free resources."""
    b = bundle(res)
    head = f"resources.{role}: {replicas} x {_resources(b)} could not be placed within {timeout_s:.0f} s"
    missing = missing_custom(res, cluster, replicas)
    if missing:
        asked = ", ".join(f"{name} ({amount:g} in all)" for name, amount in missing.items())
        return (f"{head}: resources.{role}.custom asks for {asked}, but the cluster offers "
                f"{', '.join(f'{n}: {cluster.get(n, 0.0):g}' for n in missing)}; the cluster has "
                f"{_resources(cluster)}. Start nodes that offer the resource (cluster/aws.yaml, cluster/kuberay.yaml "
                f"name it per node type) or change resources.{role}.custom.")
    return (f"{head}; the cluster has {_resources(available)} free. Lower the replicas or the per-replica "
            "resources, or add nodes.")


def reserve(role: str, res: RoleResources, replicas: int, name: str, timeout_s: float = 300.0):
    """A placement group with `replicas` bundles, ready, or an error that says what could not be placed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    b = bundle(res)
    pg = placement_group([dict(b) for _ in range(replicas)], strategy="PACK", name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise UserError(unplaceable_message(role, res, replicas, timeout_s, ray.cluster_resources(),
                                            ray.available_resources()))
    return pg


def fits_now(res: RoleResources, replicas: int, wait_s: float = 5.0) -> bool:
    """Whether `replicas` bundles of a role can be placed on the cluster's free resources now: a placement group is
    tried (and removed again) only when the free totals allow it. For work that may start early but must not wait
    for room, nor take room that another role is about to need."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    b = bundle(res)
    free = ray.available_resources()
    if any(free.get(name, 0.0) < amount * replicas for name, amount in b.items()):
        return False
    pg = placement_group([dict(b) for _ in range(replicas)], strategy="PACK", name="sami-room-probe")
    try:
        ready, _ = ray.wait([pg.ready()], timeout=wait_s)
        return bool(ready)
    finally:
        remove_placement_group(pg)


def require_custom(role: str, res: RoleResources, replicas: int, timeout_s: float = 300.0) -> None:
    """Before a group that Ray places by itself (the Ray Train workers): when the cluster's totals lack a custom
    resource the role asks for, wait up to `timeout_s` for nodes that offer it (a pending placement group makes an
    autoscaler start them), else end with a UserError naming resources.<role>.custom and what the cluster has."""
    import ray
    from ray.util.placement_group import remove_placement_group

    if not missing_custom(res, ray.cluster_resources(), replicas):
        return
    remove_placement_group(reserve(role, res, replicas, name=f"sami-{role}-probe", timeout_s=timeout_s))


def strategy(pg, index: int):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index,
                                            placement_group_capture_child_tasks=True)


def on_this_node(role: str, err: UserError) -> UserError:
    """The same mistake, saying which role met it on which node (a node's own disk, cache and network differ)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return UserError(f"{role} on node {ray.util.get_node_ip_address()} ({node[:12]}): {err}")
