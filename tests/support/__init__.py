"""Shared test support: a test PKI, real databases in temporary folders, and waiting with a
timeout. Import as ``tests.support`` (pytest puts the checkout on ``sys.path`` through the
``pythonpath`` setting in pyproject.toml; no test changes ``sys.path`` itself)."""
