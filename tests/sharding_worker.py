"""Models and multi-device scenarios for tests/test_sharding.py.

Imported by the tests (one device), and run as a script in a subprocess that
sees several simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``):

    python tests/sharding_worker.py mesh                  # 8 devices, a 2x4 mesh
    python tests/sharding_worker.py process ID PORT       # one of two jax.distributed processes

Each scenario prints one JSON line starting with ``RESULT `` for the test to read.
"""

from __future__ import annotations

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx_bridge as nnx
from nnx_bridge import sharding
from nnx_bridge.scan import Scan

AUTO = jax.sharding.AxisType.Auto
RULES = (("batch", "data"), ("layers", None), ("embed", None), ("mlp", "model"))
D, HIDDEN, LAYERS = 16, 32, 2


class Block(nnx.Module):
    """The MLP half of a pre-norm Transformer block, residual (attention left out to keep
    the multi-device compiles short; its projections shard like ``up``/``down``)."""

    def __init__(self, d, hidden, *, ctx):
        self.norm = nnx.LayerNorm(d, sharding=("embed",), ctx=ctx)
        self.up = nnx.Linear(d, hidden, sharding=("embed", "mlp"), ctx=ctx)
        self.down = nnx.Linear(hidden, d, sharding=("mlp", "embed"), ctx=ctx)

    def __call__(self, x):
        return x + self.down(jax.nn.gelu(self.up(self.norm(x))))


def transformer():
    """A bridged stack of LAYERS blocks (scan over layers), logical names boxed for rules."""
    return nnx.ToLinen(Scan, args=(Block, LAYERS, D, HIDDEN), logical_axes=True)


def batch(seed=0, n=8):
    x = jax.random.normal(jax.random.PRNGKey(seed), (n, 4, D))
    return x, jnp.sin(x)


def train_losses(model, variables, x, y, steps=3):
    """Losses of `steps` SGD steps (jit; shardings follow the inputs)."""
    tx = optax.sgd(0.1)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = variables["params"]
    opt_state = tx.init(params)
    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    return losses, params


class MLP(nnx.Module):
    def __init__(self, din, hidden, *, ctx):
        self.l1 = nnx.Linear(din, hidden, ctx=ctx)
        self.l2 = nnx.Linear(hidden, 1, ctx=ctx)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def data_parallel_batch():
    x = jax.random.normal(jax.random.PRNGKey(3), (16, 8))
    return x, x.sum(axis=1, keepdims=True)


def data_parallel_losses(x_global, y_global, shard_batch, steps=2):
    """SGD on a bridged MLP; `shard_batch` places (x, y), params are replicated."""
    model = nnx.to_linen(MLP, 8, 16)
    params = model.init(jax.random.PRNGKey(0), x_global[:1])["params"]
    tx = optax.sgd(0.05)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, x, y = shard_batch(params, x_global, y_global)
    opt_state = tx.init(params)
    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    return losses


# ----------------------------------------------------------------------------------
def scenario_mesh():
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AUTO, AUTO))
    model = transformer()
    key = jax.random.PRNGKey(0)
    x, y = batch()
    report = {}

    # Sharded init through the bridge: shardings from the abstract variables, then jit.
    abstract = jax.eval_shape(model.init, key, x)
    shardings = sharding.get_named_sharding(abstract, mesh, RULES)
    linen_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    report["same_as_linen"] = jax.tree.leaves(shardings) == jax.tree.leaves(linen_shardings)
    variables = jax.jit(model.init, out_shardings=shardings)(key, x)
    report["boxes"] = sorted(
        {
            type(b).__name__
            for b in jax.tree.leaves(variables, is_leaf=lambda b: isinstance(b, nn.Partitioned))
        }
    )
    report["params"] = {}
    for path, box in jax.tree_util.tree_flatten_with_path(
        variables["params"], is_leaf=lambda b: isinstance(b, nn.Partitioned)
    )[0]:
        array = box.value
        report["params"][jax.tree_util.keystr(path)] = {
            "names": list(box.names),
            "spec": [s for s in array.sharding.spec],
            "shape": list(array.shape),
            "shards": len(array.addressable_shards),
            "devices": len(array.sharding.device_set),
            "shard_shapes": sorted({tuple(s.data.shape) for s in array.addressable_shards}),
        }

    # Training on the mesh versus on one device, from the same initial values.
    data = jax.sharding.NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", None, None), RULES))
    with nn.logical_axis_rules(RULES):
        sharded_losses, params = train_losses(
            model, variables, jax.device_put(x, data), jax.device_put(y, data)
        )
    report["trained_spec"] = [s for s in params["block"]["up"]["kernel"].value.sharding.spec]
    one = jax.devices()[0]  # the same initial values, gathered onto one device
    single = jax.device_put(nn.unbox(variables), one)
    single_losses, _ = train_losses(model, single, jax.device_put(x, one), jax.device_put(y, one))
    report["losses"] = {"mesh": sharded_losses, "single": single_losses}

    # Core sharded init: each device computes and holds only its shards.
    state, _ = sharding.sharded_init(Scan, Block, LAYERS, D, HIDDEN, mesh=mesh, rules=RULES, key=1)
    kernel = state["block/up/kernel"].value
    report["core"] = {
        "spec": [s for s in kernel.sharding.spec],
        "shards": len(kernel.addressable_shards),
        "shard_shapes": sorted({tuple(s.data.shape) for s in kernel.addressable_shards}),
        "shape": list(kernel.shape),
    }
    return report


def scenario_process(process_id, port):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=30,
    )
    try:
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AUTO,))
        data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        per_process = 16 // jax.process_count()
        rows = slice(process_id * per_process, (process_id + 1) * per_process)

        def shard_batch(params, x, y):  # each process contributes only its own rows
            params = jax.tree.map(
                lambda a: jax.make_array_from_process_local_data(replicated, np.asarray(a)), params
            )
            x = jax.make_array_from_process_local_data(data, np.asarray(x[rows]), x.shape)
            y = jax.make_array_from_process_local_data(data, np.asarray(y[rows]), y.shape)
            return params, x, y

        x, y = data_parallel_batch()
        losses = data_parallel_losses(x, y, shard_batch)
        return {
            "process": jax.process_index(),
            "processes": jax.process_count(),
            "local_devices": jax.local_device_count(),
            "devices": jax.device_count(),
            "losses": losses,
        }
    finally:
        jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "mesh":
        result = scenario_mesh()
    else:
        result = scenario_process(int(sys.argv[2]), int(sys.argv[3]))
    print("RESULT " + json.dumps(result), flush=True)
