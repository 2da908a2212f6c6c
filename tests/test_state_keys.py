"""Names that contain "/" (Linen's ``"layer_instance/kernel/scale"``) in State paths.

Such a name is one path segment, escaped as in JSON Pointer: ``"~"`` -> ``"~0"``,
``"/"`` -> ``"~1"``. Linen variables with such keys round-trip unchanged through
`from_variables`/`to_variables`, Module partition/merge/update_state and `to_linen`.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnx_bridge as nnx
from nnx_bridge.state import escape_name, join_path, path_sort_key, split_path, unescape_name

# Names made mostly of the characters that matter: the separator, the escape, '0'/'1'.
NAMES = st.text(alphabet=st.sampled_from("/~01ab_"), min_size=1, max_size=8)
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(NAMES)
def test_escape_is_a_segment_and_unescape_inverts_it(name):
    segment = escape_name(name)
    assert "/" not in segment
    assert unescape_name(segment) == name
    assert split_path(segment) == (name,)


@FAST
@given(st.lists(NAMES, min_size=1, max_size=4))
def test_join_and_split_are_inverses(names):
    path = join_path(names)
    assert split_path(path) == tuple(names)
    assert path.count("/") == len(names) - 1
    nnx.State({path: nnx.Param(0.0)})  # a valid State path


def nested(keys: tp.Any) -> tp.Any:
    return st.recursive(
        st.floats(-1, 1, width=32),
        lambda children: st.dictionaries(keys, children, min_size=1, max_size=3),
        max_leaves=6,
    )


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["params", "batch_stats"]),
        st.dictionaries(NAMES, nested(NAMES), min_size=1, max_size=3),
        min_size=1,
    )
)
def test_linen_variables_round_trip_and_keep_jax_order(variables):
    # The two collections must not share paths (nnx paths leave the collection out).
    if "batch_stats" in variables and "params" in variables:
        variables = {
            "params": variables["params"],
            "batch_stats": {f"s{k}": v for k, v in variables["batch_stats"].items()},
        }
    state = nnx.from_variables(variables)
    assert nnx.to_variables(state) == {c: variables[c] for c in sorted(variables)}
    # The State's order is the order in which JAX flattens the nested dicts.
    for collection, tree in variables.items():
        ours = [v.value for v in state.filter(collection).values()]
        assert ours == jax.tree.leaves(tree)


@FAST
@given(
    st.lists(NAMES, min_size=1, max_size=5, unique=True), st.lists(NAMES, min_size=1, max_size=3, unique=True)
)
def test_modules_with_such_attribute_names_and_dict_keys_round_trip(attributes, keys):
    module = nnx.Module()
    for i, name in enumerate(attributes):
        setattr(module, name, nnx.Param(float(i)))
    module.table = {k: nnx.Variable("counts", i) for i, k in enumerate(keys)}  # type: ignore[attr-defined]
    if "table" in attributes:
        return  # the dict replaced that attribute
    state, moduledef = module.partition()
    assert nnx.to_variables(state) == {
        "counts": {"table": {k: i for i, k in enumerate(keys)}},
        "params": {n: float(i) for i, n in enumerate(attributes)},
    }
    rebuilt = moduledef.merge(state)
    rebuilt.update_state(plus_one(state))
    assert [getattr(rebuilt, n).value for n in attributes] == [i + 1.0 for i in range(len(attributes))]
    assert [rebuilt.table[k].value for k in keys] == [i + 1 for i in range(len(keys))]


def plus_one(state: nnx.State) -> nnx.State:
    return nnx.State({p: v.replace(v.value + 1) for p, v in state.items()})


def test_a_linen_weight_norm_key_is_one_segment():
    variables = {
        "params": {"layer_instance": {"kernel": 1.0, "bias": 2.0}, "layer_instance/kernel/scale": 3.0}
    }
    state = nnx.from_variables(variables)
    assert list(state) == ["layer_instance/bias", "layer_instance/kernel", "layer_instance~1kernel~1scale"]
    assert nnx.to_variables(state) == variables


def test_sort_key_compares_the_names_themselves():
    # JAX sorts the dict keys "a/b" < "a0" ('/' is before '0'); the escaped segment "a~1b"
    # would sort after "a0" as a string, so the sort key unescapes.
    assert sorted(["a0", "a~1b"], key=path_sort_key) == ["a~1b", "a0"]
    state = nnx.from_variables({"params": {"a0": 1.0, "a/b": 2.0}})
    assert list(state) == ["a~1b", "a0"]


@pytest.mark.parametrize("path", ["a~b", "a~", "x/y~2", "~"])
def test_a_bad_escape_is_an_error(path):
    with pytest.raises(
        ValueError,
        match=rf"State path {path!r} has '~' not followed by '0' or '1'\. "
        r"In State paths '~' starts an escape: '~0' stands for '~' and '~1' for a '/' "
        r"inside one name .* Write names with nnx\.state\.escape_name\(name\)",
    ):
        nnx.State({path: nnx.Param(1.0)})


class Holder(nnx.Module):
    """Variables under an attribute name and a dict key that contain '/' and '~'."""

    def __init__(self) -> None:
        self.inner = nnx.Module()
        self.inner.kernel = nnx.Param(jnp.ones(2))
        setattr(self, "inner/kernel/scale", nnx.Param(jnp.full((2,), 2.0)))
        self.table = {"a/b~c": nnx.Variable("counts", jnp.zeros(()))}

    def __call__(self, x: jax.Array) -> jax.Array:
        self.table["a/b~c"].value = self.table["a/b~c"].value + 1
        return x * self.inner.kernel.value * getattr(self, "inner/kernel/scale").value


def test_module_partition_merge_and_update_state_with_escaped_names():
    module = Holder()
    state, moduledef = module.partition()
    assert list(state) == ["inner/kernel", "inner~1kernel~1scale", "table/a~1b~0c"]
    rebuilt = moduledef.merge(state)
    assert getattr(rebuilt, "inner/kernel/scale").value.tolist() == [2.0, 2.0]
    assert nnx.to_variables(state) == {
        "counts": {"table": {"a/b~c": state["table/a~1b~0c"].value}},
        "params": {
            "inner": {"kernel": state["inner/kernel"].value},
            "inner/kernel/scale": state["inner~1kernel~1scale"].value,
        },
    }
    rebuilt.update_state(
        nnx.State(
            {
                "inner~1kernel~1scale": nnx.Param(jnp.full((2,), 5.0)),
                "table/a~1b~0c": nnx.Variable("counts", jnp.ones(())),
            }
        )
    )
    assert getattr(rebuilt, "inner/kernel/scale").value.tolist() == [5.0, 5.0]
    assert float(rebuilt.table["a/b~c"].value) == 1.0
    with pytest.raises(
        KeyError,
        match=r"unknown path 'inner~1bias~1scale': Holder at the root has no "
        r"attribute 'inner/bias/scale'",
    ):
        rebuilt.update_state(nnx.State({"inner~1bias~1scale": nnx.Param(jnp.ones(2))}))


def test_to_linen_init_and_apply_keep_keys_with_a_slash():
    model = nnx.to_linen(lambda ctx: Holder())
    x = jnp.arange(2.0)
    variables = model.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == {
        "counts": {"table": {"a/b~c": ()}},
        "params": {"inner": {"kernel": (2,)}, "inner/kernel/scale": (2,)},
    }
    params = {"inner": {"kernel": jnp.array([1.0, 3.0])}, "inner/kernel/scale": jnp.array([2.0, 2.0])}
    y, updates = model.apply({"params": params, "counts": variables["counts"]}, x, mutable=["counts"])
    np.testing.assert_array_equal(y, [0.0, 6.0])
    # init returns the counter as constructed (0); this apply is its first update.
    assert jax.tree.map(float, updates) == {"counts": {"table": {"a/b~c": 1.0}}}
    grads = jax.grad(
        lambda p: model.apply({"params": p, "counts": variables["counts"]}, x, mutable=["counts"])[0].sum()
    )(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    np.testing.assert_array_equal(grads["inner/kernel/scale"], [0.0, 3.0])


def test_optax_labels_from_a_filter_see_escaped_paths():
    params = {"inner": {"kernel": 1.0}, "inner/kernel/scale": 2.0}
    labels = nnx.labels(params, {"scale": lambda path, v: path.endswith("~1scale")}, default="rest")
    assert labels == {"inner": {"kernel": "rest"}, "inner/kernel/scale": "scale"}


def test_from_linen_holds_linen_keys_with_a_slash():
    import flax.linen as linen

    x = jnp.ones((2, 3))
    layer = linen.WeightNorm(linen.Dense(4), variable_filter=("kernel",))  # hashable: a tuple
    wrapped = nnx.from_linen(layer, x, ctx=nnx.Context(0))
    state, moduledef = wrapped.partition()
    assert list(state) == ["layer_instance/bias", "layer_instance/kernel", "layer_instance~1kernel~1scale"]
    expected = layer.apply(nnx.to_variables(state), x)
    np.testing.assert_array_equal(moduledef.merge(state)(x), expected)
    assert nnx.to_variables(state) == wrapped.linen_variables()
