"""Train/eval mode flags (``deterministic``, ``use_running_average``): one resolution rule.

A layer's mode flag may be given to its constructor (a default) and to each
call (an override). `resolve` picks the call's value when given, else the
constructor's, else the layer's own fallback; with none of them it raises one
error text that says how to pass the flag.
"""

from __future__ import annotations

#: What each flag means while training and in evaluation, for the error message.
_MEANING = {
    "deterministic": "deterministic=False while training (randomness on), True for evaluation",
    "use_running_average": (
        "use_running_average=False while training (batch statistics, running averages updated), "
        "True for evaluation"
    ),
}


def resolve(
    name: str,
    constructor_value: bool | None,
    call_value: bool | None,
    layer: str,
    *,
    fallback: bool | None = None,
) -> bool:
    """The call's value of mode flag `name` if given, else the constructor's, else `fallback`.

    Args:
      name: the flag's name (e.g. ``"deterministic"``), for the error message.
      constructor_value: the value given to the layer's constructor, or None.
      call_value: the value given to the call, or None.
      layer: the layer's name, for the error message.
      fallback: the value when neither gives one; None means one of them must.

    Returns:
      The flag as a bool.

    Raises:
      ValueError: when neither the call, the constructor nor `fallback` gives a value.

    Example:
        >>> from nnx_bridge.nn.modes import resolve
        >>> resolve("deterministic", True, None, "Dropout"), resolve("deterministic", True, False, "Dropout")
        (True, False)
        >>> resolve("deterministic", None, None, "Dropout")
        Traceback (most recent call last):
        ...
        ValueError: Dropout needs deterministic: pass deterministic=True or False to the call (...
    """
    value = call_value if call_value is not None else constructor_value
    if value is None:
        value = fallback
    if value is None:
        meaning = _MEANING.get(name, f"{name}=False while training, True for evaluation")
        raise ValueError(
            f"{layer} needs {name}: pass {name}=True or False to the call ({meaning}), or set a "
            f"default with {layer}(..., {name}=...)."
        )
    return bool(value)
