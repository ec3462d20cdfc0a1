"""Devices for a stack of members: a ``jax.sharding.Mesh`` with the axes ``runs`` and ``data``.

The members of a strategy (runs x grid points, ``cljax.stream``) are independent, so they are
sharded over the mesh axis ``runs`` with ``jax.shard_map``: each device trains its own members,
with no communication. Mini-batches are sharded over ``data`` (data parallel, for models too large
to replicate per member): each device of a ``data`` group computes the loss and gradient of its
share of the mini-batch's rows, and one ``psum`` adds them (``engine.make_member_fit``); everything
else of a step is the same on every device of the group.

``--config.mesh``: ``auto`` (default) or explicit sizes ``runs:4,data:2`` whose product is at most
the number of devices (``jax.devices()``, every process's on several hosts; the first ones are
used). ``auto`` gives every device to ``runs`` when there are at least as many members as devices,
else to ``data`` (the largest group that divides the mini-batch).

Which member axis ``runs`` shards: the run axis R when the runs-axis size divides R (the runs'
data then lives only on the devices that train them), else the grid axis G when it divides G
(every device then holds every run's data), else R padded with idle copies of the last run up to
a multiple of the axis size (their results are discarded).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cljax.hparams import ConfigError

MEMBER, RUN, GRID = "member", "run", "grid"  # as cljax.engine's member kinds
AXES = ("runs", "data")


@dataclasses.dataclass(frozen=True)
class MemberLayout:
    """How a stack of members [R, G] lies on a mesh (see the module doc)."""

    mesh: Mesh
    member_axis: int  # 0: R is sharded over "runs"; 1: G is; -1: neither (runs axis of size 1)
    padded_runs: int  # R after padding to a multiple of the runs axis (= R when none is needed)

    @property
    def runs(self) -> int:
        return self.mesh.shape["runs"]

    @property
    def data(self) -> int:
        return self.mesh.shape["data"]

    def spec(self, kind: str | None) -> PartitionSpec:
        """The partition of an array of kind MEMBER ([R, G, ...]), RUN ([R, ...]), GRID ([G, ...]) or
        None (shared): sharded over ``runs`` along its member axis, replicated over ``data``."""
        if kind == MEMBER:
            return PartitionSpec(*([None] * self.member_axis), "runs") if self.member_axis >= 0 else PartitionSpec()
        if (kind == RUN and self.member_axis == 0) or (kind == GRID and self.member_axis == 1):
            return PartitionSpec("runs")
        return PartitionSpec()

    def sharding(self, kind: str | None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(kind))

    def place(self, tree: Any, kind: str | None) -> Any:
        """Host arrays (the same on every process) as global arrays of ``kind``'s sharding: each
        process transfers only the shards its devices hold."""
        sharding = self.sharding(kind)

        def put(value):
            if jax.dtypes.issubdtype(getattr(value, "dtype", None), jax.dtypes.prng_key):  # typed PRNG keys
                return jax.random.wrap_key_data(put(jax.random.key_data(value)), impl=jax.random.key_impl(value))
            host = to_host(value)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(put, tree)

    def shard_map(self, fn, in_specs, out_specs):
        """``fn`` on each device's members (``jax.shard_map`` over this mesh); specs are pytree
        prefixes of the arguments and results (``spec(kind)``)."""
        # No varying-axes type checks: members never mix across devices, and data groups stay
        # identical by construction (every device of a group psums the same gradient).
        return jax.shard_map(fn, mesh=self.mesh, in_specs=tuple(in_specs), out_specs=out_specs, check_vma=False)


def to_host(tree: Any) -> Any:
    """Arrays as NumPy on every process (gathering shards other processes hold)."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def sync(name: str) -> None:
    """All processes of a multi-host job meet here (one process: nothing to wait for)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def parse_mesh(text: str) -> tuple[int, int] | None:
    """``auto`` -> None; ``runs:4,data:2`` (either may be left out: size 1) -> (4, 2)."""
    if text == "auto":
        return None
    sizes = {"runs": 1, "data": 1}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        match = re.fullmatch(r"(runs|data):(\d+)", part)
        if not match or int(match.group(2)) < 1 or part.split(":")[0] in sizes and sizes[match.group(1)] != 1:
            raise ConfigError(
                f"mesh={text!r} is invalid; write auto or axis sizes such as runs:4,data:2 (axes: runs, data)"
            )
        sizes[match.group(1)] = int(match.group(2))
    return sizes["runs"], sizes["data"]


def choose(text: str, count: int, num_runs: int, num_points: int, batch_size: int) -> tuple[int, int, int, int]:
    """(runs, data, member_axis, padded runs) for R = ``num_runs`` x G = ``num_points`` members on
    ``count`` devices (see the module doc). Raises ConfigError for a mesh that cannot hold the work."""
    sizes = parse_mesh(text)
    if sizes is None:  # auto: every device to runs when the members fill them, else to data
        if num_runs * num_points >= count:
            sizes = (count, 1)
        else:  # the largest data group that divides the mini-batch (the other devices stay idle)
            sizes = (1, max(d for d in range(1, count + 1) if count % d == 0 and batch_size % d == 0))
    runs, data = sizes
    if runs * data > count:
        raise ConfigError(
            f"mesh={text!r} needs {runs * data} devices (runs x data) but {count} are available; "
            f"use axis sizes whose product is at most {count}, or mesh=auto"
        )
    if batch_size % data:
        raise ConfigError(
            f"mesh={text!r}: batch_size={batch_size} cannot be split over data={data} devices; "
            "use a batch size that data divides"
        )
    if runs == 1:
        return runs, data, -1, num_runs
    if num_runs % runs == 0:
        return runs, data, 0, num_runs
    if num_points % runs == 0:
        return runs, data, 1, num_runs
    return runs, data, 0, math.ceil(num_runs / runs) * runs


def plan(
    text: str, num_runs: int, num_points: int, batch_size: int, devices: list | None = None
) -> MemberLayout | None:
    """The layout of R = ``num_runs`` x G = ``num_points`` members on the first runs x data of
    ``devices`` (default: all); None for one device (nothing to shard)."""
    devices = list(jax.devices() if devices is None else devices)
    runs, data, member_axis, padded = choose(text, len(devices), num_runs, num_points, batch_size)
    if runs * data == 1:
        return None
    mesh = Mesh(np.asarray(devices[: runs * data]).reshape(runs, data), AXES)
    return MemberLayout(mesh, member_axis, padded)
