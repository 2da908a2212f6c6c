"""Every public Linen layer and pure layer function has a counterpart or a stated reason.

The README's "Layer coverage" table is the one source of truth. Linen's layers
are enumerated from ``flax.linen`` itself: the `flax.linen.Module` subclasses it
exports, the pooling and attention functions (masks included) defined in
``flax.linen.pooling`` / ``flax.linen.attention``, and the activations it
re-exports from JAX. Transforms (``scan``, ``vmap``...) and helpers
(``initializers``, ``tabulate``...) are not layers.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import typing as tp

import flax.linen as linen
import jax
import pytest
from flax import nnx as flax_nnx
from flax.linen import activation, attention, pooling

import nnx_bridge

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
NONE = "—"


class Row(tp.NamedTuple):
    linen: tuple[str, ...]
    counterpart: str  # "nnx.nn.X", "nnx.X", "jax.nn.<name>" or NONE
    notes: str


def coverage_rows() -> list[Row]:
    text = README.read_text()
    match = re.search(r"^## Layer coverage\n(.*?)(?=^## |\Z)", text, flags=re.DOTALL | re.MULTILINE)
    assert match, "README.md has no '## Layer coverage' section"
    rows = []
    for line in match.group(1).splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"coverage row needs 3 columns (Linen | nnx_bridge | notes): {line!r}"
        names = tuple(re.findall(r"`([^`]+)`", cells[0]))
        counterpart = re.findall(r"`([^`]+)`", cells[1])
        rows.append(Row(names, counterpart[0] if counterpart else cells[1], cells[2]))
    header, *body = rows
    assert header.counterpart == "nnx_bridge", f"unexpected table header {header}"
    return body


def linen_layer_classes() -> set[str]:
    return {
        n
        for n in dir(linen)
        if not n.startswith("_")
        and inspect.isclass(getattr(linen, n))
        and issubclass(getattr(linen, n), linen.Module)
    }


def linen_layer_functions() -> set[str]:
    """Pooling and attention functions (masks included) defined in their Linen modules."""
    return {
        n
        for module in (pooling, attention)
        for n, f in vars(module).items()
        if inspect.isfunction(f) and f.__module__ == module.__name__ and not n.startswith("_")
    }


def linen_activations() -> set[str]:
    """The JAX activations that ``flax.linen`` re-exports."""
    return {
        n
        for n in dir(activation)
        if not n.startswith("_")
        and getattr(linen, n, None) is getattr(activation, n)
        and callable(getattr(activation, n))
        and not inspect.isclass(getattr(activation, n))
        and getattr(getattr(activation, n), "__module__", "").startswith("jax")
    }


def expected_names() -> set[str]:
    return linen_layer_classes() | linen_layer_functions() | linen_activations()


def resolve(counterpart: str, linen_name: str) -> tp.Any:
    """The object a counterpart names (``<name>`` stands for the Linen name), or None."""
    dotted = counterpart.replace("<name>", linen_name)
    roots = {"nnx": nnx_bridge, "jax": jax}
    head, *rest = dotted.split(".")
    if head not in roots:
        return None
    obj: tp.Any = roots[head]
    for part in rest:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def test_enumeration_finds_linen_layers():
    classes, functions, activations = linen_layer_classes(), linen_layer_functions(), linen_activations()
    assert {"Dense", "LSTMCell", "RNN", "Bidirectional", "MultiHeadDotProductAttention"} <= classes
    assert {"avg_pool", "max_pool", "make_causal_mask", "dot_product_attention"} <= functions
    assert {"relu", "gelu", "softmax", "tanh"} <= activations
    assert not (activations & classes) and "compact" not in activations and "scan" not in functions


def test_every_linen_layer_has_a_row():
    listed = [name for row in coverage_rows() for name in row.linen if not name.startswith("flax.nnx.")]
    duplicated = sorted({n for n in listed if listed.count(n) > 1})
    missing = sorted(expected_names() - set(listed))
    assert not missing, (
        f"Linen layers/functions without a row in README.md's 'Layer coverage' table: {missing}. "
        f"Add each with its nnx_bridge counterpart, or '{NONE}' and the reason."
    )
    assert not duplicated, f"listed more than once in the coverage table: {duplicated}"


def test_rows_name_real_linen_and_flax_nnx_names():
    unknown = []
    for row in coverage_rows():
        for name in row.linen:
            if name.startswith("flax.nnx."):
                known = hasattr(flax_nnx, name.removeprefix("flax.nnx."))
            else:
                known = name in expected_names() or hasattr(linen, name)
            if not known:
                unknown.append(name)
    assert not unknown, f"coverage rows name things Flax does not export: {unknown}"


def test_rows_without_counterpart_state_a_reason():
    silent = [row.linen for row in coverage_rows() if row.counterpart == NONE and not row.notes]
    assert not silent, f"rows with no counterpart ('{NONE}') must say why in the notes column: {silent}"


def test_only_activations_map_to_jax():
    activations = linen_activations()
    outside = [
        name
        for row in coverage_rows()
        if row.counterpart.startswith("jax.")
        for name in row.linen
        if name not in activations
    ]
    assert not outside, f"only JAX activations may map to jax.*; layers must live in nnx_bridge: {outside}"


def test_every_counterpart_exists():
    missing = sorted(
        f"{name} -> {row.counterpart.replace('<name>', name)}"
        for row in coverage_rows()
        if row.counterpart != NONE
        for name in row.linen
        if resolve(row.counterpart, name) is None
    )
    assert not missing, (
        f"{len(missing)} coverage-table counterpart(s) do not exist in nnx_bridge / jax: "
        + "; ".join(missing)
    )


@pytest.mark.parametrize("name", ["LSTMCell", "RNN", "Bidirectional", "Linear"])
def test_counterparts_are_exported_at_top_level_too(name):
    assert getattr(nnx_bridge, name) is getattr(nnx_bridge.nn, name)
