"""One mesh for the whole run, and the shardings derived from it.

Data parallelism is plain `jax.jit` over a ('data',) mesh: batches are split along their first
axis, parameters and optimizer state are replicated, and XLA inserts the gradient all-reduce
(and makes BatchNorm statistics global-batch statistics) by itself.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS, MODEL_AXIS = "data", "model"


def make_mesh(mesh_cfg=None) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh over all devices of all processes."""
  n = jax.device_count()
  model = mesh_cfg.model if mesh_cfg else 1
  data = mesh_cfg.data if mesh_cfg and mesh_cfg.data > 0 else n // model
  if model != 1:
    raise ValueError("mesh.model > 1 (parameter sharding) is not supported yet")
  if data * model != n:
    raise ValueError(f"mesh data={data} x model={model} does not match {n} devices")
  # Auto axes: XLA propagates shardings through the step (GSPMD). jax's default, Explicit axes,
  # puts shardings into types, which library code such as Flax's Dropout does not handle.
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((data, model), (DATA_AXIS, MODEL_AXIS), axis_types=(auto, auto))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_host(tree):
  """Fetches arrays as numpy; across processes, replicated ones are read from the local copy
  and sharded ones are gathered."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)
