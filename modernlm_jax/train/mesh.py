"""Device mesh (data, fsdp, tensor) and the logical-axis rules that turn parameter names into shardings.

Parameters carry logical axis names (`embed`, `heads`, `mlp`, `vocab`, ...); the rules below map them
onto mesh axes, MaxText-style. A dimension that the mesh axis does not divide is left replicated (and
logged) rather than failing, so odd vocabularies still run on any mesh.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("head_dim", None),
  ("norm", None),
  ("max_len", None),
  ("state", None),
  ("conv", None),
  ("lora", None),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves the configured (data, fsdp, tensor) sizes; one of them may be -1 = the rest."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f"mesh: {num_devices} devices cannot be split into {dict(zip(MESH_AXES, sizes))}; "
        f"the fixed axes' product ({known}) must divide the device count"
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) > num_devices:
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but only {num_devices} "
      f"are available ({jax.default_backend()}); shrink --config.mesh.* or use -1 for one axis"
    )
  if math.prod(sizes) < num_devices:
    logging.warning(
      "mesh %s uses %d of %d devices; set one axis to -1 to use them all",
      dict(zip(MESH_AXES, sizes)),
      math.prod(sizes),
      num_devices,
    )
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices[: math.prod(shape)]).reshape(shape), MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  dp = data_parallel_size(mesh)
  if global_batch % dp:
    raise ValueError(
      f"global batch size {global_batch} is not divisible by the data-parallel size {dp} "
      f"(mesh data={mesh.shape['data']} × fsdp={mesh.shape['fsdp']}); pick a multiple of {dp}"
    )


def _mesh_axes_for(logical_spec: P, shape: tuple[int, ...], mesh: Mesh, rules) -> P:
  rules = dict(rules)
  out = []
  for dim, name in zip(shape, logical_spec):
    axis = rules.get(name) if name is not None else None
    if axis is not None and dim % mesh.shape[axis]:
      logging.info(
        "sharding: dimension %s of size %d is not divisible by mesh axis %s=%d; replicating it",
        name,
        dim,
        axis,
        mesh.shape[axis],
      )
      axis = None
    out.append(axis)
  return P(*out)


def param_shardings(logical_specs, abstract_params, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a parameter tree from its logical PartitionSpecs and shapes."""
  is_spec = lambda x: isinstance(x, P)
  return jax.tree_util.tree_map(
    lambda spec, leaf: NamedSharding(mesh, _mesh_axes_for(spec, leaf.shape, mesh, rules)),
    logical_specs,
    abstract_params,
    is_leaf=is_spec,
  )


def batch_sharding(mesh: Mesh, ndim: int = 2, leading_accum: bool = False) -> NamedSharding:
  """Rows over (data, fsdp); with gradient accumulation the leading micro-batch axis stays unsharded."""
  spec = (None, BATCH_AXES) if leading_accum else (BATCH_AXES,)
  return NamedSharding(mesh, P(*spec, *([None] * (ndim - len(spec)))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_rows(batch: dict) -> dict:
  """This process's contiguous block of rows of a global host batch."""
  n, pc, pi = None, jax.process_count(), jax.process_index()
  out = {}
  for k, v in batch.items():
    n = v.shape[0]
    if n % pc:
      raise ValueError(f"eval batch of {n} rows is not divisible by {pc} processes")
    out[k] = v[pi * n // pc : (pi + 1) * n // pc]
  return out
