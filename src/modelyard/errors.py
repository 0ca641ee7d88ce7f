"""One root error with a shallow hierarchy.

Every error carries a stable machine-readable ``code`` and the HTTP status the REST API answers with.
Messages say what was wrong, what was expected and how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations

from typing import Any


class YardError(Exception):
    """Root of every error modelyard raises on purpose."""

    code = "yard_error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """JSON error body for the REST API."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        # Details add context; they never replace the stable code or the message.
        body.update((k, v) for k, v in self.details.items() if k not in body)
        return {"error": body}


class UsageError(YardError):
    """The caller asked for something malformed: bad argument, bad value, bad config."""

    code = "usage_error"
    http_status = 400
    exit_code = 2


class ValidationError(UsageError):
    """Input was well formed but not acceptable (wrong type, out of range, too large)."""

    code = "validation_error"
    http_status = 422


class UnsafePathError(UsageError):
    """A key, name or path tried to leave its root or carried forbidden characters."""

    code = "unsafe_path"
    http_status = 400


class NotFoundError(YardError):
    code = "not_found"
    http_status = 404


class AlreadyExistsError(YardError):
    code = "already_exists"
    http_status = 409


class AuthenticationError(YardError):
    """No identity, or an unknown, expired or revoked token."""

    code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(YardError):
    """The actor is known but its role does not allow the action."""

    code = "permission_denied"
    http_status = 403


class ResidencyError(YardError):
    """Data of one region would be written to a store of another region."""

    code = "residency_violation"
    http_status = 403


class IntegrityError(YardError):
    """Stored bytes do not match their digest, signature or authentication tag."""

    code = "integrity_error"
    http_status = 500


class MasterKeyError(YardError):
    """The master key is missing, malformed, or not the key an object was wrapped with."""

    code = "key_error"
    http_status = 500


class ConfigError(YardError):
    """Settings or the home directory are missing or inconsistent."""

    code = "config_error"
    http_status = 500


class GateFailedError(YardError):
    """A model version failed a quality gate (metric, fairness, robustness, latency or size)."""

    code = "gate_failed"
    http_status = 409


class CollectedMeanwhileError(YardError):
    """Stored files a write reused were deleted by `yard gc` before it committed; it recorded nothing."""

    code = "collected_meanwhile"
    http_status = 409


class BackendError(YardError):
    """A storage or database backend failed (connection, permissions, disk full)."""

    code = "backend_error"
    http_status = 503


__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "BackendError",
    "CollectedMeanwhileError",
    "ConfigError",
    "GateFailedError",
    "IntegrityError",
    "MasterKeyError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResidencyError",
    "UnsafePathError",
    "UsageError",
    "ValidationError",
    "YardError",
]
