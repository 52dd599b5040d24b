"""fieldsync: a Couchbase Lite passive peer for field devices."""

__version__ = "0.1.0"
