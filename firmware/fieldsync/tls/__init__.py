"""TLS identities, the keystore, client-certificate authentication and SSL contexts.

This package's modules load ``cryptography`` (about 9 MB of the process's memory); this
``__init__`` does not, so a listener without TLS never loads it.
"""

#: The identity a listener presents when none is configured (``fieldsync run`` and the agent).
DEFAULT_SERVER_ALIAS = "fieldsync"
