"""Shared pieces of error messages: a readable KeyError and the "first 10 and N more" listing."""

from __future__ import annotations

import typing as tp


class ReadableKeyError(KeyError):
    """A KeyError whose ``str`` is its message (a plain KeyError prints the message quoted).

    The base of the library's KeyErrors (a missing RNG stream, an unknown path,
    a missing or unexpected Linen variable), so ``except KeyError`` still
    catches them and tracebacks show the message as written.

    Example:
        >>> from nnx_bridge.errors import ReadableKeyError
        >>> str(ReadableKeyError("no 'dropout' stream: pass one")), str(KeyError("x"))
        ("no 'dropout' stream: pass one", "'x'")
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def listing(items: tp.Sequence[tp.Any], limit: int = 10) -> str:
    """The first `limit` items, quoted and comma separated, then how many are left out.

    Example:
        >>> from nnx_bridge.errors import listing
        >>> listing(["a", "b"]), listing([str(i) for i in range(12)], limit=2)
        ("'a', 'b'", "'0', '1' and 10 more")
    """
    shown = ", ".join(repr(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
