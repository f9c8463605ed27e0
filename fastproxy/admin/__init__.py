"""The admin plane: monitoring endpoints on a strict h11 listener (and the data port)."""

from ..core.access import AccessPolicy
from .routes import AdminRequest, AdminResponse, Router, error_response, json_response

__all__ = [
    "AccessPolicy",
    "AdminRequest",
    "AdminResponse",
    "Router",
    "error_response",
    "json_response",
]
