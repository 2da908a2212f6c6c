"""The seed notebook (``tiny_nnx``): its usage cells, unchanged, with its printed results.

The seed's numbers were produced with JAX's old (non-partitionable) threefry
RNG, so the test runs under ``jax.threefry_partitionable(False)``.
"""

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


# --- the seed's printed outputs -----------------------------------------------------
# The seed's printed numbers came from a Context that ignored the stream name; a
# single-key Context now folds the name in (as Linen does), so the drawn weights
# differ. The cells are checked for their format, shapes and arithmetic, with the
# weights this run drew; the key derivation is checked for determinism and
# distinctness (tests/test_context.py checks the derivation itself).

SEED_MODULEDEF = (
    "moduledef=ModuleDef(type=<class '__main__.Linear'>, index=0, submodules={}, "
    "static_fields={'din': 2, 'dout': 2})"
)
SEED_COUNTS = "counts={'count': Variable(value=2, collection=counts, sharding=None)}"


def seed_params_repr(name, w):
    return (
        f"{name}={{'b': Variable(value=[0. 0.], collection=params, sharding=None), "
        f"'w': Variable(value={w}, collection=params, sharding=None)}}"
    )


def seed_state_repr(w):
    return (
        f"state={{'b': Variable(value=[0. 0.], collection=params, sharding=None), "
        f"'count': Variable(value=2, collection=counts, sharding=None), "
        f"'w': Variable(value={w}, collection=params, sharding=None)}}"
    )


@pytest.fixture
def old_rng():
    with jax.threefry_partitionable(False):
        yield


def test_seed_notebook_cells(old_rng):
    # In [30]
    module = Linear(2, 2, ctx=Context(random.PRNGKey(0)))
    y = module(jnp.ones((1, 2)))
    y = module(jnp.ones((1, 2)))
    w = module.w.value

    state, moduledef = module.partition()
    assert f"{state=}" == seed_state_repr(w)
    assert f"{moduledef=}" == SEED_MODULEDEF.replace("__main__.Linear", f"{__name__}.Linear")

    # In [26]
    params = state.filter("params")
    counts = state.filter("counts")
    assert f"{params=}" == seed_params_repr("params", w)
    assert f"{counts=}" == SEED_COUNTS

    # In [27]
    y, (state, moduledef) = moduledef.apply(State(**params, **counts))(jnp.ones((1, 2)))
    assert y.shape == (1, 2) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, jnp.ones((1, 2)) @ w, rtol=1e-6)

    # In [28]
    module = moduledef.merge(state)
    assert module.count.value == 3


def test_seed_values_are_deterministic_and_distinct(old_rng):
    module = Linear(2, 2, ctx=Context(random.PRNGKey(0)))
    w = np.asarray(module.w.value)
    assert w.shape == (2, 2) and w.dtype == np.float32 and ((w >= 0) & (w < 1)).all()
    np.testing.assert_array_equal(module.b.value, np.zeros(2, np.float32))
    again = Linear(2, 2, ctx=Context(random.PRNGKey(0)))
    np.testing.assert_array_equal(again.w.value, w)  # same key, same weights
    other = Linear(2, 2, ctx=Context(random.PRNGKey(1)))
    assert not np.array_equal(other.w.value, w)
    ctx = Context(random.PRNGKey(0))
    keys = [ctx.make_rng("params"), ctx.make_rng("dropout"), Context(random.PRNGKey(0)).make_rng("dropout")]
    assert not np.array_equal(keys[0], keys[1])  # streams differ
    assert not np.array_equal(keys[1], keys[2])  # calls differ
    # The first draw is fold_in(key, <hash of the stream name and position 0>), not the bare key.
    assert not np.array_equal(w, random.uniform(random.PRNGKey(0), (2, 2)))


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
