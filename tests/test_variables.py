"""Variable, Param, BatchStat: construction, metadata, and pytree behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx


class Tagged(nnx.Variable):
    """A subclass with its own constructor and extra metadata."""

    def __init__(self, value, tag):
        super().__init__("tagged", value)
        self.tag = tag


class TestCache(nnx.Variable, collection="test_variables_cache"):
    __test__ = False


class SubParam(nnx.Param):
    pass


class Plain(nnx.Variable):
    pass


def test_variable_fields():
    v = nnx.Variable("counts", 3, sharding=("data",))
    assert (v.collection, v.value, v.sharding) == ("counts", 3, ("data",))
    assert nnx.Variable("params", 1.0).sharding is None


def test_sharding_is_normalised_to_a_tuple():
    v = nnx.Variable("params", jnp.zeros((2, 3)), sharding=["data", None])
    assert v.sharding == ("data", None)
    assert type(v.sharding) is tuple


def test_param_and_batch_stat_collections():
    assert nnx.Param(1.0).collection == "params"
    assert nnx.BatchStat(1.0).collection == "batch_stats"
    assert nnx.Param(1.0, sharding=("model",)).sharding == ("model",)
    assert isinstance(nnx.Param(1.0), nnx.Variable)


def test_fixed_collection_accepts_its_own_collection_keyword():
    assert nnx.Param(1.0, collection="params").collection == "params"


def test_fixed_collection_subclass():
    v = TestCache(jnp.zeros(3))
    assert v.collection == "test_variables_cache"
    assert nnx.variable_type("test_variables_cache") is TestCache
    assert SubParam(1.0).collection == "params"


def test_variable_type():
    assert nnx.variable_type("params") is nnx.Param
    assert nnx.variable_type("batch_stats") is nnx.BatchStat
    assert nnx.variable_type("counts") is nnx.Variable
    # a subclass of Param does not replace Param as the canonical type
    assert nnx.variable_type("params") is not SubParam


def test_repr_uses_the_subclass_name():
    assert repr(nnx.Variable("counts", 2)) == "Variable(value=2, collection=counts, sharding=None)"
    assert repr(nnx.Param(1.5, sharding=("a",))) == "Param(value=1.5, collection=params, sharding=('a',))"
    assert repr(nnx.BatchStat(0)) == "BatchStat(value=0, collection=batch_stats, sharding=None)"


def test_replace_returns_a_new_variable_of_the_same_kind():
    v = nnx.Param(1.0, sharding=("model",))
    w = v.replace(2.0)
    assert type(w) is nnx.Param and w is not v
    assert (w.value, w.collection, w.sharding) == (2.0, "params", ("model",))
    assert v.value == 1.0
    t = Tagged(1.0, "x").replace(5.0)
    assert type(t) is Tagged and t.tag == "x" and t.value == 5.0


def test_copy_is_a_new_object_with_the_same_contents():
    v = Tagged(jnp.ones(2), "x")
    c = v.copy()
    assert c is not v and type(c) is Tagged
    assert vars(c) == vars(v)
    c.value = 0
    assert v.value.shape == (2,)  # the original still holds its array


ALL_KINDS = [
    nnx.Variable("counts", jnp.arange(3.0), sharding=("data",)),
    nnx.Param(jnp.ones((2, 2)), sharding=(None, "model")),
    nnx.BatchStat(jnp.zeros(2)),
    TestCache(jnp.ones(1)),
    SubParam(jnp.ones(3)),
    Plain("plain", jnp.ones(2), sharding=("x",)),
    Tagged(jnp.ones(2), "tag"),
]


@pytest.mark.parametrize("variable", ALL_KINDS, ids=lambda v: type(v).__name__)
def test_tree_map_keeps_subclass_and_metadata(variable):
    mapped = jax.tree.map(lambda x: x * 2, variable)
    assert type(mapped) is type(variable)
    assert {k: x for k, x in vars(mapped).items() if k != "value"} == {
        k: x for k, x in vars(variable).items() if k != "value"
    }
    np.testing.assert_array_equal(mapped.value, variable.value * 2)


@pytest.mark.parametrize("variable", ALL_KINDS, ids=lambda v: type(v).__name__)
def test_value_is_the_only_leaf_keyed_by_attribute(variable):
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(variable)
    assert len(leaves_with_path) == 1
    ((path, leaf),) = leaves_with_path
    assert path == (jax.tree_util.GetAttrKey("value"),)
    assert leaf is variable.value
    rebuilt = jax.tree_util.tree_unflatten(treedef, [leaf])
    assert type(rebuilt) is type(variable) and vars(rebuilt) == vars(variable)


@pytest.mark.parametrize("variable", ALL_KINDS, ids=lambda v: type(v).__name__)
def test_jit_returns_the_same_kind_of_variable(variable):
    out = jax.jit(lambda v: jax.tree.map(lambda x: x + 1, v))(variable)
    assert type(out) is type(variable)
    assert out.collection == variable.collection and out.sharding == variable.sharding
    np.testing.assert_array_equal(out.value, variable.value + 1)


def test_metadata_is_static_structure():
    def treedef(v):
        return jax.tree_util.tree_structure(v)

    assert treedef(nnx.Param(1.0)) == treedef(nnx.Param(2.0))
    assert treedef(nnx.Param(1.0)) != treedef(nnx.Param(1.0, sharding=("a",)))
    assert treedef(nnx.Variable("a", 1.0)) != treedef(nnx.Variable("b", 1.0))
    assert treedef(Tagged(1.0, "x")) != treedef(Tagged(1.0, "y"))
    assert treedef(nnx.Param(1.0)) != treedef(SubParam(1.0))  # the class is part of the structure
    assert treedef(nnx.Param(1.0)) != treedef(nnx.Variable("params", 1.0))


def test_jit_cache_keeps_variable_types_apart():
    # JAX 0.10 compares dataclass treedefs of different types as equal (with
    # different hashes); the jit cache must still return each caller's type.
    identity = jax.jit(lambda v: v)
    assert type(identity(nnx.Param(1.0))) is nnx.Param
    assert type(identity(nnx.Variable("params", 1.0))) is nnx.Variable
    assert type(identity(SubParam(1.0))) is SubParam
    assert type(identity(nnx.Param(1.0))) is nnx.Param


def test_none_value_is_an_empty_subtree():
    # JAX treats None as an empty subtree; the Variable survives the round trip.
    v = nnx.Param(None)
    leaves, treedef = jax.tree_util.tree_flatten(v)
    assert leaves == []
    assert type(jax.tree_util.tree_unflatten(treedef, [])) is nnx.Param


@pytest.mark.parametrize("collection", ["", 3, None])
def test_collection_must_be_a_non_empty_str(collection):
    with pytest.raises(TypeError, match=r"collection must be a non-empty str such as 'params'; found"):
        nnx.Variable(collection, 1.0)


def test_fixed_collection_rejects_another_collection():
    with pytest.raises(
        ValueError,
        match=r"Param always belongs to collection 'params'; found collection='counts'\. "
        r"Use nnx\.Variable\('counts', value\)",
    ):
        nnx.Param(1.0, collection="counts")


@pytest.mark.parametrize("sharding", ["data", 3])
def test_sharding_must_be_a_sequence_of_names(sharding):
    with pytest.raises(TypeError, match=r"sharding must be a sequence of mesh/logical axis names"):
        nnx.Variable("params", 1.0, sharding=sharding)


def test_sharding_entries_must_be_names():
    with pytest.raises(TypeError, match=r"sharding entries must be str or None; found 1 in \('a', 1\)"):
        nnx.Param(1.0, sharding=("a", 1))
