"""Start (or attach to) Ray and place one actor per role into a placement group declared in the config.

Roles: generators (vLLM), reward, optional critic and reference, and the learner ranks. Each gets a
placement-group bundle with the CPUs / GPUs of `cluster.roles.<role>`; the strategy (PACK / SPREAD) decides
how bundles map to nodes. Every actor runs with `cluster.threads_per_actor` threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from engine.process import thread_env


class RoleError(RuntimeError):
    """A role's remote call failed or missed its deadline; the message names the role and the call."""


def ray_get(refs, role: str, what: str, timeout_s: float):
    """ray.get with a deadline and an error that names the role and the call."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RoleError(f"{role}.{what} did not answer within {timeout_s:.0f} s (train.timeout_s)") from None
    except ray.exceptions.RayError as e:
        raise RoleError(f"{role}.{what} failed: {e}") from e


def init_ray(address: str | None, num_cpus: int | None, threads: int) -> None:
    """Attach to `address` (e.g. 'auto' under `ray job submit`) or start a local Ray."""
    if ray.is_initialized():
        return
    env = {"env_vars": thread_env(threads)}
    if address:
        ray.init(
            address=address,
            runtime_env=env,
            log_to_driver=True,
            logging_level="WARNING",  # type: ignore[arg-type]  # Ray takes a level name too; its hint says int
        )
    else:
        # "local" always starts a fresh Ray: never attach by accident to another cluster on this machine.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            runtime_env=env,
            include_dashboard=False,
            log_to_driver=True,
            logging_level="WARNING",  # type: ignore[arg-type]  # Ray takes a level name too; its hint says int
        )


@dataclass
class Placement:
    """A placement group with one bundle per actor; `options(role)` hands out the next bundle of a role."""

    strategy: str
    bundles: list[tuple[str, dict[str, float]]]
    pg: Any = None
    _next: dict[str, int] = field(default_factory=dict)

    def create(self, timeout_s: float) -> Placement:
        self.pg = placement_group([res for _, res in self.bundles], strategy=self.strategy)
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            need: dict[str, float] = {}
            for _, res in self.bundles:
                for k, v in res.items():
                    need[k] = need.get(k, 0) + v
            raise RoleError(
                f"placement group ({self.strategy}) not ready within {timeout_s:.0f} s: the roles "
                f"need {need} in total, the cluster has {ray.cluster_resources()}; lower "
                "cluster.roles.*.num_cpus / num_gpus or add nodes"
            )
        return self

    def indices(self, role: str) -> list[int]:
        """Bundle indices of every actor of `role` (for groups that place their own actors)."""
        return [i for i, (r, _) in enumerate(self.bundles) if r == role]

    def options(self, role: str, k: int | None = None) -> dict:
        """Ray actor options for the k-th bundle of `role` (default: the next free one). A replacement
        actor asks for the bundle of the actor it replaces."""
        indices = self.indices(role)
        if k is None:
            k = self._next.get(role, 0)
            self._next[role] = k + 1
        if k >= len(indices):
            raise RoleError(f"no placement bundle left for role {role!r} ({len(indices)} declared)")
        index = indices[k]
        res = self.bundles[index][1]
        return {
            "num_cpus": res.get("CPU", 0),
            "num_gpus": res.get("GPU", 0),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=index
            ),
        }

    def remove(self) -> None:
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None


def plan_bundles(role_counts: dict[str, int], roles_cfg: dict[str, dict]) -> list[tuple[str, dict[str, float]]]:
    """One bundle per actor: [(role, {"CPU": c, "GPU": g}), ...]. A bundle must reserve something, so a
    role configured with zero resources gets a tiny CPU share."""
    bundles = []
    for role, count in role_counts.items():
        res = roles_cfg[role]
        bundle = {"CPU": float(res["num_cpus"]) or 0.01}
        if res["num_gpus"]:
            bundle["GPU"] = float(res["num_gpus"])
        bundles += [(role, dict(bundle)) for _ in range(count)]
    return bundles
