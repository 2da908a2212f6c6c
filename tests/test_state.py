"""State: sorted flat mapping, filter/split/merge, pytree, and Linen's variables layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx


def P(x=0.0):
    return nnx.Param(x)


# --- order ----------------------------------------------------------------------------


def test_sorted_on_construction():
    state = nnx.State({"w": P(), "b": P(), "a/z": P(), "a/b": P()})
    assert list(state) == ["a/b", "a/z", "b", "w"]


def test_sorted_by_parts_level_by_level():
    # '-' (0x2d) sorts before '/' (0x2f) as characters, but "a" < "a-c" as path parts.
    state = nnx.State({"a-c": P(), "a/b": P(), "a0": P(), "a/b0/c": P(), "a/b/c": P()})
    assert list(state) == ["a/b", "a/b/c", "a/b0/c", "a-c", "a0"]


def test_order_matches_jax_flattening_of_the_nested_dict():
    paths = ["a-c", "a/b/c", "a/b0", "a0/x", "B/y", "layers/10/k", "layers/2/k", "layers/0/k"]
    nested = {}
    for path in paths:
        node = nested
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = 0
    jax_order = [
        "/".join(k.key for k in keypath) for keypath, _ in jax.tree_util.tree_flatten_with_path(nested)[0]
    ]
    assert list(nnx.State({p: P() for p in paths})) == jax_order


def test_kwargs_construction_as_in_the_seed():
    params = nnx.State({"w": P(), "b": P()})
    counts = nnx.State({"count": nnx.Variable("counts", 0)})
    state = nnx.State(**params, **counts)
    assert list(state) == ["b", "count", "w"]
    assert state["w"] is params["w"]


def test_setitem_keeps_the_order():
    state = nnx.State({"b": P(), "d": P()})
    state["c"] = P()
    state["a"] = P()
    replacement = P(1.0)
    state["b"] = replacement
    assert list(state) == ["a", "b", "c", "d"]
    assert state["b"] is replacement


def test_update_setdefault_and_or_keep_the_order():
    state = nnx.State({"m": P()})
    state.update({"z": P()}, a=P())
    assert list(state) == ["a", "m", "z"]
    default = P(2.0)
    assert state.setdefault("b", default) is default
    assert state.setdefault("b", P()) is default
    assert list(state) == ["a", "b", "m", "z"]
    state |= {"c": P()}
    assert list(state) == ["a", "b", "c", "m", "z"]
    merged = nnx.State({"y": P()}) | {"x": P()}
    assert type(merged) is nnx.State and list(merged) == ["x", "y"]


def test_delete_keeps_the_order():
    state = nnx.State({"a": P(), "b": P(), "c": P()})
    del state["b"]
    state.pop("a")
    state["aa"] = P()
    assert list(state) == ["aa", "c"]


def test_copy_is_shallow_and_a_state():
    state = nnx.State({"b": P(), "a": P()})
    copy = state.copy()
    assert type(copy) is nnx.State and copy is not state
    assert list(copy) == ["a", "b"]
    assert all(copy[p] is state[p] for p in state)
    copy["c"] = P()
    assert "c" not in state


@pytest.mark.parametrize("path", ["", "/a", "a/", "a//b", 3, None])
def test_invalid_paths(path):
    with pytest.raises(ValueError, match=r"State paths are non-empty strings of '/'-separated names"):
        nnx.State({path: P()})
    state = nnx.State()
    with pytest.raises(ValueError, match=r"State paths are non-empty strings"):
        state[path] = P()
    with pytest.raises(ValueError, match=r"State paths are non-empty strings"):
        state.update({path: P()})


def test_repr_is_the_dict_repr_in_path_order():
    state = nnx.State({"w": nnx.Param(1.0), "n": nnx.Variable("counts", 2)})
    assert repr(state) == (
        "{'n': Variable(value=2, collection=counts, sharding=None), "
        "'w': Param(value=1.0, collection=params, sharding=None)}"
    )


# --- filter / split / merge -----------------------------------------------------------


@pytest.fixture
def mixed():
    return nnx.State(
        {
            "l1/kernel": nnx.Param(1.0),
            "l1/bias": nnx.Param(2.0),
            "bn/mean": nnx.BatchStat(3.0),
            "steps": nnx.Variable("counts", 4),
        }
    )


def test_filter_selects_the_union_in_path_order(mixed):
    assert list(mixed.filter("params")) == ["l1/bias", "l1/kernel"]
    assert list(mixed.filter("counts", nnx.BatchStat)) == ["bn/mean", "steps"]
    assert list(mixed.filter(...)) == list(mixed)
    assert mixed.filter(nnx.Nothing()) == {}
    selected = mixed.filter("params")
    assert type(selected) is nnx.State
    assert selected["l1/bias"] is mixed["l1/bias"]


def test_filter_needs_a_filter(mixed):
    with pytest.raises(TypeError, match=r"State.filter needs at least one filter"):
        mixed.filter()


def test_split_gives_each_variable_to_the_first_matching_filter(mixed):
    params, kernels, rest = mixed.split("params", nnx.PathContains("kernel"), ...)
    assert list(params) == ["l1/bias", "l1/kernel"]
    assert list(kernels) == []
    assert list(rest) == ["bn/mean", "steps"]
    assert all(type(s) is nnx.State for s in (params, kernels, rest))


def test_split_with_one_filter_returns_a_state(mixed):
    everything = mixed.split(...)
    assert type(everything) is nnx.State
    assert list(everything) == list(mixed)


def test_split_remainder_lists_the_leftover_paths(mixed):
    with pytest.raises(
        ValueError,
        match=r"split: 2 variable\(s\) matched none of the filters \('params',\): "
        r"'bn/mean', 'steps'\. Add a filter for them, or end the filters with \.\.\. to collect the rest\.",
    ):
        mixed.split("params")


def test_split_remainder_lists_at_most_ten_paths():
    state = nnx.State({f"v{i:02d}": nnx.Variable("counts", i) for i in range(13)})
    with pytest.raises(ValueError, match=r"13 variable\(s\) .*'v09' and 3 more\."):
        state.split("params")


def test_split_needs_a_filter(mixed):
    with pytest.raises(TypeError, match=r"State.split needs at least one filter"):
        mixed.split()


def test_merge_inverts_split(mixed):
    params, rest = mixed.split("params", ...)
    for merged in (nnx.State.merge(params, rest), nnx.State.merge(rest, params), params.merge(rest)):
        assert type(merged) is nnx.State
        assert list(merged) == list(mixed)
        assert all(merged[p] is mixed[p] for p in mixed)


def test_merge_last_state_wins():
    first, second = P(1.0), P(2.0)
    merged = nnx.State.merge(nnx.State({"w": first}), nnx.State({"w": second, "a": P()}))
    assert merged["w"] is second and list(merged) == ["a", "w"]


def test_merge_of_one_state_is_a_shallow_copy(mixed):
    merged = nnx.State.merge(mixed)
    assert merged is not mixed and merged == mixed


def test_merge_of_one_plain_dict_is_sorted():
    merged = nnx.State.merge({"b": P(), "a": P()})
    assert type(merged) is nnx.State and list(merged) == ["a", "b"]


@pytest.mark.parametrize("others", [([1],), (nnx.State(), "params")])
def test_merge_takes_states(others):
    with pytest.raises(TypeError, match=r"State.merge takes States; found (list|str)\."):
        nnx.State.merge(*others)


# --- pytree -----------------------------------------------------------------------------


def test_pytree_leaves_are_values_in_path_order(mixed):
    assert jax.tree.leaves(mixed) == [3.0, 2.0, 1.0, 4]


def test_pytree_key_paths_are_the_state_paths(mixed):
    flat, _ = jax.tree_util.tree_flatten_with_path(mixed)
    keys = [jax.tree_util.keystr(path) for path, _ in flat]
    assert keys == ["['bn/mean'].value", "['l1/bias'].value", "['l1/kernel'].value", "['steps'].value"]


def test_tree_map_returns_a_state_of_the_same_variables(mixed):
    doubled = jax.tree.map(lambda x: x * 2, mixed)
    assert type(doubled) is nnx.State
    assert list(doubled) == list(mixed)
    for path in mixed:
        assert type(doubled[path]) is type(mixed[path])
        assert doubled[path].collection == mixed[path].collection
        assert doubled[path].value == mixed[path].value * 2


def test_equal_states_have_equal_treedefs():
    a = nnx.State({"w": nnx.Param(jnp.ones(2)), "n": nnx.Variable("counts", 0)})
    b = nnx.State({"n": nnx.Variable("counts", 5), "w": nnx.Param(jnp.zeros(2))})
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    c = nnx.State({"w": nnx.Param(jnp.ones(2)), "m": nnx.Variable("counts", 0)})
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(c)


# --- Linen's variables layout -------------------------------------------------------------


def test_to_variables_nests_by_collection_and_path():
    state = nnx.State(
        {
            "l1/kernel": nnx.Param(1.0),
            "l1/bias": nnx.Param(2.0),
            "bn/mean": nnx.BatchStat(3.0),
            "steps": nnx.Variable("counts", 4),
        }
    )
    variables = nnx.to_variables(state)
    assert variables == {
        "batch_stats": {"bn": {"mean": 3.0}},
        "counts": {"steps": 4},
        "params": {"l1": {"bias": 2.0, "kernel": 1.0}},
    }
    assert list(variables) == ["batch_stats", "counts", "params"]


def test_to_variables_keeps_the_value_objects():
    value = jnp.arange(3)
    assert nnx.to_variables(nnx.State({"a/b": nnx.Param(value)}))["params"]["a"]["b"] is value


def test_to_variables_allows_one_path_prefix_in_different_collections():
    state = nnx.State({"a": nnx.Param(1.0), "a/b": nnx.Variable("counts", 2)})
    assert nnx.to_variables(state) == {"counts": {"a": {"b": 2}}, "params": {"a": 1.0}}


def test_from_variables_builds_canonical_types():
    state = nnx.from_variables(
        {
            "params": {"l1": {"kernel": 1.0}},
            "batch_stats": {"bn": {"mean": 0.0}},
            "test_state_misc": {"k": 5},
        }
    )
    assert list(state) == ["bn/mean", "k", "l1/kernel"]
    assert type(state["l1/kernel"]) is nnx.Param
    assert type(state["bn/mean"]) is nnx.BatchStat
    assert type(state["k"]) is nnx.Variable and state["k"].collection == "test_state_misc"
    assert all(v.sharding is None for v in state.values())


def test_from_variables_inverts_to_variables():
    variables = {
        "params": {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}},
        "batch_stats": {"bn": {"mean": jnp.zeros(3), "var": jnp.ones(3)}},
    }
    again = nnx.to_variables(nnx.from_variables(variables))
    assert jax.tree.structure(again) == jax.tree.structure(variables)
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables), strict=True))


def test_to_variables_errors():
    with pytest.raises(TypeError, match=r"to_variables: expected a Variable at path 'w', found float"):
        nnx.to_variables(nnx.State({"w": 1.0}))
    with pytest.raises(
        ValueError, match=r"to_variables: path 'a/b' goes through 'a', which is itself a variable"
    ):
        nnx.to_variables(nnx.State({"a": nnx.Param(1.0), "a/b": nnx.Param(2.0)}))
    # a dict value is not a leaf, so the prefix check sees it from the other side
    with pytest.raises(
        ValueError, match=r"to_variables: path 'a' of collection 'params' is both a variable and a prefix"
    ):
        nnx.to_variables({"a/b": nnx.Param(2.0), "a": nnx.Param(1.0)})


def test_from_variables_errors():
    with pytest.raises(TypeError, match=r"from_variables expects Linen variables .*; found list"):
        nnx.from_variables([1])
    with pytest.raises(TypeError, match=r"collection 'params' must map names to values, found ArrayImpl"):
        nnx.from_variables({"params": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"path 'w' appears in collections 'params' and 'counts'"):
        nnx.from_variables({"params": {"w": 1.0}, "counts": {"w": 1}})
    with pytest.raises(ValueError, match=r"keys must be non-empty strings; found '' under 'x'"):
        nnx.from_variables({"params": {"x": {"": 1.0}}})
    with pytest.raises(ValueError, match=r"keys must be non-empty strings; found 0 under the top level"):
        nnx.from_variables({"params": {0: 1.0}})


def test_jit_with_a_state_and_a_plain_dict_give_the_same_values(mixed):
    as_dict = {p: v.value for p, v in mixed.items()}
    out_state = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s))(mixed)
    out_dict = jax.jit(lambda d: jax.tree.map(lambda x: x + 1, d))(as_dict)
    assert list(out_state) == list(out_dict)
    for path in mixed:
        np.testing.assert_array_equal(out_state[path].value, out_dict[path])
