"""The core and the layers work with Flax absent; the Linen bridge loads on first use."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_WITHOUT_FLAX = textwrap.dedent(
    """
    import sys

    class NoFlax:
        def find_spec(self, name, path=None, target=None):
            if name == "flax" or name.startswith("flax."):
                raise ImportError(f"flax is blocked in this test (import of {name!r})")
            return None

    sys.meta_path.insert(0, NoFlax())

    import jax, jax.numpy as jnp
    import nnx_bridge as nnx

    model = nnx.Sequential(nnx.Linear(3, 4, ctx=nnx.Context(0)), nnx.LayerNorm(4, ctx=nnx.Context(1)))
    state, moduledef = model.partition()
    y, (state, moduledef) = moduledef.apply(state)(jnp.ones((2, 3)))
    assert y.shape == (2, 4), y.shape
    expected = ["layers/0/bias", "layers/0/kernel", "layers/1/bias", "layers/1/scale"]
    assert sorted(state) == expected, list(state)
    assert not [m for m in sys.modules if m == "flax" or m.startswith("flax.")]
    try:
        nnx.to_linen
    except ImportError as error:
        assert "flax" in str(error), error
    else:
        raise AssertionError("nnx.to_linen should need Flax")
    print("ok")
    """
)


def test_core_and_layers_work_without_flax() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FLAX], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_import_does_not_load_flax_until_the_bridge_is_used() -> None:
    code = (
        "import sys, nnx_bridge as nnx\n"
        "before = 'flax' in sys.modules\n"
        "nnx.to_linen\n"
        "print(before, 'flax.linen' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "True"]


def test_import_starts_no_backend_so_jax_distributed_can_initialize_after_it() -> None:
    code = (
        "from jax._src import xla_bridge\n"
        "import nnx_bridge, nnx_bridge.linen, nnx_bridge.sharding, nnx_bridge.training\n"
        "print(bool(xla_bridge._backends))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False"]
