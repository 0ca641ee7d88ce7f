"""The error hierarchy: one root, stable codes, HTTP statuses for the REST API, CLI exit codes."""

from __future__ import annotations

import importlib
import json
import re

import pytest

from modelyard import errors
from modelyard.errors import UsageError, YardError

# Load the whole package so that the subclass scan below sees errors defined anywhere in it.
for _module in ("modelyard.cli", "modelyard.config", "modelyard.core", "modelyard.testing"):
    importlib.import_module(_module)


def _all_subclasses(cls: type[YardError]) -> list[type[YardError]]:
    out: list[type[YardError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


# Every error modelyard itself defines (wherever it is defined), not subclasses made by tests.
ERRORS = [YardError] + [c for c in _all_subclasses(YardError) if c.__module__.startswith("modelyard.")]

# Codes are part of the REST API: changing one breaks clients. Adding an error means adding it here.
STABLE_CODES = {
    "YardError": ("yard_error", 500),
    "UsageError": ("usage_error", 400),
    "ValidationError": ("validation_error", 422),
    "UnsafePathError": ("unsafe_path", 400),
    "NotFoundError": ("not_found", 404),
    "AlreadyExistsError": ("already_exists", 409),
    "AuthenticationError": ("unauthenticated", 401),
    "PermissionDeniedError": ("permission_denied", 403),
    "ResidencyError": ("residency_violation", 403),
    "IntegrityError": ("integrity_error", 500),
    "MasterKeyError": ("key_error", 500),
    "ConfigError": ("config_error", 500),
    "GateFailedError": ("gate_failed", 409),
    "BackendError": ("backend_error", 503),
    "CollectedMeanwhileError": ("collected_meanwhile", 409),
}


def test_every_error_is_known_and_keeps_its_code() -> None:
    assert {c.__name__: (c.code, c.http_status) for c in ERRORS} == STABLE_CODES


def test_codes_are_unique() -> None:
    codes = [c.code for c in ERRORS]
    assert len(codes) == len(set(codes)), codes


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_code_status_and_exit_code(cls: type[YardError]) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", cls.code)
    assert 400 <= cls.http_status <= 599
    assert cls.exit_code == (2 if issubclass(cls, UsageError) else 1)
    if issubclass(cls, UsageError):
        assert 400 <= cls.http_status <= 499  # a caller's mistake is never a server error


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_carries_its_message(cls: type[YardError]) -> None:
    assert issubclass(cls, YardError) and issubclass(cls, Exception)
    err = cls("something was wrong; expected X; do Y")
    assert str(err) == err.message == "something was wrong; expected X; do Y"
    assert err.details == {}


def test_hierarchy_is_shallow() -> None:
    for cls in ERRORS:
        depth = cls.__mro__.index(YardError)
        assert depth <= 2, f"{cls.__name__} is {depth} levels below YardError"


def test_to_dict_shape() -> None:
    err = errors.NotFoundError("artifact abc not found", digest="abc", project="default")
    body = err.to_dict()
    assert body == {
        "error": {
            "code": "not_found",
            "message": "artifact abc not found",
            "digest": "abc",
            "project": "default",
        }
    }
    assert json.loads(json.dumps(body)) == body


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_to_dict_for_every_error(cls: type[YardError]) -> None:
    body = cls("msg").to_dict()
    assert body == {"error": {"code": cls.code, "message": "msg"}}


def test_details_cannot_replace_the_code() -> None:
    err = errors.PermissionDeniedError("denied", code="ok", action="artifact.write")
    assert err.to_dict() == {
        "error": {"code": "permission_denied", "message": "denied", "action": "artifact.write"}
    }


def test_errors_are_catchable_by_family() -> None:
    with pytest.raises(UsageError):
        raise errors.UnsafePathError("../etc")
    with pytest.raises(YardError):
        raise errors.IntegrityError("flipped byte")
    assert not issubclass(errors.ConfigError, UsageError)
    assert not issubclass(errors.IntegrityError, UsageError)
