"""Strict core (issue 12): nothing silently left out, mis-merged or overwritten; deep graphs work."""

from __future__ import annotations

import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx
from nnx_bridge import nn


class Bag(nnx.Module):
    def __init__(self, **attributes):
        vars(self).update(attributes)


@dataclasses.dataclass(frozen=True)
class Config:
    rate: float
    weight: object = None


class Holder:
    """A plain (hashable by identity) object."""

    def __init__(self, item):
        self.item = item


class Slotted:
    __slots__ = ("item",)

    def __init__(self, item):
        self.item = item


# --- Variables and Modules hidden in static values are errors naming the path -------------


@pytest.mark.parametrize(
    "value,where",
    [
        (Config(0.1, nnx.Param(1.0)), r"cfg\.weight"),
        (frozenset({nnx.Param(1.0)}), r"cfg\{\.\.\.\}"),
        (functools.partial(max, nnx.BatchStat(0.0)), r"cfg\.args\[0\]"),
        (Holder(nnx.Variable("counts", 0)), r"cfg\.item"),
        (Slotted(nnx.Param(2.0)), r"cfg\.item"),
        (Holder(Bag()), r"cfg\.item"),
        (Config(0.1, frozenset({(1, nnx.Param(1.0))})), r"cfg\.weight\{\.\.\.\}\[1\]"),
    ],
)
def test_state_hidden_in_a_static_attribute_is_an_error(value, where):
    kind = "Module" if isinstance(value, Holder) and isinstance(value.item, nnx.Module) else "Variable"
    with pytest.raises(
        TypeError,
        match=rf"Bag has a \w+ inside the static attribute at path 'cfg' "
        rf"\(a \w+\), at {where}\. partition\(\) keeps such values as static "
        rf"fields, so this {kind} would be neither in the State nor trained "
        rf"nor saved\. Hold it directly in a Module attribute",
    ):
        Bag(cfg=value).partition()


def test_hidden_state_inside_a_container_names_the_item_path():
    with pytest.raises(TypeError, match=r"inside the static attribute at path 'items/1' \(a frozenset\)"):
        Bag(items=[1, frozenset({nnx.Param(1.0)})]).partition()


def test_static_values_without_state_are_kept():
    cfg = Config(0.5)
    model = Bag(cfg=cfg, fs=frozenset({1, 2}), fn=functools.partial(max, 3, 1), dtype=jnp.float32)
    state, moduledef = model.partition()
    assert state == {}
    merged = moduledef.merge(state)
    assert merged.cfg is cfg and merged.fs == frozenset({1, 2}) and merged.fn() == 3


class SlotModule(nnx.Module):
    __slots__ = ("size", "w")

    def __init__(self):
        self.w = nnx.Param(jnp.ones(2))
        self.size = 2


def test_slot_variables_are_partitioned_and_merged():
    model = SlotModule()
    state, moduledef = model.partition()
    assert list(state) == ["w"] and moduledef.static_fields == {"size": 2}
    merged = moduledef.merge(state)
    assert type(merged) is SlotModule and merged.size == 2 and "w" not in vars(merged)
    np.testing.assert_array_equal(merged.w.value, jnp.ones(2))
    merged.update_state(nnx.State({"w": nnx.Param(jnp.zeros(2))}))
    assert merged.w.value.tolist() == [0.0, 0.0]


# --- merge checks the Variable type partitioned at each path --------------------------------


def test_merge_rejects_another_variable_type():
    _, moduledef = Bag(w=nnx.Param(jnp.ones(2))).partition()
    state = nnx.State({"w": nnx.BatchStat(jnp.ones(2))})
    with pytest.raises(
        TypeError,
        match=r"merge: path 'w' was partitioned as a Param of collection 'params', "
        r"but the State holds a BatchStat of collection 'batch_stats' there\. "
        r"Merge the State this module's partition\(\) produced",
    ):
        moduledef.merge(state)


def test_merge_rejects_another_collection_of_plain_variables():
    _, moduledef = Bag(n=nnx.Variable("counts", 0)).partition()
    with pytest.raises(
        TypeError,
        match=r"path 'n' was partitioned as a Variable of collection 'counts', "
        r"but the State holds a Variable of collection 'cache'",
    ):
        moduledef.merge(nnx.State({"n": nnx.Variable("cache", 0)}))


def test_merge_accepts_a_plain_variable_for_its_collections_own_type():
    _, moduledef = Bag(w=nnx.Param(1.0), v=nnx.Variable("params", 2.0)).partition()
    swapped = nnx.State({"w": nnx.Variable("params", 1.0), "v": nnx.Param(2.0)})  # e.g. from_variables
    merged = moduledef.merge(swapped)
    assert (merged.w.value, merged.v.value) == (1.0, 2.0)


def test_moduledef_records_the_variable_types():
    assert Bag(w=nnx.Param(1.0)).partition()[1] != Bag(w=nnx.BatchStat(1.0)).partition()[1]


# --- layers check their Variables against their configuration when called -------------------

LAYERS = {
    "Linear": (
        lambda: nn.Linear(2, 2, ctx=nnx.Context(0)),
        lambda: nn.Linear(2, 1, ctx=nnx.Context(0)),
        jnp.ones((1, 2)),
        r"Linear: kernel has shape \(2, 1\) but in_features=2, out_features=2 need \(2, 2\)",
    ),
    "LinearGeneral": (
        lambda: nn.LinearGeneral(2, (2, 3), ctx=nnx.Context(0)),
        lambda: nn.LinearGeneral(2, (3, 2), ctx=nnx.Context(0)),
        jnp.ones((1, 2)),
        (
            r"LinearGeneral: kernel has shape \(2, 3, 2\) but in_features=\(2,\), "
            r"out_features=\(2, 3\) need \(2, 2, 3\)"
        ),
    ),
    "Conv": (
        lambda: nn.Conv(2, 3, 3, ctx=nnx.Context(0)),
        lambda: nn.Conv(2, 3, 2, ctx=nnx.Context(0)),
        jnp.ones((1, 4, 2)),
        (
            r"Conv: kernel has shape \(2, 2, 3\) but in_features=2, out_features=3, "
            r"kernel_size=\(3,\), feature_group_count=1 need \(3, 2, 3\)"
        ),
    ),
    "Embed": (
        lambda: nn.Embed(5, 2, ctx=nnx.Context(0)),
        lambda: nn.Embed(4, 2, ctx=nnx.Context(0)),
        jnp.array([1]),
        r"Embed: embedding has shape \(4, 2\) but num_embeddings=5, features=2 need \(5, 2\)",
    ),
    "LayerNorm": (
        lambda: nn.LayerNorm(3, ctx=nnx.Context(0)),
        lambda: nn.LayerNorm(2, ctx=nnx.Context(0)),
        jnp.ones((1, 3)),
        r"LayerNorm: \w+ has shape \(2,\) but num_features=3 need \(3,\)",
    ),
    "RMSNorm": (
        lambda: nn.RMSNorm(3, ctx=nnx.Context(0)),
        lambda: nn.RMSNorm(2, ctx=nnx.Context(0)),
        jnp.ones((1, 3)),
        r"RMSNorm: scale has shape \(2,\) but num_features=3 need \(3,\)",
    ),
    "BatchNorm": (
        lambda: nn.BatchNorm(3, use_running_average=True, ctx=nnx.Context(0)),
        lambda: nn.BatchNorm(2, use_running_average=True, ctx=nnx.Context(0)),
        jnp.ones((1, 3)),
        r"BatchNorm: \w+ has shape \(2,\) but num_features=3 need \(3,\)",
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_state_for_another_configuration_fails_when_called(name):
    make, make_other, x, message = LAYERS[name]
    _, moduledef = make().partition()
    other_state, _ = make_other().partition()
    layer = moduledef.merge(other_state)  # same paths and types: merge cannot tell
    with pytest.raises(
        ValueError,
        match=message + r"\. Its value \(a merged State or a restored checkpoint\) "
        r"was made for another configuration",
    ):
        layer(x)
    with pytest.raises(ValueError, match=message):  # under jit too, at trace time
        jax.jit(lambda s, x: moduledef.apply(s)(x)[0])(other_state, x)


def test_per_layer_slices_of_a_stacked_state_still_merge_and_run():
    layers = [nn.Linear(2, 2, ctx=nnx.Context(i)) for i in range(3)]
    states = [layer.partition()[0] for layer in layers]
    moduledef = layers[0].partition()[1]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    x = jnp.ones((1, 2))
    ys = jax.vmap(lambda s: moduledef.apply(s)(x)[0])(stacked)
    for y, layer in zip(ys, layers, strict=True):
        np.testing.assert_allclose(y, layer(x), rtol=1e-6)


# --- update_state: shape and dtype must match; partial updates stay allowed ------------------


def test_update_state_rejects_a_scalar_for_an_array():
    model = Bag(w=nnx.Param(jnp.zeros((2, 2))))
    with pytest.raises(
        ValueError,
        match=r"update_state: shape mismatch at path 'w': the module has \(2, 2\), "
        r"the State has \(\)\. Check that the State",
    ):
        model.update_state(nnx.State({"w": nnx.Param(1.0)}))


def test_update_state_rejects_another_dtype():
    model = Bag(w=nnx.Param(jnp.zeros((2, 2))))
    with pytest.raises(
        TypeError,
        match=r"update_state: dtype mismatch at path 'w': the module has dtype "
        r"float32, the State has dtype int32\. Cast it first, e\.g\. "
        r"value\.astype\('float32'\)",
    ):
        model.update_state(nnx.State({"w": nnx.Param(jnp.zeros((2, 2), jnp.int32))}))
    assert model.w.value.dtype == jnp.float32


def test_update_state_changes_nothing_when_one_path_fails():
    model = Bag(a=nnx.Param(jnp.zeros(2)), b=nnx.Param(jnp.zeros(2)))
    with pytest.raises(ValueError, match=r"path 'b'"):
        model.update_state(nnx.State({"a": nnx.Param(jnp.ones(2)), "b": nnx.Param(jnp.ones(3))}))
    assert model.a.value.tolist() == [0.0, 0.0]


def test_update_state_partial_and_through_a_second_path():
    shared = nnx.Param(jnp.zeros(2))
    model = Bag(a=Bag(w=shared), b=Bag(w=shared), n=nnx.Variable("counts", 0))
    model.update_state(nnx.State({"b/w": nnx.Param(jnp.ones(2))}))  # the second path of a shared one
    assert model.a.w is model.b.w and model.a.w.value.tolist() == [1.0, 1.0]
    model.update_state(nnx.State({"n": nnx.Variable("counts", jnp.array(3))}))  # int -> int array
    assert int(model.n.value) == 3


# --- deep and large graphs: no recursion limit -----------------------------------------------


def chain(depth):
    root = node = Bag()
    for i in range(depth):
        node.c = Bag(w=nnx.Param(np.float32(i)))
        node = node.c
    return root


def test_a_10000_deep_chain_partitions_merges_hashes_and_updates():
    depth = 10_000
    assert depth > sys.getrecursionlimit()
    state, moduledef = chain(depth).partition()
    assert len(state) == depth
    other = chain(depth).partition()[1]
    assert hash(moduledef) == hash(other) and moduledef == other
    merged = moduledef.merge(state)
    node = merged
    for _ in range(depth):
        node = node.c
    assert float(node.w.value) == depth - 1
    merged.update_state(state)


def test_100000_variables():
    n = 100_000
    model = Bag(ws=[nnx.Param(np.float32(i)) for i in range(n)])
    state, moduledef = model.partition()
    assert len(state) == n and list(state)[:3] == ["ws/0", "ws/1", "ws/10"]
    merged = moduledef.merge(state)
    assert float(merged.ws[n - 1].value) == n - 1
    merged.update_state(state)


def self_list():
    items = []
    items.append(items)
    return items


def self_dict():
    items = {}
    items["me"] = items
    return items


def indirect_list():
    items = []
    items.append([1, items])
    return items


@pytest.mark.parametrize("make", [self_list, self_dict, indirect_list])
def test_a_container_cycle_is_an_error(make):
    with pytest.raises(
        ValueError,
        match=r"partition: the (list|dict) at path 'items(/\w+)*' contains itself "
        r"\(a container cycle\), so it has no finite State path\. Break the cycle",
    ):
        Bag(items=make()).partition()


def test_a_shared_variable_takes_its_smallest_path_whatever_the_walk_order():
    w = nnx.Param(1.0)
    inner = Bag(w=w)
    model = Bag(z=w, a=Bag(deep=inner), b=inner)
    state, moduledef = model.partition()
    assert list(state) == ["a/deep/w"]
    merged = moduledef.merge(state)
    assert merged.z is merged.a.deep.w is merged.b.w


def test_containers_nested_too_deeply_name_the_path_and_the_fix():
    nested = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(
        ValueError,
        match=r"partition: the containers at path 'deep' are nested hundreds of levels "
        r"deep .* hold the deeper levels in Modules",
    ):
        Bag(deep=nested).partition()
    chain_of_lists = root = Bag()
    for _ in range(3000):  # a chain through containers, one level per Module: fine
        root.children = [Bag()]
        root = root.children[0]
    assert chain_of_lists.partition()[1].merge(nnx.State()) is not None


def test_state_as_a_dict_key_is_an_error():
    with pytest.raises(
        TypeError,
        match=r"The dict at path 'table' has a Param as a key\. Keys are kept as static "
        r"parts of the ModuleDef",
    ):
        Bag(table={nnx.Param(1.0): 1}).partition()
    with pytest.raises(TypeError, match=r"has a Param inside the static attribute at path 'table\[Config"):
        Bag(table={Config(1.0, nnx.Param(1.0)): 1}).partition()


def test_repr_of_a_deep_chain():
    text = repr(chain(3000).partition()[1])
    assert text.startswith(
        "ModuleDef(type=<class 'test_strict_core.Bag'>, index=0, submodules={'c': ModuleDef("
    )
    assert text.count("ModuleDef(") == 3001
