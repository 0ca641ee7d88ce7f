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


def redact_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` and the value of every secret
    query parameter replaced by ``***``; the rest (scheme, user, host, path) is kept for diagnosis."""
    for pattern in _URL_PASSWORDS:
        text = pattern.sub(rf"\1{REDACTED}@", text)
    return _SECRET_PARAM.sub(rf"\1{REDACTED}", text)
