"""The filter language: every form, the combinators, and one language across APIs."""

import jax.numpy as jnp
import pytest

import nnx_bridge as nnx
from nnx_bridge import filters as filterlib


class Cache(nnx.Variable):
    pass


class SubParam(nnx.Param):
    pass


W = nnx.Param(1.0)
SUB = SubParam(1.0)
MEAN = nnx.BatchStat(0.0)
COUNT = nnx.Variable("counts", 0)
CACHE = Cache("cache", 0)


def matches(filter, path, variable):
    return nnx.to_predicate(filter)(path, variable)


def test_collection_name():
    assert matches("params", "w", W)
    assert matches("params", "w", SUB)
    assert not matches("params", "mean", MEAN)
    assert matches("counts", "n", COUNT)
    assert matches("cache", "c", CACHE)


def test_variable_type_matches_with_isinstance():
    assert matches(nnx.Param, "w", W)
    assert matches(nnx.Param, "w", SUB)
    assert not matches(SubParam, "w", W)
    assert not matches(nnx.Param, "n", nnx.Variable("params", 0))
    assert not matches(nnx.Param, "mean", MEAN)
    assert all(matches(nnx.Variable, "x", v) for v in (W, SUB, MEAN, COUNT, CACHE))


@pytest.mark.parametrize("everything", [..., nnx.Everything()], ids=["ellipsis", "Everything"])
def test_everything(everything):
    assert all(matches(everything, "x", v) for v in (W, MEAN, COUNT, CACHE))
    assert filterlib.is_everything(everything)


def test_is_everything_only_for_everything():
    assert not filterlib.is_everything("params")
    assert not filterlib.is_everything(nnx.All())
    assert not filterlib.is_everything(lambda p, v: True)


def test_nothing():
    assert not any(matches(nnx.Nothing(), "x", v) for v in (W, MEAN, COUNT, CACHE))


def test_predicate_gets_the_path_and_the_variable():
    seen = []

    def predicate(path, variable):
        seen.append((path, variable))
        return path.endswith("kernel")

    assert matches(predicate, "l1/kernel", W)
    assert not matches(predicate, "l1/bias", W)
    assert seen == [("l1/kernel", W), ("l1/bias", W)]


def test_path_contains_matches_whole_parts():
    f = nnx.PathContains("encoder")
    assert f("encoder/0/kernel", W)
    assert f("model/encoder", W)
    assert f("encoder", W)
    assert not f("encoders/0", W)
    assert not f("pre_encoder/0", W)
    assert nnx.PathContains("0")("encoder/0/kernel", W)
    assert not nnx.PathContains("0")("encoder/10/kernel", W)


def test_not():
    assert matches(nnx.Not("params"), "mean", MEAN)
    assert not matches(nnx.Not("params"), "w", W)
    assert matches(nnx.Not(nnx.Not(nnx.Param)), "w", W)
    assert not matches(nnx.Not(...), "w", W)


def test_all_and_any():
    kernel = nnx.PathContains("kernel")
    assert matches(nnx.All("params", kernel), "l/kernel", W)
    assert not matches(nnx.All("params", kernel), "l/bias", W)
    assert not matches(nnx.All("params", kernel), "l/kernel", MEAN)
    assert matches(nnx.Any("params", "batch_stats"), "m", MEAN)
    assert not matches(nnx.Any("params", "batch_stats"), "n", COUNT)
    assert matches(nnx.All(), "x", COUNT)  # the empty conjunction
    assert not matches(nnx.Any(), "x", COUNT)  # the empty disjunction


def test_combinators_nest_and_mix_forms():
    f = nnx.Any(nnx.All(nnx.Param, nnx.Not(nnx.PathContains("frozen"))), lambda p, v: p == "n")
    assert f("enc/w", W)
    assert not f("frozen/w", W)
    assert f("n", COUNT)
    assert not f("m", COUNT)


def test_combinators_are_equal_and_hashable_by_content():
    assert nnx.Not("params") == nnx.Not("params")
    assert hash(nnx.Not("params")) == hash(nnx.Not("params"))
    assert nnx.Not("params") != nnx.Not("counts")
    assert nnx.All("a", nnx.Param) == nnx.All("a", nnx.Param)
    assert hash(nnx.All("a", nnx.Param)) == hash(nnx.All("a", nnx.Param))
    assert nnx.All("a", "b") != nnx.Any("a", "b")
    assert nnx.All("a", "b") != nnx.All("b", "a")
    assert nnx.PathContains("x") == nnx.PathContains("x")
    assert nnx.Everything() == nnx.Everything() and nnx.Nothing() == nnx.Nothing()
    assert len({nnx.Not("p"), nnx.Not("p"), nnx.Any("p"), nnx.All("p")}) == 3


def test_reprs():
    assert repr(nnx.Not("params")) == "Not('params')"
    assert repr(nnx.All("params", nnx.PathContains("k"))) == "All('params', PathContains(name='k'))"
    assert repr(nnx.Any()) == "Any()"


def test_to_predicate_returns_callables_unchanged():
    def predicate(path, variable):
        return True

    assert nnx.to_predicate(predicate) is predicate
    f = nnx.PathContains("a")
    assert nnx.to_predicate(f) is f


@pytest.mark.parametrize("bad", [3, 1.5, None, ("params",), b"params"])
def test_invalid_filter(bad):
    with pytest.raises(TypeError, match=r"Invalid filter .* A filter is a collection name \(str\)"):
        nnx.to_predicate(bad)


def test_a_type_must_be_a_variable_subclass():
    with pytest.raises(TypeError, match=r"must be a Variable subclass such as nnx.Param; found Module"):
        nnx.to_predicate(nnx.Module)


def test_combinators_check_their_filters_early():
    with pytest.raises(TypeError, match=r"Invalid filter 3"):
        nnx.Not(3)
    with pytest.raises(TypeError, match=r"Invalid filter 3"):
        nnx.All("params", 3)


# --- one language: every API that selects gives the same selection ------------------


class Net(nnx.Module):
    def __init__(self):
        self.encoder = [Block(), Block()]
        self.head = Block()
        self.steps = nnx.Variable("counts", 0)
        self.cache = Cache("cache", jnp.zeros(1))


class Block(nnx.Module):
    def __init__(self):
        self.kernel = nnx.Param(jnp.ones(2))
        self.bias = SubParam(jnp.zeros(2))
        self.mean = nnx.BatchStat(jnp.zeros(2))


SELECTIONS = [
    (
        "params",
        {
            "encoder/0/bias",
            "encoder/0/kernel",
            "encoder/1/bias",
            "encoder/1/kernel",
            "head/bias",
            "head/kernel",
        },
    ),
    (SubParam, {"encoder/0/bias", "encoder/1/bias", "head/bias"}),
    (Cache, {"cache"}),
    (nnx.PathContains("head"), {"head/bias", "head/kernel", "head/mean"}),
    (nnx.All(nnx.Param, nnx.PathContains("1")), {"encoder/1/bias", "encoder/1/kernel"}),
    (nnx.Any("counts", "cache"), {"steps", "cache"}),
    (nnx.Not(nnx.PathContains("encoder")), {"head/bias", "head/kernel", "head/mean", "steps", "cache"}),
    (lambda path, v: path.endswith("mean"), {"encoder/0/mean", "encoder/1/mean", "head/mean"}),
    (nnx.Nothing(), set()),
]


@pytest.mark.parametrize("filter,expected", SELECTIONS)
def test_same_selection_in_filter_split_and_partition(filter, expected):
    state, _ = Net().partition()
    assert set(state.filter(filter)) == expected
    selected, rest = state.split(filter, ...)
    assert set(selected) == expected
    assert set(rest) == set(state) - expected
    selected, rest, _ = Net().partition(filter, ...)
    assert set(selected) == expected
    assert set(rest) == set(state) - expected
