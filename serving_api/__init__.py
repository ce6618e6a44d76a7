"""The HTTP lookup service (FastAPI) and its Python client."""

from serving_api.app import create_app
from serving_api.client import (
    AccessDeniedError,
    InvalidRequestError,
    ServerError,
    ServiceUnavailableError,
    SkewlessClient,
)

__all__ = [
    "AccessDeniedError",
    "InvalidRequestError",
    "ServerError",
    "ServiceUnavailableError",
    "SkewlessClient",
    "create_app",
]
