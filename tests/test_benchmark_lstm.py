"""The LSTM of the benchmark suite: its bridged train step is Linen's program; model selection."""

from __future__ import annotations

import jax
import optax
import pytest

from benchmarks import bridge_overhead, linen_loop, models, suite


def test_lstm_twin_compiles_to_linen_program():
    twin = models.lstm(8)
    x, y = twin.batch(jax.random.PRNGKey(0), 4)
    tx = optax.sgd(0.1)
    states = [
        jax.jit(lambda key, m=m: linen_loop.make_train_state(m, key, x, tx))(jax.random.key(1, impl="rbg"))
        for m in (twin.linen_model(), twin.bridged_linen())
    ]
    assert jax.tree.map(jax.numpy.shape, states[0].params) == jax.tree.map(jax.numpy.shape, states[1].params)
    assert sorted(states[1].params["rnn"]["cell"]) == ["hf", "hg", "hi", "ho", "if", "ig", "ii", "io"]
    linen, bridge = (jax.jit(linen_loop.step).lower(s, x, y, jax.random.PRNGKey(2)).compile() for s in states)
    cmp = bridge_overhead.compare_programs(linen, bridge)
    assert cmp["ops_identical"] and cmp["cost_identical"] and cmp["memory_identical"]
    assert cmp["text_identical_up_to_names"], cmp["diff_head"]
    assert cmp["reference"]["ops"]["while"] >= 2  # the forward and backward scans are loops


def test_select_models():
    chosen = suite.select_models(suite.QUICK, ["lstm", "mlp"])
    assert [name for name, _ in chosen.models] == ["mlp", "lstm"]
    assert suite.select_models(suite.FULL, None) is suite.FULL
    assert suite.parse_args(["--models", "lstm"]).models == ["lstm"]
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['gru'\]; choose from \["):
        suite.select_models(suite.FULL, ["gru", "lstm"])
