"""Fixtures for the agent tests: throw-away network namespaces (root only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.agent.netns import NetnsPair, netns_unavailable_reason


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    """A device namespace and a phone namespace, deleted afterwards whatever happens."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    pair = NetnsPair()
    try:
        yield pair
    finally:
        pair.close()
