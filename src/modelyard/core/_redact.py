"""Secrets out of text people and logs see: store URLs in error messages, doctor rows, a run's ``cmd``."""

from __future__ import annotations

import re

REDACTED = "***"
# A URL's password: urllib ends the user info at the last "@" before the path ("p@ss"), SQLAlchemy at the
# first "@" and takes '/', '?' and '#' in it ("p/w"). Both readings are redacted, so neither shows a tail.
_SCHEME_USER = r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#:@'\"]*:)"
_URL_PASSWORDS = (
    re.compile(_SCHEME_USER + r"[^\s/?#'\"]*@"),
    re.compile(_SCHEME_USER + r"[^\s@'\"]*@"),
)
# Query parameters that carry a secret: libpq's password, presigned URLs' signature and credential, tokens.
_SECRET_PARAM = re.compile(
    r"([?&;](?:[A-Za-z0-9_.\-]*(?:password|passwd|pwd|secret|token|key|credential|signature|auth)"
    r"[A-Za-z0-9_.\-]*|pass|sig)=)[^&#\s'\"]*",
    re.IGNORECASE,
)


# Credentials that are recognisable wherever they appear: our API tokens (yard_<id>_<secret>: the id is
# kept, it names the token) and HTTP Authorization values ("Bearer x", "Basic x").
_YARD_TOKEN = re.compile(r"\b(yard_[0-9a-f]{12}_)[A-Za-z0-9_\-]+")
_AUTH_VALUE = re.compile(r"\b((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host``, the value of every secret
    query parameter, the secret of a yard API token and an HTTP Authorization value replaced by ``***``;
    the rest (scheme, user, host, path, a token's id) is kept for diagnosis."""
    for pattern in _URL_PASSWORDS:
        text = pattern.sub(rf"\1{REDACTED}@", text)
    text = _YARD_TOKEN.sub(rf"\1{REDACTED}", text)
    text = _AUTH_VALUE.sub(rf"\1{REDACTED}", text)
    return _SECRET_PARAM.sub(rf"\1{REDACTED}", text)
