"""One mesh for the whole run, and the shardings derived from it.

Data parallelism is plain `jax.jit` over a ('data',) mesh: batches are split along their first
axis, parameters and optimizer state are replicated, and XLA inserts the gradient all-reduce
(and makes BatchNorm statistics global-batch statistics) by itself.
"""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_host(tree):
  """Fetches (possibly multi-host sharded) arrays as numpy, gathering across processes."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
