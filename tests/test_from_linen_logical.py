"""from_linen: nn.LogicallyPartitioned keeps its logical names and rules; Linen methods as attributes."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import nnx_bridge as nnx

X = jnp.ones((2, 4))
RULES = (("out-alias", "out"),)


def dense():
    return nn.Dense(
        6,
        kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), ("in", "out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("out-alias",), rules=RULES),
    )


def test_logical_names_and_rules_are_kept():
    block = nnx.from_linen(dense(), X, ctx=nnx.Context(0))
    assert block.kernel.sharding == ("in", "out") and block.kernel.sharding_rules is None
    assert block.bias.sharding == ("out-alias",) and block.bias.sharding_rules == RULES
    assert isinstance(block.bias, nnx.Param)
    state, _ = block.partition()
    specs = nnx.get_partition_spec(state)
    assert specs["bias"].value == P("out") and specs["kernel"].value == P("in", "out")
    assert nnx.get_partition_spec(state, rules=(("out-alias", "in"),))["bias"].value == P("in")
    mesh = jax.make_mesh((1, 1), ("in", "out"))
    assert nnx.get_named_sharding(state, mesh)["bias"].value.spec == P("out")
    # jit and tree_map keep the rules (they are pytree metadata)
    assert jax.jit(lambda s: s)(state)["bias"].sharding_rules == RULES


def test_round_trip_through_to_linen_gives_back_logically_partitioned():
    model = nnx.to_linen(functools.partial(nnx.from_linen, dense(), X))
    variables = model.init(jax.random.PRNGKey(0), X)
    bias, kernel = variables["params"]["bias"], variables["params"]["kernel"]
    assert type(bias) is nn.LogicallyPartitioned and bias.names == ("out-alias",) and bias.rules == RULES
    assert type(kernel) is nn.Partitioned and kernel.names == ("in", "out")
    assert nnx.get_partition_spec(variables)["params"]["bias"] == P("out")  # the box's rules
    linen = dense().init(jax.random.PRNGKey(0), X)
    assert jax.tree.structure(linen) == jax.tree.structure(variables)
    assert nn.get_partition_spec(linen) == nn.get_partition_spec(variables)
    np.testing.assert_allclose(model.apply(variables, X), dense().apply(variables, X), rtol=1e-6)


def test_bad_rules_are_rejected():
    with pytest.raises(TypeError, match=r"sharding_rules must be logical-axis rules in Linen's format"):
        nnx.Param(jnp.ones(2), sharding=("a",), sharding_rules=("a", "b", "c"))


class Coder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return self.decode(self.encode(x))

    @nn.compact
    def encode(self, x):
        return nn.Dense(3, name="enc")(x)

    @nn.compact
    def decode(self, z):
        return nn.Dense(4, name="dec")(z)


def test_linen_methods_are_methods_of_the_block():
    block = nnx.from_linen(Coder(), X, ctx=nnx.Context(0))
    codes = block.encode(X)
    p = block.linen_variables()["params"]
    np.testing.assert_allclose(codes, X @ p["enc"]["kernel"] + p["enc"]["bias"], rtol=1e-6)
    np.testing.assert_allclose(block.decode(codes), block(X), rtol=1e-6)
    with pytest.raises(
        AttributeError,
        match=r"FromLinen has no attribute 'missing' \(and "
        r"from_linen\(Coder\) has no method of that name\)",
    ):
        _ = block.missing
