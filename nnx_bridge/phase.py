"""Phase: what the current call lets a Module do with state it does not have yet.

Linen lets the init call decide things: a Variable may be sized from the first
input (``self.variable(...)``), a module may ask ``self.is_initializing()``, and
``self.sow(...)`` records values only into mutable collections. nnx_bridge
modules read the same answers from the active `Phase`. Outside any bridge call
the phase is `EAGER`: not initialising, Variables may be created, every
collection is mutable. The Linen bridge installs its own phases for ``init`` and
``apply`` with `active`.
"""

from __future__ import annotations

import contextlib
import contextvars
import typing as tp

if tp.TYPE_CHECKING:
    from nnx_bridge.module import Module
    from nnx_bridge.variables import Variable


class Phase:
    """The rules of one call. Subclass and override to change them.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.phase.current().is_initializing()
        False
        >>> class Init(nnx.phase.Phase):
        ...     def is_initializing(self):
        ...         return True
        >>> with nnx.phase.active(Init()):
        ...     nnx.phase.current().is_initializing()
        True
    """

    def is_initializing(self) -> bool:
        """True while the module's Variables are being initialised (Linen's ``init``)."""
        return False

    def is_mutable(self, collection: str) -> bool:
        """Whether `collection` may be written (and created, by ``sow``) in this call."""
        return True

    def missing(self, module: "Module", collection: str, name: str) -> "Variable[tp.Any] | None":
        """Called by ``Module.variable`` when `module` has no attribute `name`.

        Returns the Variable to store there (e.g. one the caller was given), or
        None to create it from its ``init_fn``; raises if it may not be created.
        """
        return None

    def claim(self, module: "Module", name: str) -> None:
        """Called by ``Module.variable`` when it returns the Variable already in `name`.

        The bridge's ``apply`` puts given variables that the freshly built module
        lacks in place before the call, and uses this to find any that no
        ``variable(...)`` call asked for. ``sow`` calls it too when it finds the
        Variable already there.
        """

    def created(self, module: "Module", name: str) -> None:
        """Called by ``Module.variable`` and ``Module.sow`` after they create Variable `name`.

        The bridge uses it to tell Variables created this way (a legitimate change
        of structure) from any other attribute a call adds.
        """


EAGER = Phase()
_current: contextvars.ContextVar[Phase] = contextvars.ContextVar("nnx_bridge_phase", default=EAGER)


def current() -> Phase:
    """The active Phase (`EAGER` outside any bridge call)."""
    return _current.get()


@contextlib.contextmanager
def active(phase: Phase) -> tp.Iterator[Phase]:
    """Makes `phase` the active Phase inside the ``with`` block (nests, thread-safe)."""
    token = _current.set(phase)
    try:
        yield phase
    finally:
        _current.reset(token)
