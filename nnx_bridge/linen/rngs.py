"""A Context whose streams are the RNGs of the enclosing Linen scope."""

from __future__ import annotations

import typing as tp

import jax

from nnx_bridge.context import Context, MissingRngStreamError


class LinenRngs(Context):
    """Draws keys from a bound Linen module's RNG streams (``rngs=`` of init/apply).

    Linen's own fallback applies: a stream that was not given is drawn from
    ``'params'`` when that stream exists (so init needs only ``'params'``).
    Lifted transforms (``nn.scan(split_rngs=...)``) therefore split these keys
    exactly as they split a Linen module's.
    """

    def __init__(self, module: tp.Any, owner: str):
        self.key = None
        self.count = 0
        self.count_path = ()
        self._module = module
        self._owner = owner

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(sorted(self._module.scope.rngs))

    def has_rng(self, name: str) -> bool:
        return self._module.has_rng(name) or self._module.has_rng("params")

    def make_rng(self, name: str) -> jax.Array:
        if not self.has_rng(name):
            given = ", ".join(repr(s) for s in self.streams) or "none"
            raise MissingRngStreamError(
                f"{self._owner} needs the RNG stream {name!r}, but the Linen call got RNGs for: "
                f"{given}. Pass it, e.g. model.apply(variables, ..., rngs={{{name!r}: key}})."
            )
        return self._module.make_rng(name)

    def fork(self) -> Context:
        """A plain Context with one fresh key per available stream (usable in transforms)."""
        streams = self.streams or ("params",)
        return Context({name: self.make_rng(name) for name in streams})

    def __repr__(self) -> str:
        return f"LinenRngs(streams={list(self.streams)})"
