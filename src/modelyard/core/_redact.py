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
# Query parameters that carry a secret, found by the words of their name (split at _ . - and camelCase):
# libpq's password, presigned URLs' signature and credential, tokens, API keys. A name that only contains a
# secret word's letters ("author", "tokenizer") is not one. "key" as a word counts (api_key, but sort_key
# too: hiding a harmless value is the cheaper mistake). Short words count only alone ("pass", not "bypass").
_SECRET_WORDS = frozenset({"pwd", "pass", "sig", "auth", "authorization"})
# Longer secret words count alone or at the end of a word that runs them together: "clientsecret",
# "accesstoken", "openaikey", "sshkey", "privkey"; but not the few English words ending in key ("monkey").
_SECRET_COMPOUND = re.compile(r"(?:password|passwd|passphrase|secret|token|signature|credentials?|key)$")
_NOT_SECRET = frozenset({"monkey", "donkey", "turkey", "hockey", "jockey", "whiskey", "lackey", "malarkey"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_PARAM = re.compile(r"([?&;])([A-Za-z0-9_.\-]+)=([^&#\s'\"]*)")


def secret_name(name: str) -> bool:
    """Whether a parameter, option or variable of this name carries a secret (see ``_SECRET_WORDS``)."""
    words = [w.lower() for w in _WORD.findall(name)]
    return any(w in _SECRET_WORDS or (_SECRET_COMPOUND.search(w) and w not in _NOT_SECRET) for w in words)


def _param(m: re.Match[str]) -> str:
    return f"{m[1]}{m[2]}={REDACTED}" if secret_name(m[2]) else m[0]


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
    return _PARAM.sub(_param, text)
