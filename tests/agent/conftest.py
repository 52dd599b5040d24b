"""Fixtures for the agent tests: throw-away network namespaces (root only)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netns import NetnsPair, netns_unavailable_reason


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
