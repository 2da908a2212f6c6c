"""Shared test configuration.

Hypothesis profiles: ``nnx_bridge`` (the default) keeps the whole core suite well under a minute
on two CPU cores; ``thorough`` is for hunting bugs locally
(``HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py``).
"""

import os

import helpers
import pytest
from hypothesis import HealthCheck, settings

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


@pytest.fixture(scope="session")
def assert_states_equal():
    """Checks two States hold the same paths in the same order, with equal Variables.

    Equal Variables: the same subclass, the same metadata (collection, sharding
    and any other attribute), equal values of the same dtype.
    """

    return helpers.assert_states_equal
