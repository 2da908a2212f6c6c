"""Module and ModuleDef: the graph walk, containers, sharing, cycles, static fields."""

import collections
import pickle

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, *, ctx):
        self.w = nnx.Param(jnp.full((din, dout), float(ctx.make_rng("params")[0] % 7)))
        self.b = nnx.Param(jnp.zeros(dout))
        self.din, self.dout = din, dout

    def __call__(self, x):
        return x @ self.w.value + self.b.value


class Counter(nnx.Module):
    def __init__(self):
        self.n = nnx.Variable("counts", 0)

    def __call__(self):
        self.n.value += 1
        return self.n.value

    def add(self, k):
        self.n.value += k
        return "added"


class Bag(nnx.Module):
    """A module whose attributes are set by each test."""

    def __init__(self, **attributes):
        vars(self).update(attributes)


Pair = collections.namedtuple("Pair", ["first", "second"])


# --- paths ------------------------------------------------------------------------------


def test_attribute_paths_are_sorted_and_nested():
    ctx = nnx.Context(0)
    model = Bag(encoder=Linear(2, 3, ctx=ctx), decoder=Linear(3, 2, ctx=ctx), steps=nnx.Variable("counts", 0))
    state, moduledef = model.partition()
    assert list(state) == ["decoder/b", "decoder/w", "encoder/b", "encoder/w", "steps"]
    assert state["encoder/w"].value.shape == (2, 3)
    assert moduledef.type is Bag and moduledef.index == 0
    assert set(moduledef.submodules) == {"decoder", "encoder"}
    assert moduledef.submodules["decoder"].index == 1  # walked in sorted attribute order
    assert moduledef.submodules["encoder"].index == 2


def test_container_paths():
    model = Bag(
        layers=[Counter(), Counter()],
        pair=(nnx.Param(1.0), Counter()),
        named=Pair(first=nnx.Param(2.0), second=[nnx.Param(3.0)]),
        table={"b": nnx.Param(4.0), 3: Counter(), "a": {"x": nnx.Param(5.0)}},
    )
    state, _ = model.partition()
    assert list(state) == [
        "layers/0/n",
        "layers/1/n",
        "named/first",
        "named/second/0",
        "pair/0",
        "pair/1/n",
        "table/3/n",
        "table/a/x",
        "table/b",
    ]


def test_merge_rebuilds_containers_of_the_same_types():
    model = Bag(
        layers=[Counter(), Counter()],
        pair=(nnx.Param(1.0), Counter(), 5),
        named=Pair(first=nnx.Param(2.0), second=[1, 2]),
        table={"b": nnx.Param(4.0), 3: Counter()},
        empty=([], (), {}),
    )
    state, moduledef = model.partition()
    merged = moduledef.merge(state)
    assert type(merged.layers) is list and len(merged.layers) == 2
    assert all(type(layer) is Counter for layer in merged.layers)
    assert type(merged.pair) is tuple and merged.pair[2] == 5
    assert type(merged.named) is Pair and merged.named.second == [1, 2]
    assert merged.named.first.value == 2.0
    assert type(merged.table) is dict and set(merged.table) == {"b", 3}
    assert type(merged.table[3]) is Counter
    assert merged.empty == ([], (), {})


def test_static_fields():
    model = Bag(
        name="enc", sizes=[1, 2, 3], shape=(4, 5), rate=0.5, flag=True, nothing=None, dtype=jnp.float32
    )
    state, moduledef = model.partition()
    assert state == {}
    assert moduledef.static_fields == {
        "dtype": jnp.float32,
        "flag": True,
        "name": "enc",
        "nothing": None,
        "rate": 0.5,
    }
    merged = moduledef.merge(state)
    assert (
        merged.name,
        merged.sizes,
        merged.shape,
        merged.rate,
        merged.flag,
        merged.nothing,
        merged.dtype,
    ) == ("enc", [1, 2, 3], (4, 5), 0.5, True, None, jnp.float32)
    assert type(merged.sizes) is list and merged.sizes is not model.sizes


# --- sharing and cycles -----------------------------------------------------------------


def test_shared_submodule_is_stored_once_and_shared_after_merge():
    shared = Counter()
    model = Bag(a=shared, b=shared, c=[shared])
    state, moduledef = model.partition()
    assert list(state) == ["a/n"]
    assert moduledef.submodules == {"a": moduledef.submodules["a"], "b": 1}
    merged = moduledef.merge(state)
    assert merged.a is merged.b is merged.c[0]
    assert merged.a is not shared
    merged.b()
    assert merged.a.n.value == 1


def test_shared_variable_is_stored_once_and_shared_after_merge():
    w = nnx.Param(jnp.ones(2))
    model = Bag(enc=Bag(w=w), dec=Bag(w=w, other=nnx.Param(jnp.ones(2))))
    state, moduledef = model.partition()
    assert list(state) == ["dec/other", "dec/w"]
    merged = moduledef.merge(state)
    assert merged.enc.w is merged.dec.w
    assert merged.dec.other is not merged.dec.w


def test_reference_cycles():
    parent = Bag(steps=nnx.Variable("counts", 0))
    child = Bag(parent=parent, me=None)
    child.me = child
    parent.child = child
    parent.children = {"only": child}
    state, moduledef = parent.partition()
    assert list(state) == ["steps"]
    merged = moduledef.merge(state)
    assert merged.child.parent is merged
    assert merged.child.me is merged.child
    assert merged.children["only"] is merged.child
    assert merged.child.parent.steps is merged.steps


def test_self_reference_partitions_to_an_index():
    m = Bag(w=nnx.Param(1.0))
    m.me = m
    state, moduledef = m.partition()
    assert moduledef.submodules == {"me": 0}
    merged = moduledef.merge(state)
    assert merged.me is merged


# --- partition copies; merge and apply never alias the caller's objects -------------------


def test_partition_returns_copies_of_the_variables():
    model = Counter()
    state, _ = model.partition()
    assert state["n"] is not model.n
    assert type(state["n"]) is nnx.Variable and state["n"].collection == "counts"
    model()
    assert state["n"].value == 0


def test_merge_builds_new_modules_and_variables_each_time():
    state, moduledef = Counter().partition()
    first, second = moduledef.merge(state), moduledef.merge(state)
    assert first is not second
    assert first.n is not second.n and first.n is not state["n"]
    first()
    assert (first.n.value, second.n.value, state["n"].value) == (1, 0, 0)


def test_merge_accepts_several_states_in_any_order():
    model = Bag(lin=Linear(2, 2, ctx=nnx.Context(0)), c=Counter())
    params, counts, moduledef = model.partition("params", "counts")
    for states in [(params, counts), (counts, params)]:
        merged = moduledef.merge(*states)
        np.testing.assert_array_equal(merged.lin.w.value, model.lin.w.value)
        assert merged.c.n.value == 0


def test_merge_with_overlapping_states_takes_the_last():
    state, moduledef = Counter().partition()
    newer = nnx.State({"n": nnx.Variable("counts", 9)})
    assert moduledef.merge(state, newer).n.value == 9
    assert moduledef.merge(newer, state).n.value == 0


def test_merge_needs_a_state():
    _, moduledef = Counter().partition()
    with pytest.raises(TypeError, match=r"ModuleDef.merge needs the State\(s\) from Module.partition\(\)"):
        moduledef.merge()


def test_merge_needs_variables():
    _, moduledef = Counter().partition()
    with pytest.raises(TypeError, match=r"merge: expected a Variable at path 'n', found int\."):
        moduledef.merge(nnx.State({"n": 3}))


# --- partition with filters ----------------------------------------------------------------


def test_partition_with_filters():
    model = Bag(lin=Linear(2, 2, ctx=nnx.Context(0)), c=Counter())
    params, counts, moduledef = model.partition("params", "counts")
    assert list(params) == ["lin/b", "lin/w"] and list(counts) == ["c/n"]
    state, same_moduledef = model.partition()
    assert same_moduledef == moduledef
    only, _ = model.partition(...)
    assert list(only) == list(state)


def test_partition_with_a_non_exhaustive_filter_lists_the_rest():
    with pytest.raises(
        ValueError, match=r"split: 1 variable\(s\) matched none of the filters \('params',\): 'c/n'"
    ):
        Bag(lin=Linear(2, 2, ctx=nnx.Context(0)), c=Counter()).partition("params")


# --- apply ---------------------------------------------------------------------------------


def test_apply_returns_output_and_new_state_and_leaves_inputs_alone():
    state, moduledef = Counter().partition()
    out, (new_state, new_moduledef) = moduledef.apply(state)()
    assert out == 1
    assert new_state["n"].value == 1 and state["n"].value == 0
    assert new_moduledef == moduledef
    out, (newer, _) = moduledef.apply(new_state)()
    assert (out, newer["n"].value, new_state["n"].value) == (2, 2, 1)


def test_apply_a_method_by_name():
    state, moduledef = Counter().partition()
    out, (new_state, _) = moduledef.apply(state).add(5)
    assert out == "added" and new_state["n"].value == 5 and state["n"].value == 0


def test_apply_unknown_method():
    state, moduledef = Counter().partition()
    with pytest.raises(AttributeError, match=r"Counter has no method 'fly' to apply\."):
        _ = moduledef.apply(state).fly


def test_apply_with_several_states():
    model = Linear(2, 2, ctx=nnx.Context(0))
    b, w, moduledef = model.partition(nnx.PathContains("b"), ...)
    assert list(b) == ["b"] and list(w) == ["w"]
    y, (state, _) = moduledef.apply(w, b)(jnp.ones((1, 2)))
    np.testing.assert_array_equal(y, model(jnp.ones((1, 2))))
    assert list(state) == ["b", "w"]


# --- update_state ----------------------------------------------------------------------------


def test_update_state_sets_values_in_place():
    model = Bag(layers=[Counter(), Counter()], named=Pair(Counter(), nnx.Param(1.0)), table={7: Counter()})
    layer0, n0 = model.layers[0], model.layers[0].n
    model.update_state(
        nnx.State(
            {
                "layers/0/n": nnx.Variable("counts", 10),
                "named/second": nnx.Param(2.0),
                "named/first/n": nnx.Variable("counts", 12),
                "table/7/n": nnx.Variable("counts", 7),
            }
        )
    )
    assert model.layers[0] is layer0 and model.layers[0].n is n0
    assert (n0.value, model.layers[1].n.value) == (10, 0)
    assert model.named.second.value == 2.0 and model.named.first.n.value == 12
    assert model.table[7].n.value == 7


def test_update_state_round_trips_partition():
    model = Bag(c=Counter(), lin=Linear(2, 2, ctx=nnx.Context(0)))
    state, _ = model.partition()
    model.c()
    model.lin.w.value = model.lin.w.value + 1
    model.update_state(state)
    again, _ = model.partition()
    assert again["c/n"].value == 0
    chex.assert_trees_all_equal(again, state)  # every value, Variable type and metadata


def test_update_state_keeps_shared_variables_shared():
    w = nnx.Param(0.0)
    model = Bag(a=Bag(w=w), b=Bag(w=w))
    model.update_state(nnx.State({"a/w": nnx.Param(3.0)}))
    assert model.b.w is model.a.w and model.b.w.value == 3.0


def test_update_state_does_not_alias_the_given_variables():
    model = Counter()
    new = nnx.Variable("counts", 4)
    model.update_state(nnx.State({"n": new}))
    model()
    assert new.value == 4 and model.n.value == 5


def test_update_state_updates_a_subset():
    model = Bag(c=Counter(), d=Counter())
    model.update_state(nnx.State({"d/n": nnx.Variable("counts", 1)}))
    assert (model.c.n.value, model.d.n.value) == (0, 1)


def test_update_state_needs_variables():
    with pytest.raises(TypeError, match=r"update_state: expected a Variable at path 'n', found int\."):
        Counter().update_state(nnx.State({"n": 1}))


# --- ModuleDef: immutable, hashable, equal by structure -----------------------------------------


class CountingHash:
    """A static value that counts how often it is hashed."""

    calls = 0

    def __hash__(self):
        CountingHash.calls += 1
        return 1

    def __eq__(self, other):
        return isinstance(other, CountingHash)


def test_moduledef_is_immutable():
    _, moduledef = Counter().partition()
    with pytest.raises(AttributeError, match=r"ModuleDef is immutable; cannot set 'index'"):
        moduledef.index = 3
    with pytest.raises(AttributeError, match=r"ModuleDef is immutable"):
        moduledef.extra = 3


def test_moduledef_hash_is_computed_once():
    model = Bag(tag=CountingHash())
    _, moduledef = model.partition()  # the walk checks hashability once
    before = CountingHash.calls
    h = hash(moduledef)
    assert CountingHash.calls == before + 1
    assert hash(moduledef) == h and {moduledef: 1}[moduledef] == 1
    assert CountingHash.calls == before + 1


def build(ctx_seed=0, din=2, name="net", shared=True):
    ctx = nnx.Context(ctx_seed)
    lin = Linear(din, 2, ctx=ctx)
    return Bag(a=lin, b=lin if shared else Linear(din, 2, ctx=ctx), name=name, layers=[Counter()])


def test_equal_structure_gives_equal_moduledefs():
    _, a = build(ctx_seed=0).partition()
    _, b = build(ctx_seed=1).partition()  # other values, same structure
    assert a is not b and a == b and hash(a) == hash(b)
    _, c = build(din=5).partition()  # other static field value and shapes
    assert c != a


@pytest.mark.parametrize("change", [dict(name="other"), dict(shared=False)])
def test_different_structure_gives_different_moduledefs(change):
    assert build().partition()[1] != build(**change).partition()[1]


def test_moduledef_differs_by_type_and_static_type():
    assert Bag(x=1).partition()[1] != Bag(x=True).partition()[1]
    assert Bag(x=1).partition()[1] != Bag(x=1.0).partition()[1]
    assert Bag(x=[1]).partition()[1] != Bag(x=(1,)).partition()[1]

    class OtherBag(Bag):
        pass

    assert Bag(x=1).partition()[1] != OtherBag(x=1).partition()[1]
    assert Bag(v=nnx.Param(1.0)).partition()[1] == Bag(v=nnx.Param(2.0)).partition()[1]


def test_moduledef_pickles():
    state, moduledef = build().partition()
    again = pickle.loads(pickle.dumps(moduledef))
    assert again == moduledef and hash(again) == hash(moduledef)
    merged = again.merge(state)
    assert merged.a is merged.b


def test_moduledef_paths():
    state, moduledef = build().partition()
    assert moduledef.paths == frozenset(state)
    assert moduledef.paths == {"a/b", "a/w", "layers/0/n"}


def test_moduledef_repr():
    _, moduledef = Bag(c=Counter(), k=3, m=[1]).partition()
    assert repr(moduledef) == (
        f"ModuleDef(type={Bag!r}, index=0, submodules={{'c': ModuleDef(type={Counter!r}, index=1, "
        f"submodules={{}}, static_fields={{}})}}, static_fields={{'k': 3}})"
    )
