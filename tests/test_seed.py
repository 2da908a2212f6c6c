"""The seed notebook (``tiny_nnx``): its usage cells, unchanged, with its printed results.

The seed's numbers were produced with JAX's old (non-partitionable) threefry
RNG, so the test runs under ``jax.threefry_partitionable(False)``.
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random

from nnx_bridge import Context, Module, State, Variable

# --- the seed's cell In [30], unchanged ----------------------------------------------


class Linear(Module):
    def __init__(self, din: int, dout: int, *, ctx: Context):
        self.din = din
        self.dout = dout
        key = ctx.make_rng("params")
        self.w = Variable("params", random.uniform(key, (din, dout)))
        self.b = Variable("params", jnp.zeros((dout,)))
        self.count = Variable("counts", 0)

    def __call__(self, x: jax.Array) -> jax.Array:
        self.count.value += 1
        return x @ self.w.value + self.b.value


# --- the seed's printed outputs, verbatim (``__main__`` becomes this test module) -----

SEED_W = np.array([[0.31696808, 0.55285215], [0.31418085, 0.7399571]], dtype=np.float32)
SEED_Y = np.array([[0.63114893, 1.2928092]], dtype=np.float32)

SEED_STATE = """\
state={'b': Variable(value=[0. 0.], collection=params, sharding=None), 'count': Variable(value=2, collection=counts, sharding=None), 'w': Variable(value=[[0.31696808 0.55285215]
 [0.31418085 0.7399571 ]], collection=params, sharding=None)}"""
SEED_MODULEDEF = (
    "moduledef=ModuleDef(type=<class '__main__.Linear'>, index=0, submodules={}, "
    "static_fields={'din': 2, 'dout': 2})"
)
SEED_PARAMS = """\
params={'b': Variable(value=[0. 0.], collection=params, sharding=None), 'w': Variable(value=[[0.31696808 0.55285215]
 [0.31418085 0.7399571 ]], collection=params, sharding=None)}"""
SEED_COUNTS = "counts={'count': Variable(value=2, collection=counts, sharding=None)}"
SEED_Y_REPR = "Array([[0.63114893, 1.2928092 ]], dtype=float32)"


@pytest.fixture
def old_rng():
    with jax.threefry_partitionable(False):
        yield


def test_seed_notebook_cells(old_rng):
    # In [30]
    module = Linear(2, 2, ctx=Context(random.PRNGKey(0)))
    y = module(jnp.ones((1, 2)))
    y = module(jnp.ones((1, 2)))

    state, moduledef = module.partition()
    assert f"{state=}" == SEED_STATE
    assert f"{moduledef=}" == SEED_MODULEDEF.replace("__main__.Linear", f"{__name__}.Linear")

    # In [26]
    params = state.filter("params")
    counts = state.filter("counts")
    assert f"{params=}" == SEED_PARAMS
    assert f"{counts=}" == SEED_COUNTS

    # In [27]
    y, (state, moduledef) = moduledef.apply(State(**params, **counts))(jnp.ones((1, 2)))
    assert repr(y) == SEED_Y_REPR
    np.testing.assert_allclose(y, SEED_Y, rtol=1e-6)

    # In [28]
    module = moduledef.merge(state)
    assert module.count.value == 3


def test_seed_values(old_rng):
    module = Linear(2, 2, ctx=Context(random.PRNGKey(0)))
    np.testing.assert_allclose(module.w.value, SEED_W, rtol=1e-6)
    np.testing.assert_array_equal(module.b.value, np.zeros(2, np.float32))
    # The seed derives the first key as fold_in(key, first 4 bytes of blake2s("0")).
    fold_data = int.from_bytes(hashlib.blake2s(b"0").digest()[:4], byteorder="big")
    key = random.fold_in(random.PRNGKey(0), fold_data)
    np.testing.assert_array_equal(module.w.value, random.uniform(key, (2, 2)))


def test_seed_state_and_moduledef_fields(old_rng):
    module = Linear(2, 2, ctx=Context(random.PRNGKey(0)))
    state, moduledef = module.partition()
    assert list(state) == ["b", "count", "w"]
    assert moduledef.type is Linear
    assert moduledef.index == 0
    assert moduledef.submodules == {}
    assert moduledef.static_fields == {"din": 2, "dout": 2}
    # the seed's filtered States keep the seed's dict shape
    params, counts = state.filter("params"), state.filter("counts")
    assert isinstance(params, dict) and isinstance(params, State)
    assert list(params) == ["b", "w"] and list(counts) == ["count"]
    assert State(**params, **counts).keys() == state.keys()


def test_seed_apply_loop_counts(old_rng):
    module = Linear(2, 2, ctx=Context(random.PRNGKey(0)))
    params, counts, moduledef = module.partition("params", "counts")
    x = jnp.ones((1, 2))
    for expected in (1, 2, 3):
        _, (state, moduledef) = moduledef.apply(params, counts)(x)
        params, counts = state.filter("params"), state.filter("counts")
        assert counts["count"].value == expected
    assert moduledef.merge(params, counts).count.value == 3
