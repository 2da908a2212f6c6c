"""Shared test configuration.

Hypothesis profiles: ``nnx_bridge`` (the default) keeps the whole core suite well under a minute
on two CPU cores; ``thorough`` is for hunting bugs locally
(``HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py``).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import nnx_bridge as nnx

settings.register_profile(
    "nnx_bridge",
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "nnx_bridge"))


def _assert_variables_equal(path, a, b):
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    assert isinstance(a, nnx.Variable), f"{path}: not a Variable: {a!r}"
    assert {k: v for k, v in vars(a).items() if k != "value"} == {
        k: v for k, v in vars(b).items() if k != "value"
    }, f"{path}: metadata differs: {vars(a)} != {vars(b)}"
    assert type(a.value) is type(b.value) or (hasattr(a.value, "dtype") and hasattr(b.value, "dtype")), (
        f"{path}: value types {type(a.value).__name__} != {type(b.value).__name__}"
    )
    np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=path)
    assert np.asarray(a.value).dtype == np.asarray(b.value).dtype, path


@pytest.fixture(scope="session")
def assert_states_equal():
    """Checks two States hold the same paths in the same order, with equal Variables.

    Equal Variables: the same subclass, the same metadata (collection, sharding
    and any other attribute), equal values of the same dtype.
    """

    def check(a, b):
        assert type(a) is nnx.State and type(b) is nnx.State, (type(a), type(b))
        assert list(a) == list(b)
        for path in a:
            _assert_variables_equal(path, a[path], b[path])

    return check
