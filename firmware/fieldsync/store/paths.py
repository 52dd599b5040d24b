"""Where databases live by default."""

from __future__ import annotations

import os
from pathlib import Path

#: Directory name of the default database; also its name (the ``/<db>`` in replication URLs).
DEFAULT_DATABASE_NAME = "fieldsync"

DATABASE_FILE = "db.sqlite3"
BLOBS_DIR = "blobs"


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME`` if set to an absolute path, else ``~/.local/share``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    return Path.home() / ".local" / "share"


def default_database_path() -> Path:
    """The database used when none is given: ``<user data dir>/fieldsync``."""
    return user_data_dir() / DEFAULT_DATABASE_NAME
