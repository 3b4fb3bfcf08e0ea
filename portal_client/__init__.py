"""The portal's Python client: `from portal_client import Client`."""

from portal_client.client import Client
from portal_client.errors import (
    DeploymentFailed,
    Forbidden,
    InvalidUsage,
    NotFound,
    NotSignedIn,
    PortalClientError,
    Refused,
    Unreachable,
)

__all__ = [
    "Client",
    "DeploymentFailed",
    "Forbidden",
    "InvalidUsage",
    "NotFound",
    "NotSignedIn",
    "PortalClientError",
    "Refused",
    "Unreachable",
]
