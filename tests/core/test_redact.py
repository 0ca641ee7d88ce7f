"""Secret query parameters are found by their name's words: real secrets are hidden, names that merely
contain a secret word's letters (monkey, keyboard, author, tokenizer) are not."""

from __future__ import annotations

import pytest

from modelyard.core._redact import redact_url


@pytest.mark.parametrize(
    "param",
    [
        "password",
        "db_password",
        "passwd",
        "pwd",
        "pass",
        "db-pass",
        "secret",
        "client_secret",
        "clientSecret",
        "token",
        "access_token",
        "X-Amz-Security-Token",
        "sessionToken",
        "key",
        "api_key",
        "apikey",
        "apiKey",
        "access_key",
        "AWSAccessKeyId",
        "secretkey",
        "sig",
        "signature",
        "X-Amz-Signature",
        "X-Goog-Signature",
        "X-Amz-Credential",
        "credentials",
        "auth",
        "auth_token",
        "authorization",
        "sas.token",
        "openaikey",  # a word run into "key": every name ending in it but a few English words
        "hfkey",
        "privkey",
        "SSHKEY",
    ],
)
def test_secret_parameters_are_redacted(param: str) -> None:
    url = f"https://h.example/p?x=1&{param}=S3CR3T&y=2"
    assert redact_url(url) == f"https://h.example/p?x=1&{param}=***&y=2"


@pytest.mark.parametrize(
    "param",
    [
        "monkey",
        "keyboard",
        "turkey",
        "author",
        "authority",
        "tokenizer",
        "max_tokens",
        "compass",
        "passes",
        "signal",
        "design",
        "keys_only",
        "pwdx",
        "passage",
        "hockey",
        "whiskey",
    ],
)
def test_names_that_only_contain_a_secret_word_are_kept(param: str) -> None:
    url = f"https://h.example/p?{param}=visible&other=1"
    assert redact_url(url) == url
