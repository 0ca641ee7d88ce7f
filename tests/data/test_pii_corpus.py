"""A small realistic corpus: every planted value in the dirty lines is found as its kind, exactly, and
nothing at all is found in the clean ones (log lines, versions, dates, ids, hashes, prices)."""

from __future__ import annotations

import pytest

from modelyard.data._pii import find_spans

# (line, [(value, kind), ...]): the values are what the scanner must report, in order.
DIRTY: list[tuple[str, list[tuple[str, str]]]] = [
    ("Contact jane.doe@example.com for access", [("jane.doe@example.com", "email")]),
    ("reply-to: J.Smith+orders@mail.example.co.uk", [("J.Smith+orders@mail.example.co.uk", "email")]),
    ("Kunde: jörg.müller@beispiel.de", [("jörg.müller@beispiel.de", "email")]),
    ("call +971 50 123 4567 after 5pm", [("+971 50 123 4567", "phone")]),
    ("tel: +44 20 7946 0958", [("+44 20 7946 0958", "phone")]),
    ("London office: +44 (0)20 7946 0958", [("+44 (0)20 7946 0958", "phone")]),
    ("Tel. +49 30 12345678", [("+49 30 12345678", "phone")]),
    ("Büro (+44) 20 7946 0958", [("(+44) 20 7946 0958", "phone")]),
    ("call (+971) 50 123 4567 now", [("(+971) 50 123 4567", "phone")]),
    ("call 0044 20 7946 0958 now", [("0044 20 7946 0958", "phone")]),
    ("Zentrale 0049 30 12345678", [("0049 30 12345678", "phone")]),
    ("whatsapp 00971501234567", [("00971501234567", "phone")]),
    ("phone=00442079460958", [("00442079460958", "phone")]),
    ("Rufnummer 004930123456789", [("004930123456789", "phone")]),
    ("appel 0033123456789", [("0033123456789", "phone")]),
    ("dial 0012025550143 from abroad", [("0012025550143", "phone")]),
    ("US office (202) 555-0143", [("(202) 555-0143", "phone")]),
    ("cell 202-555-0143", [("202-555-0143", "phone")]),
    ("UK 020 7946 0958", [("020 7946 0958", "phone")]),
    ("London (020) 7946 0958", [("(020) 7946 0958", "phone")]),
    ("mobile 07700 900123", [("07700 900123", "phone")]),
    ("Telefon: 030 12345678", [("030 12345678", "phone")]),
    ("Tel. 089/1234567", [("089/1234567", "phone")]),
    ("Berlin (030) 12345678", [("(030) 12345678", "phone")]),
    ("Mobil 0151 23456789", [("0151 23456789", "phone")]),
    ("appelez le 01 23 45 67 89", [("01 23 45 67 89", "phone")]),
    ("portable : 06.12.34.56.78", [("06.12.34.56.78", "phone")]),
    ("UAE mobile 050 123 4567", [("050 123 4567", "phone")]),
    ("Dubai office 04 123 4567", [("04 123 4567", "phone")]),
    ("msisdn 0501234567", [("0501234567", "phone")]),
    ("paid with 4111 1111 1111 1111 exp 12/27", [("4111 1111 1111 1111", "credit_card")]),
    ("card: 5500-0000-0000-0004", [("5500-0000-0000-0004", "credit_card")]),
    ("amex 3782 822463 10005", [("3782 822463 10005", "credit_card")]),
    ("pan=4012888888881881", [("4012888888881881", "credit_card")]),
    ("IBAN GB82 WEST 1234 5698 7654 32", [("GB82 WEST 1234 5698 7654 32", "iban")]),
    ("Konto DE89370400440532013000", [("DE89370400440532013000", "iban")]),
    ("iban: AE07 0331 2345 6789 0123 456", [("AE07 0331 2345 6789 0123 456", "iban")]),
    ("login from 203.0.113.42 failed", [("203.0.113.42", "ip_address")]),
    ("client=192.168.1.20 status=200", [("192.168.1.20", "ip_address")]),
    ("Firmware 3.10.2 on host 10.1.2.3", [("10.1.2.3", "ip_address")]),
    ("peer 2001:db8::8a2e:370:7334 connected", [("2001:db8::8a2e:370:7334", "ip_address")]),
    ("link-local fe80::1ff:fe23:4567:890a%eth0", [("fe80::1ff:fe23:4567:890a", "ip_address")]),
    ("Emirates ID 784-1990-1234567-6", [("784-1990-1234567-6", "emirates_id")]),
    ("eid 784198512345673", [("784198512345673", "emirates_id")]),
    ("SSN 123-45-6789", [("123-45-6789", "us_ssn")]),
    ("NI number QQ 12 34 56 C is wrong, AB 12 34 56 C", [("AB 12 34 56 C", "uk_nino")]),
    (
        "jane@example.org, +971 4 123 4567, 4111111111111111",
        [("jane@example.org", "email"), ("+971 4 123 4567", "phone"), ("4111111111111111", "credit_card")],
    ),
]

CLEAN: list[str] = [
    "2024-01-15 12:30:45.123456 INFO worker started",
    "2024-01-15T12:30:45Z request took 0.0123s",
    "15/01/2024 12:30, 01.02.2024, 2024.01.15",
    "order #ORD-2024-000123 total AED 1,250.00",
    "Order 1234567890123 shipped",
    "price $1,234.56 (was $1,499.00)",
    "lat 25.204849 lon 55.270783",
    "coords 25.2048, 55.2708",
    "uuid 550e8400-e29b-41d4-a716-446655440000",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "ISBN 978-3-16-148410-0, EAN 4006381333931",
    "tracking 1Z999AA10123456784",
    "ts 1705312245123 epoch 1705312245",
    "accuracy 0.9876 loss 0.0123 lr 3e-4",
    "ratio 16:9, John 3:16, at 10:30",
    "std::vector<int> a; a::b",
    "Face::Add(x); beef::Add(y); tail = rows[2000::10]",
    "attn = q@k.transpose(-2, -1); h = x@self.proj.weight.T; y = x@W.mT",
    "mac 00:1A:2B:3C:4D:5E",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.6099.109 Safari/537.36",
    "pip install numpy==1.26.4 torch==2.1.0",
    "python 3.11.4 cuda 12.1.105 driver 535.104.05",
    "version 1.2.3.4",
    "Version: 2.0.0.1 released",
    "release 2.4.10.1",
    "build 10.0.19041.1",
    "v10.0.0.1",
    "upgraded to ver. 5.1.0.3",
    "Product/1.0.0.2 (compatible)",
    "OID 1.3.6.1.4.1.311",
    "attribute OID 2.5.4.3",
    "netmask 255.255.255.0 gateway 0.0.0.0",
    "invoice 4000 1234 5678 9010",
    "SKU 0123 4567 8901",
    "sizes 250 500 1000 2000",
    "id 0501234567890",
    "zip 10115, PLZ 80331",
    "amount 1234567890123456 units",
    "page 12 of 345",
    "rows 1,234,567 cols 89",
    "temperature 21.5 humidity 45.2",
    "Part No. 030-1234-5678",
    "score 01 23 45 67",
    "bin 019 963612, box 017 682807",
    "part 070 25070454, bin 044 8668241, lot 038 85454051",
    "member ID 0012 3456 7890 1234, acct 0031 2345 6789 0123",
    "UPC 0012345678905, GTIN 00012345678905, account 00000012345678",
    "customer id 00123456789, ref 0099123456789",
    "ids 0101 1234 5678, in 2019 we sold 0150 units",
    "lotto 04 12 23 35 41 48",
    "table 12 34 56 78 90, row 1 01 23 45 67 89, row 01 23 45 67 89 10, run 101 23 45 67 89",
    "at 2024.01.23.45.67.89, hms 01:23:45:67:89",
]


def _found(line: str) -> list[tuple[str, str]]:
    return [(line[a:b], kind) for a, b, kind in find_spans(line)]


@pytest.mark.parametrize(("line", "expected"), DIRTY, ids=[line for line, _ in DIRTY])
def test_dirty_lines_have_their_pii_found_exactly(line: str, expected: list[tuple[str, str]]) -> None:
    assert _found(line) == expected


@pytest.mark.parametrize("line", CLEAN)
def test_clean_lines_report_nothing(line: str) -> None:
    assert _found(line) == []


def precision_recall() -> tuple[float, float, int, int, int]:
    """(precision, recall, true positives, false positives, false negatives) over the corpus, by exact
    (value, kind) match; used to report the detector's quality outside the test run."""
    tp = fp = fn = 0
    for line, expected in DIRTY:
        got = _found(line)
        hits = [g for g in got if g in expected]
        tp += len(hits)
        fp += len(got) - len(hits)
        fn += len([e for e in expected if e not in got])
    for line in CLEAN:
        fp += len(_found(line))
    precision = tp / (tp + fp) if tp + fp else 1.0
    return precision, tp / (tp + fn), tp, fp, fn
