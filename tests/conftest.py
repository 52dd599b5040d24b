"""Fixtures shared by every test folder (see tests/support)."""

pytest_plugins = ["tests.support.fixtures"]
