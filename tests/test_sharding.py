"""nnx_bridge.sharding and nnx_bridge.scan: specs, rules, sharded init, scan over layers.

The multi-device tests run tests/sharding_worker.py in subprocesses that see
simulated CPU devices (XLA_FLAGS), so this process keeps its single device.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sharding_worker as worker
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P

import nnx_bridge as nnx
from nnx_bridge import sharding
from nnx_bridge.scan import Scan, stack, unstack

WORKER = pathlib.Path(__file__).with_name("sharding_worker.py")
KEY = jax.random.PRNGKey(0)
X = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
RULES = (("batch", "data"), ("embed", None), ("mlp", "model"))


def run_worker(*args, devices):
    """Starts the worker with `devices` simulated CPU devices; returns the Popen."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def result_of(process, timeout):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"worker timed out after {timeout}s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


class Tanh(nnx.Module):
    def __init__(self, d, *, ctx):
        self.kernel = nnx.Param(
            jax.random.normal(ctx.make_rng("params"), (d, d)) * 0.5, sharding=("embed", "mlp")
        )
        self.calls = nnx.Variable("counts", jnp.array(0))

    def __call__(self, x):
        self.calls.value += 1
        return jnp.tanh(x @ self.kernel.value)


class TanhStep(Tanh):
    def __call__(self, carry, _):  # nn.scan's calling convention
        return jnp.tanh(carry @ self.kernel.value), None


# ----------------------------------------------------------------------------------
# specs and rules
# ----------------------------------------------------------------------------------
def test_partition_spec_of_a_state_keeps_its_structure():
    state, _ = nnx.Linear(3, 4, sharding=("embed", "mlp"), ctx=nnx.Context(0)).partition()
    state["count"] = nnx.Variable("counts", 0)
    specs = sharding.get_partition_spec(state)
    assert jax.tree.structure(specs) == jax.tree.structure(state)
    assert {p: v.value for p, v in specs.items()} == {
        "bias": P("mlp"),
        "count": P(),
        "kernel": P("embed", "mlp"),
    }
    mapped = sharding.get_partition_spec(state, rules=RULES)
    assert mapped["kernel"].value == P(None, "model") and mapped["bias"].value == P("model")
    with nn.logical_axis_rules(RULES):
        assert sharding.get_partition_spec(state)["kernel"].value == P(None, "model")


def test_named_sharding_on_a_mesh_and_errors_name_the_path():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    state, _ = nnx.Linear(3, 4, sharding=("embed", "mlp"), ctx=nnx.Context(0)).partition()
    named = sharding.get_named_sharding(state, mesh, rules=RULES)
    assert named["kernel"].value == jax.sharding.NamedSharding(mesh, P(None, "model"))
    placed = jax.device_put(state, named)
    assert placed["kernel"].value.sharding.spec == P(None, "model")
    with pytest.raises(ValueError, match=r"path 'bias' is sharded over 'mlp', which is not an axis.*rules="):
        sharding.get_named_sharding(state, mesh)
    bad = nnx.State({"w": nnx.Param(jnp.ones((2, 2)), sharding=("data",))})
    with pytest.raises(ValueError, match=r"path 'w'.*shape \(2, 2\).*needs 2 entries; found 1"):
        sharding.get_partition_spec(bad)


def test_bridge_boxes_logical_names_and_specs_match_linen():
    plain = nnx.to_linen(Tanh, 3).init(KEY, X)
    assert type(plain["params"]["kernel"]) is nn.Partitioned
    model = nnx.ToLinen(Tanh, args=(3,), logical_axes=True)
    variables = model.init(KEY, X)
    assert type(variables["params"]["kernel"]) is nn.LogicallyPartitioned
    specs = sharding.get_partition_spec(variables, rules=RULES)
    assert specs["params"]["kernel"] == P(None, "model") and specs["counts"]["calls"] == P()
    assert (
        specs["params"]["kernel"]
        == nn.logical_to_mesh(nn.get_partition_spec(variables), RULES)["params"]["kernel"]
    )
    assert sharding.get_partition_spec(plain, rules=RULES)["params"]["kernel"] == P("embed", "mlp")
    np.testing.assert_array_equal(
        model.apply(variables, X, mutable=["counts"])[0],
        model.apply(nn.unbox(variables), X, mutable=["counts"])[0],
    )


def test_sharded_init_equals_eager_build_and_plain_jax_does_the_same():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    state, moduledef = sharding.sharded_init(Tanh, 3, mesh=mesh, rules=RULES, key=1)
    eager, eager_def = Tanh(3, ctx=nnx.Context(1)).partition()
    assert moduledef == eager_def
    np.testing.assert_array_equal(state["kernel"].value, eager["kernel"].value)
    assert state["kernel"].value.sharding.spec == P(None, "model")
    # The same through the bridge with plain JAX and Linen.
    model = nnx.ToLinen(Tanh, args=(3,), logical_axes=True)
    abstract = jax.eval_shape(model.init, KEY, X)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    variables = jax.jit(model.init, out_shardings=shardings)(KEY, X)
    assert variables["params"]["kernel"].value.sharding.spec == P(None, "model")


# ----------------------------------------------------------------------------------
# scan over layers
# ----------------------------------------------------------------------------------
def test_stacked_blocks_give_the_list_forms_outputs_and_keep_updates():
    blocks = [Tanh(3, ctx=nnx.Context(i)) for i in range(3)]
    expected = X
    for block in blocks:
        expected = block(expected)
    layers = stack([Tanh(3, ctx=nnx.Context(i)) for i in range(3)])
    assert layers.block.kernel.sharding == ("layers", "embed", "mlp")
    assert layers.block.calls.sharding is None
    np.testing.assert_allclose(layers(X), expected, rtol=1e-6)
    assert layers.block.calls.value.tolist() == [1, 1, 1]
    state, moduledef = layers.partition()
    y, state = jax.jit(lambda s, x: (lambda out, sd: (out, sd[0]))(*moduledef.apply(s)(x)))(state, X)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert state["block/calls"].value.tolist() == [2, 2, 2]


def test_stack_refuses_blocks_of_different_structure():
    with pytest.raises(ValueError, match=r"block 1 has 'kernel' of shape \(4, 4\)"):
        stack([Tanh(3, ctx=nnx.Context(0)), Tanh(4, ctx=nnx.Context(0))])
    with pytest.raises(ValueError, match=r"block 1 .* differs in structure"):
        stack([Tanh(3, ctx=nnx.Context(0)), nnx.Linear(3, 3, ctx=nnx.Context(0))])


class Leaves(nnx.Module):
    def __init__(self, arrays, names):
        self.ws = [nnx.Param(a, sharding=n) for a, n in zip(arrays, names, strict=True)]


@settings(max_examples=25)
@given(
    layers=st.integers(1, 4),
    shapes=st.lists(st.lists(st.integers(1, 3), max_size=2), min_size=1, max_size=3),
    named=st.booleans(),
    axis_name=st.sampled_from(["layers", None]),
    seed=st.integers(0, 2**16),
)
def test_unstack_inverts_stack(assert_states_equal, layers, shapes, named, axis_name, seed):
    rng = np.random.default_rng(seed)
    names = [tuple(f"a{i}" for i in range(len(s))) if named else None for s in shapes]
    blocks = [
        Leaves([jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes], names) for _ in range(layers)
    ]
    stacked = stack(blocks, axis_name=axis_name)
    for original, back in zip(blocks, unstack(stacked), strict=True):
        assert_states_equal(back.partition()[0], original.partition()[0])
        assert back.partition()[1] == original.partition()[1]
    assert_states_equal(stack(unstack(stacked), axis_name=axis_name).partition()[0], stacked.partition()[0])


def test_scan_through_the_bridge_has_nn_scans_layout():
    Stack = nn.scan(
        nnx.ToLinen,
        variable_axes={"params": 0, "counts": 0},
        split_rngs={"params": True},
        length=3,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    linen = Stack(TanhStep, args=(3,))
    linen_variables = linen.init(KEY, X, None)
    ours = nnx.to_linen(Scan, Tanh, 3, 3)
    variables = ours.init(KEY, X)
    assert jax.tree.map(jnp.shape, nn.unbox(variables["params"]["block"])) == jax.tree.map(
        jnp.shape, nn.unbox(linen_variables["params"])
    )
    assert (
        nn.get_partition_spec(variables)["params"]["block"]
        == nn.get_partition_spec(linen_variables)["params"]
    )
    assert nn.get_partition_spec(variables)["params"]["block"]["kernel"] == P("layers", "embed", "mlp")
    # nn.scan's parameters run in our Scan and give nn.scan's outputs.
    moved = {"params": {"block": linen_variables["params"]}, "counts": {"block": linen_variables["counts"]}}
    y, _ = ours.apply(moved, X, mutable=["counts"])
    np.testing.assert_allclose(y, linen.apply(linen_variables, X, None)[0], rtol=1e-6)


# ----------------------------------------------------------------------------------
# multi-device: subprocesses
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def workers():
    """Starts every multi-device worker at once (they run while other tests do)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = {
        "mesh": run_worker("mesh", devices=8),
        "processes": [run_worker("process", i, port, devices=4) for i in range(2)],
    }
    yield started
    for p in [started["mesh"], *started["processes"]]:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_bridged_block_trains_on_a_2x4_mesh_like_on_one_device(workers):
    report = result_of(workers["mesh"], timeout=150)
    assert report["same_as_linen"] and report["boxes"] == ["LogicallyPartitioned"]
    params = report["params"]
    up, down = params["['block']['up']['kernel']"], params["['block']['down']['kernel']"]
    assert up["names"] == ["layers", "embed", "mlp"] and up["spec"] == [None, None, "model"]
    assert down["spec"] == [None, "model", None]
    for entry in params.values():
        assert entry["shards"] == 8 and entry["devices"] == 8
        sharded = [axis for axis, name in enumerate(entry["spec"]) if name == "model"]
        expected = [n // 4 if axis in sharded else n for axis, n in enumerate(entry["shape"])]
        assert entry["shard_shapes"] == [expected]
        if sharded:  # no device holds the full buffer
            assert entry["shard_shapes"][0] != entry["shape"]
    assert report["trained_spec"] == [None, None, "model"]
    np.testing.assert_allclose(report["losses"]["mesh"], report["losses"]["single"], rtol=1e-5)
    assert report["losses"]["mesh"][-1] < report["losses"]["mesh"][0]
    core = report["core"]
    assert core["spec"] == [None, None, "model"] and core["shards"] == 8
    assert core["shard_shapes"] == [[2, 16, 8]] and core["shape"] == [2, 16, 32]


def test_two_processes_join_and_agree_on_the_data_parallel_loss(workers):
    results = [result_of(p, timeout=120) for p in workers["processes"]]
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["processes"] == 2 and r["local_devices"] == 4 and r["devices"] == 8 for r in results)
    assert results[0]["losses"] == results[1]["losses"]
    x, y = worker.data_parallel_batch()
    single = worker.data_parallel_losses(x, y, lambda params, x, y: (params, x, y))
    np.testing.assert_allclose(results[0]["losses"], single, rtol=1e-5)
