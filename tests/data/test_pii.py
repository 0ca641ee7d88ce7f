"""PII detection and anonymisation: planted values are found exactly, look-alikes never are."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
import re
import uuid
from collections import Counter

import pyarrow as pa
import pytest

from modelyard.data._pii import (
    KINDS,
    anonymize_record,
    anonymize_table,
    cell_function,
    find_spans,
    redact_text,
    scan_lines,
    scan_table,
    scan_text,
)
from modelyard.errors import UsageError

SALT = b"0123456789abcdef-test-salt"
OTHER_SALT = b"fedcba9876543210-other-salt"


# ---------------------------------------------------------------------------------------------------
# Generators with valid (or deliberately broken) checksums, written independently of the module.


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def with_luhn(payload: str) -> str:
    return next(payload + d for d in "0123456789" if luhn_ok(payload + d))


def break_last_digit(number: str) -> str:
    # Changing one digit always breaks Luhn (and mod-97), so this is a guaranteed look-alike.
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def make_card(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return with_luhn(body)


def make_emirates_id(rng: random.Random, year: int | None = None) -> str:
    y = year if year is not None else rng.randint(1950, 2015)
    return with_luhn(f"784{y}" + "".join(rng.choice("0123456789") for _ in range(7)))


def iban_numeric(s: str) -> int:
    return int("".join(str(int(c, 36)) for c in s))


def make_iban(rng: random.Random, country: str, bban_shape: str) -> str:
    """``bban_shape``: 'A' for a random letter, '9' for a random digit."""
    bban = "".join(
        rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if c == "A" else rng.choice("0123456789") for c in bban_shape
    )
    check = 98 - iban_numeric(bban + country + "00") % 97
    iban = f"{country}{check:02d}{bban}"
    assert iban_numeric(iban[4:] + iban[:4]) % 97 == 1
    return iban


def group4(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def group_card(number: str, sep: str) -> str:
    if len(number) == 15:  # Amex 4-6-5
        return sep.join((number[:4], number[4:10], number[10:]))
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


# ---------------------------------------------------------------------------------------------------
# Fixtures: planted values of every kind, and clean look-alikes.

RNG_SEED = 20240115


def planted_values() -> dict[str, list[str]]:
    rng = random.Random(RNG_SEED)
    cards = [
        make_card(rng, "4", 16),  # Visa
        make_card(rng, "4", 13),
        make_card(rng, "52", 16),  # Mastercard
        make_card(rng, "2221", 16),  # Mastercard 2-series
        make_card(rng, "34", 15),  # Amex
        make_card(rng, "37", 15),
        make_card(rng, "6011", 16),  # Discover
        make_card(rng, "65", 16),
        make_card(rng, "3530", 16),  # JCB
        make_card(rng, "36", 14),  # Diners
        make_card(rng, "4", 19),  # Visa 19, printed 4-4-4-4-3
    ]
    eids = [make_emirates_id(rng) for _ in range(4)]
    ibans = [
        make_iban(rng, "AE", "9" * 19),
        make_iban(rng, "GB", "AAAA" + "9" * 14),
        make_iban(rng, "DE", "9" * 18),
        make_iban(rng, "FR", "9" * 23),
        make_iban(rng, "NL", "AAAA" + "9" * 10),
        make_iban(rng, "SA", "9" * 20),
    ]
    return {
        "email": [
            "alice@example.com",
            "bob.smith+news@mail.example.co.uk",
            "c_d-e%f@sub.domain.ae",
            "X9@Example.ORG",
        ],
        "phone": [
            "+971 50 123 4567",
            "+1 (415) 555-2671",
            "+44 20 7946 0958",
            "+971501234567",
            "+49 30 1234 5678",
            "(555) 123-4567",
            "415-555-2671",
            "212.555.0188",
            "050 123 4567",
            "0551234567",
            "04 123 4567",
            "07700 900123",
            "020 7946 0958",
            "00971 50 123 4567",  # the "00" international prefix
            "0044 7700 900123",
            "1-415-555-2671",  # NANP with its country code
            "1 (212) 555-0188",
        ],
        "credit_card": [
            cards[0],
            group_card(cards[1], ""),
            group_card(cards[2], " "),
            group_card(cards[3], "-"),
            group_card(cards[4], " "),
            cards[5],
            group_card(cards[6], "-"),
            cards[7],
            group_card(cards[8], " "),
            cards[9],
            group_card(cards[10], " "),
        ],
        "iban": [group4(ibans[0]), ibans[1], group4(ibans[2]), ibans[3], group4(ibans[4]), ibans[5]],
        "ip_address": [
            "192.168.1.20",
            "10.0.0.1",
            "8.8.8.8",
            "2001:db8:85a3::8a2e:370:7334",
            "fe80::1ff:fe23:4567:890a",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
        ],
        "emirates_id": [
            f"{eids[0][:3]}-{eids[0][3:7]}-{eids[0][7:14]}-{eids[0][14]}",
            eids[1],
            f"{eids[2][:3]} {eids[2][3:7]} {eids[2][7:14]} {eids[2][14]}",
            eids[3],
        ],
        "us_ssn": ["123-45-6789", "078-05-1121", "536-22-8876"],
        "uk_nino": ["AB 12 34 56 C", "JG103759A", "CE123456D"],
    }


TEMPLATES = [
    "Contact {v} for details.",
    "Customer note: {v}; thanks",
    "{v}",
    "ref={v}, status=ok",
    "(see {v})",
    "Line\twith tab {v}\tend",
]


def planted_lines() -> tuple[list[str], Counter[str]]:
    lines: list[str] = []
    expected: Counter[str] = Counter()
    i = 0
    for kind, values in planted_values().items():
        for v in values:
            lines.append(TEMPLATES[i % len(TEMPLATES)].format(v=v))
            expected[kind] += 1
            i += 1
    return lines, expected


def clean_values() -> list[str]:
    rng = random.Random(7)
    valid_cards = [make_card(rng, p, n) for p, n in [("4", 16), ("51", 16), ("34", 15), ("6011", 16)]]
    bad_ibans = [
        make_iban(rng, "AE", "9" * 19),
        make_iban(rng, "GB", "AAAA" + "9" * 14),
        make_iban(rng, "DE", "9" * 18),
    ]
    return [
        # dates, times, timestamps
        "2024-01-15",
        "15/01/2024",
        "2024/01/15",
        "20240115",
        "Due 01.15.2024 at 10:30",
        "23:59:59",
        "10:30:45.123",
        "2024-01-15T10:30:00Z",
        "2024-01-15T10:30:00+04:00",
        "2024-01-15 10:30:00.123456",
        "Unix time 1705312200 and 1705312200123 ms",
        # versions and decimals
        "Released v2.10.0, then 1.2.3 and 10.0.19045.3930",
        "build 1.2.3.4.5",
        "pi = 3.14159, e = 2.718281828459045, tiny -0.000123, 1e-10",
        "ratio 0.5551234567 and 5551234567.25",
        # identifiers and hashes
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper(),
        hashlib.sha256(b"modelyard").hexdigest(),
        hashlib.md5(b"modelyard").hexdigest(),  # look-alike data, not security
        "Order #100234 shipped; ORD-2024-000123; INV-0501234567; SKU 12-345-67",
        "tracking 1Z999AA10123456784",
        "12345678901234567890",
        # card-like numbers failing Luhn, or with no card network
        *(break_last_digit(c) for c in valid_cards),
        group_card(break_last_digit(valid_cards[0]), " "),
        group_card(break_last_digit(valid_cards[1]), "-"),
        f"ORD-{valid_cards[0]}",  # a valid number glued to a label is an identifier, not a card
        "1234567812345670",  # Luhn-valid, but no card network starts with 1
        "4723-1459-80648",  # Luhn-valid Visa-13 digits, but no issuer prints 4-4-5
        # IBAN-like strings failing mod-97 (and with a wrong length)
        *(break_last_digit(b) for b in bad_ibans),
        group4(break_last_digit(bad_ibans[0])),
        bad_ibans[1] + "1",
        # Emirates-ID-like numbers failing Luhn or with an implausible year
        break_last_digit(make_emirates_id(rng)),
        "784-1990-1234567-" + str((int(with_luhn("78419901234567")[-1]) + 3) % 10),
        make_emirates_id(rng, year=1800),
        # IP-like
        "256.10.10.10",
        "192.168.1.256",
        "300.1.2.3",
        "netmask 255.255.255.0, 255.255.0.0, 255.255.255.252, broadcast 255.255.255.255, bind 0.0.0.0",
        "mac 00:1a:2b:3c:4d:5e",
        "std::vector<int> x; a[::2]; b[1::2]",
        # prices, postcodes, small numbers
        "$1,299.99",
        "AED 3,500.00 or €45,00 or 1,234,567",
        "ZIP 90210, 10001-1234, SW1A 1AA, PO Box 12345",
        "42 apples, 2024 pears, 1000000 plums",
        "sizes 250 500 1000, ranks 212 555 0188",
        # phone-like
        "555-1234",
        "123-456-7890",
        "1+2=3",
        "score +1234567 and +5 points",
        "05 123 4567",
        "00971123456789",  # compact after 00 but fitting no numbering plan: a zero-padded id
        "00000012345678 0099123456789 00123456789",
        "UPC 0012345678905 GTIN 00012345678905",  # GS1 check digit: barcodes, not 001 phones
        "batch 0012 3456",
        "0001 0002 0003 0004",
        "1-23-4567",
        # email-like
        "user@localhost",
        "@handle",
        "foo@bar",
        "logo@2x.png",
        "name at example dot com",
        "support@example.py.txt",
        # SSN- and NINO-like with invalid ranges
        "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",
        "QQ123456C GB123456A AB123456E",
    ]


# ---------------------------------------------------------------------------------------------------
# Text


def test_kinds_cover_the_required_set() -> None:
    assert {"email", "phone", "credit_card", "iban", "ip_address", "emirates_id", "us_ssn"} <= set(KINDS)
    assert len(set(KINDS)) == len(KINDS)


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, vs in planted_values().items() for v in vs])
def test_each_planted_value_is_found_exactly(kind: str, value: str) -> None:
    text = f"Please contact {value}. Thanks"
    spans = find_spans(text)
    assert [(text[s:e], k) for s, e, k in spans] == [(value, kind)]
    assert scan_text(text) == {kind: 1}


@pytest.mark.parametrize("value", clean_values())
def test_look_alikes_are_not_flagged(value: str) -> None:
    assert find_spans(value) == []
    assert scan_text(f"note: {value}.") == {}


def test_planted_text_counts_exact() -> None:
    lines, expected = planted_lines()
    assert scan_lines(iter(lines)) == dict(expected)
    assert scan_text("\n".join(lines)) == dict(expected)
    assert set(expected) == set(KINDS)


def test_clean_text_has_zero_findings() -> None:
    values = clean_values()
    assert scan_lines(values) == {}
    assert scan_text(" | ".join(values)) == {}
    assert redact_text("\n".join(values)) == "\n".join(values)


def test_spans_are_sorted_and_disjoint() -> None:
    lines, _ = planted_lines()
    text = " ".join(lines)
    spans = find_spans(text)
    assert spans == sorted(spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert all(kind in KINDS for _, _, kind in spans)


def test_redact_removes_every_planted_value_and_keeps_context() -> None:
    lines, _ = planted_lines()
    text = "\n".join(lines)
    redacted = redact_text(text)
    assert scan_text(redacted) == {}
    for values in planted_values().values():
        for v in values:
            assert v not in redacted
    assert redacted.count("\n") == text.count("\n")
    for kind in KINDS:
        assert f"<{kind.upper()}>" in redacted
    assert redact_text("Contact alice@example.com or +971 50 123 4567 today.") == (
        "Contact <EMAIL> or <PHONE> today."
    )
    assert (
        redact_text("card 4111 1111 1111 1111, ip 10.0.0.1:8080")
        == "card <CREDIT_CARD>, ip <IP_ADDRESS>:8080"
    )


def test_several_values_in_one_string() -> None:
    text = "alice@example.com 4111111111111111 4111 1111 1111 1111 ref 12 4111 1111 1111 1111 10.0.0.1"
    assert scan_text(text) == {"email": 1, "credit_card": 3, "ip_address": 1}
    # Two IBANs back to back: the first must not swallow the second.
    rng = random.Random(1)
    a, b = make_iban(rng, "DE", "9" * 18), make_iban(rng, "GB", "AAAA" + "9" * 14)
    assert scan_text(f"{a} {b}") == {"iban": 2}
    assert scan_text(f"{group4(a)} {group4(b)}") == {"iban": 2}


def test_email_inside_other_kinds_wins_once() -> None:
    # Digits inside an address are part of the address, not a second finding.
    assert scan_text("4111111111111111@cards.example.com") == {"email": 1}
    assert scan_text("user.192.168.1.1@example.com") == {"email": 1}


@pytest.mark.parametrize(
    "address",
    ["jörg.müller@example.com", "José.Núñez@example.es", "zoë@bücher.de", "иван@пример.рф", "a@b.xn--p1ai"],
)
def test_international_addresses_are_redacted_whole(address: str) -> None:
    """Addresses may hold any letters (RFC 6531): an ASCII-only local part redacted "jörg.müller@..." to
    "jörg.mü<EMAIL>", leaving the owner's name in the anonymised text."""
    assert redact_text(f"Kontakt: {address}.") == "Kontakt: <EMAIL>."
    assert scan_text(address.split("@")[0] + "@localhost") == {}


@pytest.mark.parametrize(
    "code",
    [
        "y = x@self.weight",
        "h = x@self.proj.weight.T",
        "out = obj@module.attr",
        "c = a@torch.linalg",
        "scores = q@k.transpose(-2, -1)",
        "z = inp@model.fc.weight",
        "m = x@W.mT",
        "t@nn.Linear",
        "v = x@self.weight.data",
    ],
)
def test_matrix_products_and_attribute_chains_are_not_emails(code: str) -> None:
    """Python's "@" operator between identifiers reads like an address: no real TLD ends the chain."""
    assert scan_text(code) == {}


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("write to a.b@sub.example.co.uk today", "a.b@sub.example.co.uk"),
        ("write to first.last+tag@example.org today", "first.last+tag@example.org"),
        ("write to x@xn--bcher-kva.example today", "x@xn--bcher-kva.example"),
        ("write to x@b.xn--p1ai today", "x@b.xn--p1ai"),
        ("write to jane@studio.photography today", "jane@studio.photography"),
        ("write to jane@my-studio.lighting today", "jane@my-studio.lighting"),
        ("write to Jane.Doe@Example.COM today", "Jane.Doe@Example.COM"),
        ("write to jane@startup.io today", "jane@startup.io"),
        ("write to jane@example.com.Thanks", "jane@example.com"),
        ("write to a@b.example today", "a@b.example"),
        # internal mail domains of the enterprises that run this (RFC 6762's local, ICANN's internal)
        ("write to j.doe@corp.internal today", "j.doe@corp.internal"),
        ("write to jdoe@mail.acme.corp today", "jdoe@mail.acme.corp"),
        ("write to admin@fileserver.local today", "admin@fileserver.local"),
        ("write to ops@intranet.lan today", "ops@intranet.lan"),
    ],
)
def test_addresses_at_real_tlds_are_found(text: str, address: str) -> None:
    assert [(text[a:b], kind) for a, b, kind in find_spans(text)] == [(address, "email")]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("peer 2001:db8::1 up", "2001:db8::1"),
        ("peer 2001:DB8::1 up", "2001:DB8::1"),
        ("zone fe80::1%eth0", "fe80::1"),
        ("http://[2001:db8::1]:8080/x", "2001:db8::1"),
        ("mapped ::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("nat64 64:ff9b::c000:221", "64:ff9b::c000:221"),
        ("hexspeak dead::beef", None),  # unallocated space: no host has it
        ("loopback ::1", "::1"),  # reported as 127.0.0.1 is
        ("Face::Add(x); Abc::Def y; beef::Add(z)", None),  # C++ scopes: no address mixes cases in a group
        ("std::vector<int> a; a::b", None),
        ("rows x[10::10], y[2000::2]", None),  # Python slices
        ("at 12:34:56, tc 10:30:45:12", None),
        ("zigbee 00:12:4b:00:01:02:03:04", None),  # EUI-64 bytes, like a MAC address
    ],
)
def test_ipv6_addresses_but_not_code(text: str, found: str | None) -> None:
    expected = [(found, "ip_address")] if found else []
    assert [(text[a:b], kind) for a, b, kind in find_spans(text)] == expected


@pytest.mark.parametrize(
    "text",
    [
        "a" * 10**6 + "@",
        "a." * 500_000 + "@",
        "a@" + "b." * 500_000,
        "1 " * 500_000,
        "1-" * 500_000,
        "1." * 500_000,
        ":" * 10**6,
        "+1" * 500_000,
        "AB12 " * 200_000,
        "%" * 10**6 + "@a.com",
    ],
    ids=[
        "a-at",
        "a-dot-at",
        "many-labels",
        "digits-spaces",
        "digits-dashes",
        "digits-dots",
        "colons",
        "plus",
        "iban-ish",
        "pct",
    ],
)
def test_pathological_inputs_complete(text: str) -> None:
    # Not timed: a backtracking regex would take hours here, a linear one well under a second.
    assert scan_text(text) == {}


# ---------------------------------------------------------------------------------------------------
# Tables


def planted_table() -> tuple[pa.Table, dict[str, dict[str, int]]]:
    values = planted_values()
    lines, expected_notes = planted_lines()
    rng = random.Random(3)
    n = len(lines)
    emails = [values["email"][i % len(values["email"])] if i % 5 else None for i in range(n)]
    phones = [values["phone"][i % len(values["phone"])] if i % 7 else "" for i in range(n)]
    card_ints = [int(re.sub(r"\D", "", values["credit_card"][i % 11])) if i % 4 else None for i in range(n)]
    eid_ints = [int(make_emirates_id(rng)) if i % 3 == 0 else i for i in range(n)]
    ips = [values["ip_address"][i % 6] if i % 2 else "n/a" for i in range(n)]
    first = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "notes": pa.array(lines, pa.string()),
            "email": pa.array(emails, pa.large_string()),
            "phone": pa.array(phones, pa.string()),
            "card_number": pa.array(card_ints, pa.int64()),
            "eid": pa.array(eid_ints, pa.int64()),
            "ip": pa.array(ips, pa.string()).dictionary_encode(),
            "amount": pa.array([rng.random() * 1000 for _ in range(n)], pa.float64()),
            "name": pa.array([f"customer {i}" for i in range(n)], pa.string()),
        }
    )
    # Two chunks per column: the same rows again, so every expected count doubles.
    table = pa.concat_tables([first, first])
    assert table.column("notes").num_chunks == 2
    expected = {
        "notes": {k: 2 * v for k, v in expected_notes.items()},
        "email": {"email": 2 * sum(e is not None for e in emails)},
        "phone": {"phone": 2 * sum(bool(p) for p in phones)},
        "card_number": {"credit_card": 2 * sum(c is not None for c in card_ints)},
        "eid": {"emirates_id": 2 * sum(i % 3 == 0 for i in range(n))},
        "ip": {"ip_address": 2 * sum(i % 2 for i in range(n))},
    }
    return table, expected


def clean_table() -> pa.Table:
    values = clean_values()
    rng = random.Random(11)
    n = len(values)
    bad_cards = [int(break_last_digit(make_card(rng, "4", 16))) for _ in range(n)]
    bad_eids = [int(break_last_digit(make_emirates_id(rng))) for _ in range(n)]
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": pa.array(values, pa.string()),
            "text_nulls": pa.array([v if i % 2 else None for i, v in enumerate(values)], pa.large_string()),
            "ts_ms": pa.array([1705312200123 + i for i in range(n)], pa.int64()),
            "card_like": pa.array(bad_cards, pa.int64()),
            "eid_like": pa.array(bad_eids, pa.uint64()),
            "luhn_no_network": pa.array([1234567812345670] * n, pa.int64()),
            "small": pa.array(range(n), pa.int32()),
            "price": pa.array([19.99] * n, pa.float64()),
        }
    )


def test_scan_table_exact_counts_per_column() -> None:
    table, expected = planted_table()
    assert scan_table(table) == expected


def test_scan_table_clean_has_no_findings() -> None:
    assert scan_table(clean_table()) == {}


def test_scan_table_handles_nulls_empty_and_types() -> None:
    table = pa.table(
        {
            "all_null": pa.array([None, None], pa.string()),
            "view": pa.array(["alice@example.com", None], pa.string()).cast(pa.string_view()),
            "bin": pa.array([b"alice@example.com", None], pa.binary()),
            "dec": pa.array([4111111111111111, None], pa.int64()).cast(pa.decimal128(19, 0)),
        }
    )
    assert scan_table(table) == {"view": {"email": 1}, "dec": {"credit_card": 1}}
    assert scan_table(table.slice(0, 0)) == {}


def test_scan_table_many_rows() -> None:
    # Repeated values are scanned once per chunk; clean free text is filtered in Arrow.
    n = 100_000
    table = pa.table(
        {
            "email": pa.array(["alice@example.com", "bob@example.org", None, "no address"] * (n // 4)),
            "text": pa.array([f"row {i} is fine" for i in range(n)]),
        }
    )
    assert scan_table(table) == {"email": {"email": n // 2}}


def test_anonymize_mask() -> None:
    table = pa.table(
        {
            "note": ["Contact alice@example.com today", None, "nothing here", "call +971 50 123 4567"],
            "name": ["Alice", "Bob", None, "Dana"],
            "card": pa.array([4111111111111111, 5, None, 4111111111111111], pa.int64()),
            "keep": [1, 2, 3, 4],
        }
    )
    out = anonymize_table(table, ["note", "name", "card"], "mask", SALT)
    assert out.column_names == table.column_names
    assert out.column("note").to_pylist() == ["Contact <EMAIL> today", None, "***", "call <PHONE>"]
    assert out.column("name").to_pylist() == ["***", "***", None, "***"]
    assert out.column("card").to_pylist() == ["<CREDIT_CARD>", "***", None, "<CREDIT_CARD>"]
    assert out.schema.field("card").type == pa.string()
    assert out.column("keep").equals(table.column("keep"))
    assert table.column("note").to_pylist()[0] == "Contact alice@example.com today"  # input untouched


def test_anonymize_mask_default_columns_are_the_pii_columns() -> None:
    table, expected = planted_table()
    out = anonymize_table(table, None, "mask", SALT)
    assert out.column_names == table.column_names
    for name in table.column_names:
        if name in expected:
            assert out.schema.field(name).type == pa.string()
            assert out.column(name).null_count == table.column(name).null_count
        else:
            assert out.column(name).equals(table.column(name))
    assert scan_table(out) == {}


def test_anonymize_hash_deterministic_and_joinable() -> None:
    customers = pa.table({"email": ["alice@example.com", "bob@example.org", None], "cid": [1, 2, 3]})
    orders = pa.table(
        {"email": ["bob@example.org", "alice@example.com", "bob@example.org"], "oid": [10, 11, 12]}
    )
    hc = anonymize_table(customers, ["email"], "hash", SALT)
    ho = anonymize_table(orders, ["email"], "hash", SALT)
    expected_digest = "h:" + hmac.new(SALT, b"alice@example.com", hashlib.sha256).hexdigest()[:32]
    assert hc.column("email").to_pylist()[0] == expected_digest
    assert hc.column("email").to_pylist()[2] is None
    assert all(re.fullmatch(r"h:[0-9a-f]{32}", v) for v in ho.column("email").to_pylist())
    assert hc.schema.field("email").type == pa.string()

    def pairs(a: pa.Table, b: pa.Table) -> set[tuple[int, int]]:
        joined = a.join(b, "email", join_type="inner")
        return set(zip(joined.column("cid").to_pylist(), joined.column("oid").to_pylist(), strict=True))

    assert pairs(hc, ho) == pairs(customers, orders) == {(1, 11), (2, 10), (2, 12)}
    assert anonymize_table(customers, ["email"], "hash", SALT).equals(hc)
    other = anonymize_table(customers, ["email"], "hash", OTHER_SALT)
    assert other.column("email").to_pylist()[:2] != hc.column("email").to_pylist()[:2]
    assert other.column("email").to_pylist()[2] is None


@pytest.mark.parametrize("method", ["mask", "hash"])
def test_empty_cells_stay_empty(method: str) -> None:
    """An empty cell is a CSV's missing value: masked it read "***" (a value was there), hashed every
    customer without an e-mail got the same token, and a join on it matched them all to one another."""
    table = pa.table({"email": ["alice@example.com", "", None, ""], "cid": [1, 2, 3, 4]})
    out = anonymize_table(table, ["email"], method, SALT).column("email").to_pylist()
    assert out[1:] == ["", None, ""] and out[0] not in ("", "alice@example.com")
    record = anonymize_record({"email": "", "n": "x"}, ["email", "n"], cell_function(method, SALT))
    assert record["email"] == "" and record["n"] != "x"


def test_anonymize_hash_non_string_columns_use_canonical_text() -> None:
    as_int = pa.table({"k": pa.array([123, None], pa.int64())})
    as_text = pa.table({"k": pa.array(["123", None], pa.string())})
    a = anonymize_table(as_int, ["k"], "hash", SALT)
    b = anonymize_table(as_text, ["k"], "hash", SALT)
    assert a.equals(b)
    nested = pa.table({"tags": pa.array([["x", "y"], None, []])})
    out = anonymize_table(nested, ["tags"], "hash", SALT).column("tags").to_pylist()
    assert out[1] is None and out[0] != out[2] and all(v.startswith("h:") for v in (out[0], out[2]))


def test_anonymize_drop() -> None:
    table, expected = planted_table()
    out = anonymize_table(table, None, "drop", SALT)
    assert out.column_names == [c for c in table.column_names if c not in expected]
    out2 = anonymize_table(table, ["email", "name"], "drop", SALT)
    assert "email" not in out2.column_names and "name" not in out2.column_names
    assert out2.num_columns == table.num_columns - 2
    assert out2.num_rows == table.num_rows


def test_anonymize_clean_table_with_default_columns_is_unchanged() -> None:
    table = clean_table()
    assert anonymize_table(table, None, "mask", SALT).equals(table)


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"method": "encrypt"}, ["'encrypt'", "mask", "hash", "drop"]),
        ({"columns": ["email", "nope"]}, ["'nope'", "email", "cid"]),
        ({"columns": "email"}, ["'email'"]),
        ({"salt": b"short"}, ["16", "5 bytes"]),
        ({"salt": "a-string-salt-of-enough-length"}, ["16", "str"]),
    ],
)
def test_anonymize_bad_arguments(kwargs: dict[str, object], needles: list[str]) -> None:
    table = pa.table({"email": ["alice@example.com"], "cid": [1]})
    args: dict[str, object] = {"columns": ["email"], "method": "hash", "salt": SALT, **kwargs}
    with pytest.raises(UsageError) as info:
        anonymize_table(table, **args)  # type: ignore[arg-type]
    for needle in needles:
        assert needle in str(info.value)


def test_scan_table_reads_numbers_as_digits_and_walks_nested_columns() -> None:
    """Cards hide in any number type (a float64 once pandas saw a missing value, a decimal with
    cents); struct and list values are scanned under their path; a name with PII is never echoed."""
    from decimal import Decimal

    table = pa.table(
        {
            "f": pa.array([4111111111111111.0, None]),
            "dec": pa.array([Decimal("5500005555555559.00"), Decimal("1.50")], pa.decimal128(20, 2)),
            "u": pa.array([{"mail": "a@example.com", "tags": ["+971 50 123 4567"]}, None]),
            "m": pa.array([[("b@example.com", 1)], []], pa.map_(pa.string(), pa.int64())),
            "c@example.com": ["x", "y"],
        }
    )
    assert scan_table(table) == {
        "f": {"credit_card": 1},
        "dec": {"credit_card": 1},
        "u.mail": {"email": 1},
        "u.tags": {"phone": 1},
        "m": {"email": 1},
        "(header)": {"email": 1},
    }
    out = anonymize_table(table, None, "mask", SALT)
    assert out.column_names == ["f", "dec", "u", "m", "<EMAIL>"]
    assert out.column("f").to_pylist() == ["<CREDIT_CARD>", None]
    assert "a@example.com" not in str(out.column("u").to_pylist())
