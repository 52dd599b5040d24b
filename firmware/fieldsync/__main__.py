"""``python -m fieldsync`` runs the command line."""

import sys

from fieldsync.cli.main import main

sys.exit(main())
