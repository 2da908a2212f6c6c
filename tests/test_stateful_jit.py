"""nnx_bridge.jit: write-back, sharing, aliasing, lazy Variables, Contexts, caching, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx_bridge as nnx
from nnx_bridge.scan import Scan


class Counter(nnx.Module):
    def __init__(self, ctx=None):
        self.n = nnx.Variable("counts", jnp.array(0))
        self.lin = nnx.Linear(2, 3, ctx=ctx or nnx.Context(0))

    def __call__(self, x):
        self.n.value += 1
        return self.lin(x)


class Pair(nnx.Module):
    """Two names for one submodule and two names for one Variable."""

    def __init__(self):
        self.a = Counter()
        self.b = self.a
        self.w = nnx.Param(jnp.ones(2))
        self.w_alias = self.w


class Lazy(nnx.Module):
    def __call__(self, x):
        total = self.variable("stats", "total", jnp.zeros, x.shape[-1:])
        total.value = total.value + x.sum(0)
        self.sow("intermediates", "seen", x.shape[0])
        return total.value


def traced(fn):
    """`fn` with a count of how often JAX traced it."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    wrapper.traces = calls
    return wrapper


X = jnp.ones((1, 2))


# ----------------------------------------------------------------------------------
# write-back, identity, sharing, aliasing
# ----------------------------------------------------------------------------------
def test_changes_are_written_back_and_the_result_is_returned():
    m = Counter()
    step = nnx.jit(lambda m, x: m(x))
    y = step(m, X)
    step(m, X)
    assert int(m.n.value) == 2
    np.testing.assert_allclose(y, m.lin(X), rtol=1e-6)


def test_returned_argument_objects_are_the_callers_objects():
    m = Counter()
    out = nnx.jit(lambda m: (m, m.lin, m.n, {"k": m.lin.kernel}))(m)
    assert out[0] is m and out[1] is m.lin and out[2] is m.n and out[3]["k"] is m.lin.kernel


def test_shared_submodules_and_variables_stay_shared():
    p = Pair()

    @nnx.jit
    def step(p):
        assert p.a is p.b and p.w is p.w_alias
        p.b.n.value += 5
        p.w_alias.value = p.w.value * 3

    step(p)
    assert p.a is p.b and p.w is p.w_alias
    assert int(p.a.n.value) == 5 and p.w.value.tolist() == [3.0, 3.0]


def test_aliasing_between_arguments_is_kept():
    m = Counter()

    @nnx.jit
    def step(a, b, lin, n):
        assert a is b and lin is a.lin and n is a.n
        a.n.value += 1
        b.n.value += 10
        n.value += 100

    step(m, m, m.lin, m.n)
    assert int(m.n.value) == 111


def test_variables_in_states_and_plain_pytrees_are_written_back():
    state = nnx.State({"n": nnx.Variable("counts", jnp.array(1))})
    free = nnx.Param(jnp.zeros(2))

    @nnx.jit
    def step(tree):
        tree["state"]["n"].value += 1
        tree["free"].value = tree["free"].value + 1.0
        return tree["x"] * 2

    y = step({"state": state, "free": free, "x": jnp.ones(2)})
    assert int(state["n"].value) == 2 and free.value.tolist() == [1.0, 1.0] and y.tolist() == [2.0, 2.0]


def test_unchanged_variables_keep_their_buffers():
    m = Counter()
    kernel = m.lin.kernel.value
    nnx.jit(lambda m: m.n.value + 1)(m)
    assert m.lin.kernel.value is kernel and int(m.n.value) == 0


# ----------------------------------------------------------------------------------
# lazily created Variables and structure changes
# ----------------------------------------------------------------------------------
def test_lazily_created_variables_appear_on_the_callers_module():
    m = Lazy()
    fn = traced(lambda m, x: m(x))
    step = nnx.jit(fn)
    step(m, jnp.ones((2, 3)))
    assert m.total.value.tolist() == [2.0, 2.0, 2.0] and isinstance(m.total, nnx.Variable)
    assert m.total.collection == "stats" and len(m.seen.value) == 1
    step(m, jnp.ones((2, 3)))  # the Variables now exist: a new structure, one more trace
    step(m, jnp.ones((2, 3)))
    assert m.total.value.tolist() == [6.0, 6.0, 6.0] and len(m.seen.value) == 3
    assert len(fn.traces) == 3  # one per call: the sown tuple grows, and its length is structure


def test_structure_changed_outside_between_calls_is_picked_up():
    seq = nnx.nn.Sequential(nnx.Linear(2, 2, ctx=nnx.Context(0)))
    step = nnx.jit(lambda s, x: s(x))
    y1 = step(seq, X)
    seq.layers.append(nnx.Linear(2, 1, ctx=nnx.Context(1)))  # in place, no setattr
    assert step(seq, X).shape == (1, 1) and y1.shape == (1, 2)
    seq.layers[1] = nnx.Linear(2, 4, ctx=nnx.Context(2))
    assert step(seq, X).shape == (1, 4)
    seq.extra = 3  # a new static attribute
    assert step(seq, X).shape == (1, 4)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda m: setattr(m, "extra", nnx.Linear(1, 1, ctx=nnx.Context(0))),
            "a new attribute 'extra' holding a Linear",
        ),
        (lambda m: setattr(m.lin, "in_features", 7), "attribute 'lin/in_features' was replaced"),
        (lambda m: setattr(m, "n", nnx.Variable("counts", jnp.array(3))), "attribute 'n' was replaced"),
        (lambda m: delattr(m, "lin"), "attribute 'lin' was deleted"),
    ],
)
def test_structure_changes_inside_are_errors(change, message):
    m = Counter()

    def fn(m):
        change(m)

    with pytest.raises(
        ValueError, match=rf"jit\(fn\): the function changed the structure of an argument: {message}"
    ):
        nnx.jit(fn)(m)
    assert isinstance(m.lin, nnx.Linear) and int(m.n.value) == 0


def test_in_place_list_change_inside_is_an_error():
    seq = nnx.nn.Sequential(nnx.Linear(2, 2, ctx=nnx.Context(0)))
    with pytest.raises(ValueError, match="a list or dict of the module graph was changed in place"):
        nnx.jit(lambda s: s.layers.append(jax.nn.relu))(seq)


def test_new_modules_can_be_returned():
    @nnx.jit
    def create(seed):
        return nnx.Linear(2, 3, ctx=nnx.Context(seed)), {"n": nnx.Variable("counts", jnp.array(4))}

    model, extra = create(jax.random.PRNGKey(0))
    assert isinstance(model, nnx.Linear) and model.kernel.value.shape == (2, 3)
    assert int(extra["n"].value) == 4
    np.testing.assert_array_equal(
        model.kernel.value, nnx.Linear(2, 3, ctx=nnx.Context(jax.random.PRNGKey(0))).kernel.value
    )


def test_a_new_module_sharing_an_arguments_variable_is_an_error():
    class Holder(nnx.Module):
        def __init__(self, v):
            self.v = v

    m = Counter()
    with pytest.raises(ValueError, match="holds, at 'v', a Variable of an argument"):
        nnx.jit(lambda m: Holder(m.n))(m)


# ----------------------------------------------------------------------------------
# Contexts
# ----------------------------------------------------------------------------------
def test_context_advances_and_never_retraces():
    fn = traced(lambda ctx, x: nnx.Dropout(0.5)(x, deterministic=False, ctx=ctx))
    step = nnx.jit(fn)
    ctx = nnx.Context({"dropout": jax.random.PRNGKey(0)})
    masks = [np.asarray(step(ctx, jnp.ones(64))) for _ in range(4)]
    assert ctx.count == 4 and len(fn.traces) == 1
    assert len({m.tobytes() for m in masks}) == 4
    forked = [np.asarray(step(ctx.fork(), jnp.ones(64))) for _ in range(3)]  # fork per step
    assert len(fn.traces) == 1 and len({m.tobytes() for m in masks + forked}) == 7


def test_context_inside_a_pytree_and_shared_context():
    @nnx.jit
    def draw(batch, ctx_again):
        return batch["ctx"].make_rng("dropout"), ctx_again.make_rng("dropout")

    ctx = nnx.Context(0)
    a1, b1 = draw({"ctx": ctx}, ctx)
    a2, _ = draw({"ctx": ctx}, ctx)
    assert ctx.count == 2  # one advance per call, however often it is passed
    assert not np.array_equal(a1, b1) and not np.array_equal(a1, a2)


def test_the_same_context_state_gives_the_same_keys():
    step = nnx.jit(lambda ctx: ctx.make_rng("params"))
    assert np.array_equal(step(nnx.Context(3)), step(nnx.Context(3)))


def test_returned_context_is_the_callers():
    ctx = nnx.Context(0)
    assert nnx.jit(lambda c: c)(ctx) is ctx


# ----------------------------------------------------------------------------------
# caching: no retrace, no walk
# ----------------------------------------------------------------------------------
def test_no_retrace_across_calls_and_unrelated_module_changes():
    fn = traced(lambda m, x: m(x))
    step = nnx.jit(fn)
    m = Counter()
    for _ in range(3):
        step(m, X)
    Counter().lin.extra = 1  # bumps the structure version: the walk is redone, not the trace
    step(m, X)
    step(Counter(nnx.Context(1)), X)  # another object of the same structure
    assert len(fn.traces) == 1 and int(m.n.value) == 4


def test_cached_call_does_not_walk_the_graph(monkeypatch):
    m = Counter()
    step = nnx.jit(lambda m: m(X))
    step(m)
    import nnx_bridge.stateful_jit as jitlib

    def fail(*args):
        raise AssertionError("walked")

    monkeypatch.setattr(jitlib, "walk", fail)
    monkeypatch.setattr(nnx.Module, "partition", fail)
    step(m)
    step(m)
    assert int(m.n.value) == 3


# ----------------------------------------------------------------------------------
# options: static, donation, errors
# ----------------------------------------------------------------------------------
def test_static_argnums_and_argnames():
    fn = traced(lambda m, k, *, scale: m.lin(X)[:, :k] * scale)
    step = nnx.jit(fn, static_argnums=1, static_argnames="scale")
    m = Counter()
    assert step(m, 2, scale=2.0).shape == (1, 2)
    step(m, 2, scale=2.0)
    assert step(m, 1, scale=2.0).shape == (1, 1) and len(fn.traces) == 2
    with pytest.raises(TypeError, match=r"argument 1 is a compile-time constant and must be hashable"):
        step(m, [1], scale=1.0)


def test_donated_module_keeps_every_variable_usable():
    m = Counter()
    step = nnx.jit(lambda m, x: m(x), donate_argnums=0)
    step(m, X)
    step(m, X)
    assert int(m.n.value) == 2 and m.lin.kernel.value.shape == (2, 3)
    np.asarray(m.lin.kernel.value)  # still readable


def test_misuse_errors():
    with pytest.raises(TypeError, match="jit expects a function to compile; found int"):
        nnx.jit(3)
    with pytest.raises(TypeError, match="static_argnums takes non-negative ints"):
        nnx.jit(lambda x: x, static_argnums=-1)
    with pytest.raises(TypeError, match="static_argnums includes 2, but the call has only 1"):
        nnx.jit(lambda x: x, static_argnums=2)(1)
    with pytest.raises(ValueError, match="in_shardings has 1 entries but the call has 2"):
        nnx.jit(lambda a, b: a, in_shardings=(None,))(Counter(), 1.0)


# ----------------------------------------------------------------------------------
# composition: Scan, BatchNorm / Dropout train and eval
# ----------------------------------------------------------------------------------
def test_scan_model_under_jit():
    class Stack(nnx.Module):
        def __init__(self):
            self.layers = Scan(Counter, 3, ctx=nnx.Context(0))

    class Block(nnx.Module):
        def __init__(self, *, ctx):
            self.lin = nnx.Linear(2, 2, ctx=ctx)
            self.n = nnx.Variable("counts", jnp.array(0))

        def __call__(self, x):
            self.n.value += 1
            return jnp.tanh(self.lin(x))

    scan = Scan(Block, 3, ctx=nnx.Context(0))
    eager = nnx.scan.unstack(scan)
    step = nnx.jit(lambda s, x: s(x))
    y = step(scan, X)
    expected = X
    for block in eager:
        expected = block(expected)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert scan.block.n.value.tolist() == [1, 1, 1]


def test_batchnorm_and_dropout_train_and_eval():
    class Net(nnx.Module):
        def __init__(self, *, ctx):
            self.lin = nnx.Linear(3, 4, ctx=ctx)
            self.bn = nnx.BatchNorm(4, ctx=ctx)
            self.drop = nnx.Dropout(0.5)

        def __call__(self, x, *, train, ctx=None):
            x = self.bn(self.lin(x), use_running_average=not train)
            return self.drop(x, deterministic=not train, ctx=ctx)

    net = Net(ctx=nnx.Context(0))
    fn = traced(lambda net, x, ctx, train: net(x, train=train, ctx=ctx))
    step = nnx.jit(fn, static_argnames="train")
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    ctx = nnx.Context({"dropout": jax.random.PRNGKey(2)})
    y1 = step(net, x, ctx, train=True)
    mean_after_one = net.bn.mean.value
    y2 = step(net, x, ctx, train=True)
    assert not np.array_equal(mean_after_one, np.zeros(4)) and not np.array_equal(
        net.bn.mean.value, mean_after_one
    )
    assert not np.array_equal(y1 == 0, y2 == 0)  # new dropout mask
    mean = net.bn.mean.value
    e1, e2 = step(net, x, ctx, train=False), step(net, x, ctx, train=False)
    assert net.bn.mean.value is mean and np.array_equal(e1, e2)
    np.testing.assert_allclose(e1, net(x, train=False), rtol=1e-5, atol=1e-6)
    assert len(fn.traces) == 2


def test_a_new_context_per_step_reuses_the_cached_walk(monkeypatch):
    m = Counter()
    step = nnx.jit(lambda m, ctx: m.lin.kernel.value.sum() + ctx.make_rng("dropout")[0])
    step(m, nnx.Context(0))
    import nnx_bridge.stateful_jit as jitlib

    def fail(*args):
        raise AssertionError("walked")

    monkeypatch.setattr(jitlib, "walk", fail)
    assert step(m, nnx.Context(1)) != step(m, nnx.Context(2))
    with pytest.raises(AssertionError, match="walked"):  # a Context of other streams: a new entry
        step(m, nnx.Context({"dropout": 0}))


def test_a_modules_bound_method_writes_back():
    m = Counter()
    call = nnx.jit(m.__call__)
    call(X)
    call(X)
    assert int(m.n.value) == 2 and isinstance(m.n.value, jax.Array)
    with pytest.raises(TypeError, match=r"nnx_bridge\.jit takes donate_argnums only"):
        nnx.jit(lambda m: m, donate_argnames="m")


def test_the_cache_does_not_keep_a_dropped_model_alive():
    import gc
    import weakref

    step = nnx.jit(lambda m, x: m(x))
    m = Counter()
    step(m, X)
    ref, kernel = weakref.ref(m), weakref.ref(m.lin.kernel)
    del m
    gc.collect()
    assert ref() is None and kernel() is None


def test_donate_argnums_count_static_arguments():
    step = nnx.jit(lambda k, m: m(X)[:, :k], static_argnums=0, donate_argnums=1)
    m = Counter()
    assert step(2, m).shape == (1, 2) and step(2, m).shape == (1, 2)
    assert int(m.n.value) == 2


def test_cache_size_counts_traces():
    step = nnx.jit(lambda m, x: m(x))
    m = Counter()
    for _ in range(3):
        step(m, X)
    assert step._cache_size() == 1
    step(m, jnp.ones((2, 2)))
    assert step._cache_size() == 2


def test_lazy_variables_on_nested_modules_through_grad_under_jit():
    class Inner(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(3))

        def __call__(self, x):
            seen = self.variable("stats", "seen", jnp.zeros, (3,))
            seen.value = seen.value + x
            return (self.w.value * x).sum()

    class Outer(nnx.Module):
        def __init__(self):
            self.blocks = [Inner(), Inner()]

    m = Outer()

    @nnx.jit
    def step(m, x):
        return nnx.grad(lambda m: m.blocks[0](x) + m.blocks[1](2 * x))(m)

    grads = step(m, jnp.ones(3))
    assert list(grads) == ["blocks/0/w", "blocks/1/w"] and grads["blocks/1/w"].value.tolist() == [2.0] * 3
    assert m.blocks[0].seen.value.tolist() == [1.0] * 3 and m.blocks[1].seen.value.tolist() == [2.0] * 3
    step(m, jnp.ones(3))
    assert m.blocks[1].seen.value.tolist() == [4.0] * 3


def test_fast_path_notices_context_aliasing_and_new_objects():
    step = nnx.jit(lambda m, a, b: (m.n.value, a.make_rng("dropout"), b.make_rng("dropout")))
    m, ctx = Counter(), nnx.Context(0)
    step(m, ctx, ctx)
    step(m, ctx, ctx)
    assert ctx.count == 2
    c1, c2 = nnx.Context(1), nnx.Context(2)
    step(m, c1, c2)
    assert (c1.count, c2.count, ctx.count) == (1, 1, 2)
    other = Counter()
    other.n.value = jnp.array(7)
    assert int(step(other, c1, c2)[0]) == 7
