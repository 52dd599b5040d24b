"""The passive peer: ``URLEndpointListener`` and its configuration."""

from fieldsync.listener.config import (
    DEFAULT_PORT,
    ListenerConfigurationError,
    URLEndpointListenerConfiguration,
)
from fieldsync.listener.listener import ConnectionInfo, ConnectionStatus, URLEndpointListener

__all__ = [
    "DEFAULT_PORT",
    "ConnectionInfo",
    "ConnectionStatus",
    "ListenerConfigurationError",
    "URLEndpointListener",
    "URLEndpointListenerConfiguration",
]
