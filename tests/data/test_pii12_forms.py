"""Forms the PII scanner must find (loopback IPv6, dotted French numbers, addresses at rare generic TLDs)
and the look-alikes it must not (slices and scopes, dotted versions, code after "@")."""

from __future__ import annotations

import pyarrow as pa
import pytest

from modelyard.data._pii import find_spans, redact_text, scan_table


def found(text: str) -> list[tuple[str, str]]:
    return [(text[a:b], kind) for a, b, kind in find_spans(text)]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("sshd: connection from ::1 port 50022", "::1"),  # as 127.0.0.1 is reported, so is its IPv6 twin
        ("listen [::1]:8080", "::1"),
        ("http://[::1]:8080/health", "::1"),
        ("bind=0:0:0:0:0:0:0:1", "0:0:0:0:0:0:0:1"),
        ("2026-01-02 10:00:01 GET / from fe80::1", "fe80::1"),
        ("peer 2001:db8::8a2e:370:7334 up", "2001:db8::8a2e:370:7334"),
    ],
)
def test_loopback_and_compressed_ipv6_are_found(text: str, address: str) -> None:
    assert found(text) == [(address, "ip_address")]


def test_loopback_ipv6_in_a_table_cell_is_found() -> None:
    table = pa.table({"client": ["::1", "127.0.0.1", None]})
    assert scan_table(table) == {"client": {"ip_address": 2}}


@pytest.mark.parametrize(
    "text",
    [
        "std::vector<int> v; a::b; ::std::move(x)",
        "at 12:30:45 and 10:30:45:12",
        "x[::2], x[::1], x[::-1], rows[1::2]",
        "cdef double[::1] row; cdef int[:, ::1] grid; a[..., ::1]; b[0, ::1]",
        "mac 00:1a:2b:3c:4d:5e",
        "::",
        "1::2 and ::2",  # reserved space: no host
        "fe80:: is the link-local prefix",
        'return f"{self.kexpr(offset)}::1"; (a)::1; v[i]::1',  # a scope after a closing bracket
    ],
)
def test_ipv6_look_alikes_are_not_found(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "01.02.03.04.05",
        "tel 06.12.34.56.78",
        "Tél. : 01.23.45.67.89",
        "appeler le 09.87.65.43.21 svp",
        "dev 01.02.03.04.05",
    ],
)
def test_dotted_french_numbers_are_found(text: str) -> None:
    assert [kind for _, kind in found(text)] == ["phone"]


def test_a_dotted_french_number_in_a_phone_column_is_found() -> None:
    assert scan_table(pa.table({"phone": ["01.02.03.04.05", "06.12.34.56.78"]})) == {"phone": {"phone": 2}}


@pytest.mark.parametrize(
    "text",
    [
        "v 01.02.03.04.05",
        "V01.02.03.04.05",
        "version 01.02.03.04.05",
        "Version: 06.12.34.56.78",
        "firmware 01.02.03.04.05, build 02.00.01.07.33",
        "rev. 01.02.03.04.05",
        "Agent/01.02.03.04.05",
    ],
)
def test_dotted_versions_are_not_french_numbers(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    "address",
    [
        "jane@studio.lighting",
        "bob@acme.accountant",
        "info@shop.bike",
        "hello@band.guitars",
        "team@kitchen.recipes",
        "Anna@Praxis.Dental",
        "user@example.photography",
        "a@b.museum",
        "x@y.co.uk",
    ],
)
def test_addresses_at_generic_tlds_with_one_word_labels_are_found(address: str) -> None:
    text = f"write to {address}, thanks"
    assert found(text) == [(address, "email")]
    assert redact_text(text) == "write to <EMAIL>, thanks"


@pytest.mark.parametrize(
    "text",
    [
        "file@2x.png",
        "clip@2x.mov and tex@2x.dds",
        "user@localhost",
        "v = x@self.weight.data",
        "y = x@self.map",
        "loss = out@batch.target",
        "z = a@torch.zero",
        "s = x@model.fit",
        "this@MainActivity.run { finish() }",
        "dialog@builder.show",
        "h = x@self.delta",
        "foo@bar.foo",
    ],
)
def test_code_ending_in_a_tld_that_names_code_is_not_an_email(text: str) -> None:
    assert found(text) == []
