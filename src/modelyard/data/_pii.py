"""PII detection and anonymisation: pure functions over strings and Arrow tables.

Precision first: every numeric kind is shape-matched by a bounded regex and then validated (Luhn,
ISO 13616 mod-97, registry lengths, allocation rules) so that a clean file reports nothing. All
patterns are linear in the input: no nested unbounded quantifiers, and every candidate either has a
bounded length or starts only where its left-context guard allows (one start per token).

Hand-written rather than a dependency: Presidio/scrubadub pull in spaCy models, and `phonenumbers`
(~10 MB of metadata) is lenient by design and flags look-alikes; we need a small precision-first set.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import ipaddress
import json
import keyword
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from modelyard.data._tlds import GENERIC_TLDS
from modelyard.errors import UsageError

__all__ = [
    "HEADER",
    "KINDS",
    "METHODS",
    "JsonNumber",
    "anonymize_record",
    "anonymize_table",
    "cell_function",
    "dump_json",
    "find_spans",
    "parse_json",
    "redact_text",
    "scan_lines",
    "scan_records",
    "scan_table",
    "scan_text",
]

KINDS: tuple[str, ...] = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "ip_address",
    "emirates_id",
    "us_ssn",
    "uk_nino",
)
METHODS: tuple[str, ...] = ("mask", "hash", "drop")
MIN_SALT_BYTES = 16
# Where reports count findings in column names and keys: a name is shown only redacted, so a header-less
# CSV (whose first record became its header) does not echo that record.
HEADER = "(header)"
_MASK = "***"

# --------------------------------------------------------------------------------------------------
# Shared guards. A number inside a word, a decimal ("3.1415..."), or a longer dashed/slashed/colon
# number (dates, times, order ids "ORD-0501234567") is not a standalone identifier.
_NUM_L = r"(?<![\w.\-])(?<!\d[/:])"
_NUM_R = r"(?!\w)(?![.\-/:]\d)"

_ANY_DIGIT = re.compile(r"\d")
# Dotted numbers right after a version word ("version 1.2.3.4", "build 10.0.19041.1", "OID 2.5.4.3",
# "v 01.02.03.04.05") or a product token ("Agent/1.0.0.2") are a version or object id, not an IPv4 address
# or a phone number: release notes and logs are full of them.
_VERSION_BEFORE = re.compile(
    r"(?:(?<![A-Za-z])(?:versions?|ver|v|releases?|rel|builds?|revision|rev|firmware|fw|patch|oid|sdk|update)"
    r"\.?\s*[:=#]?\s*|[A-Za-z]/)$",
    re.IGNORECASE,
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _gs1_ok(digits: str) -> bool:
    return sum((ord(ch) - 48) * (3 if i % 2 else 1) for i, ch in enumerate(reversed(digits))) % 10 == 0


# --------------------------------------------------------------------------------------------------
# Email: pragmatic RFC 5322/6531 subset (dot-atoms of letters, digits and _%+-, in any script, as the
# domain's labels; an alphabetic or punycode TLD). ASCII-only letters redacted "jörg.müller@x.de" to
# "jörg.mü<EMAIL>", leaving the name. The lookbehind makes a local part start only at the beginning of
# its token, so 'a' * 10**6 + '@' is one linear attempt, not a quadratic one; the domain is bounded to
# 8 labels of <= 63 chars.
_EMAIL = re.compile(
    r"(?<![\w%+\-.])"
    r"[\w%+\-]+(?:\.[\w%+\-]+)*"
    r"@(?:[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?\.){1,8}"
    r"(?P<tld>[^\W\d_]{2,24}|xn--[A-Za-z0-9]{2,59})"
    r"(?![\w\-])"
)
# File extensions, read as such even where a TLD has the name: "icon@2x.png", "clip@2x.mov" are assets.
_NOT_TLDS = frozenset(
    {
        *("png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "heic"),
        *("js", "ts", "css", "scss", "html", "htm", "json", "yaml", "yml", "csv", "tsv", "txt", "pdf"),
        *("rb", "java", "cpp", "log", "ini", "toml", "xml", "mov", "dds", "cab"),
    }
)

# Python's "@" (matrix product) before an attribute chain reads like an address: "x@self.weight",
# "q@k.transpose". The TLD tells them apart, so one ending a chain of identifiers must be real: an assigned
# country code (ISO 3166, as delegated), an IDN, a common generic TLD (and RFC 2606's example and test,
# which sample data uses for real addresses), an internal one (corp, local), or any other generic TLD in the
# root zone ("jane@studio.lighting") unless code uses that name after "@" (_CODE_NAME_LIST). A domain with
# a label no identifier has ("my-studio", "xn--bcher-kva", "3com") is a host name whatever its TLD.
_CC_TLD_LIST = (
    "ac ad ae af ag ai al am ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bm bn bo bq br bs bt "
    "bv bw by bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz ec ee eg er "
    "es et eu fi fj fk fm fo fr ga gb gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw gy hk hm hn hr ht "
    "hu id ie il im in io iq ir is it je jm jo jp ke kg kh ki km kn kp kr kw ky kz la lb lc li lk lr ls "
    "lt lu lv ly ma mc md me mg mh mk ml mm mn mo mp mq mr ms mt mu mv mw mx my mz na nc ne nf ng ni nl "
    "no np nr nu nz om pa pe pf pg ph pk pl pm pn pr ps pt pw py qa re ro rs ru rw sa sb sc sd se sg sh "
    "si sj sk sl sm sn so sr ss st su sv sx sy sz tc td tf tg th tj tk tl tm tn to tr tt tv tw tz ua ug "
    "uk us uy uz va vc ve vg vi vn vu wf ws ye yt za zm zw"
)
_GENERIC_TLD_LIST = (
    "com net org edu gov mil int info biz name pro aero coop museum mobi asia tel travel jobs cat post "
    "app dev page tech online site website store shop cloud email digital agency company solutions "
    "services group global world life live news media blog art design studio network systems software "
    "academy center consulting club xyz top icu vip work space fun today ltd llc inc one pub guru expert "
    "photography photo photos events social team tools zone plus link click host health law legal finance "
    "capital fund money bank insurance realty marketing ventures partners international enterprises "
    "management support care family love green energy city church school university education institute "
    "training swiss berlin hamburg bayern london paris nyc tokyo wien amsterdam brussels dubai africa "
    "scot wales cymru eus gal bzh quebec gmbh example test "
    # internal mail domains, common in the enterprise data this scans: RFC 6762's local, ICANN's internal
    "local internal corp lan intranet home localdomain"
)
# Generic TLDs that are names in code: attributes and methods of Python's standard library, numpy, pandas,
# pyarrow and torch ("x@self.weight.data", "a@b.map"), common ML and app ones ("out@batch.target",
# "d@builder.show") and placeholders ("foo@bar.foo"). An address at one with one-word labels counts in
# prose ("write to jane@studio.run") and in a field named for e-mail, not in code (see _reads_as_prose).
_CODE_NAME_LIST = (
    "abc book build call case codes compare data date day discover dot download drive fail final help map "
    "new next now open parts place prod property read run safe save search seek select storage stream style "
    "total windows zip fit target delta zero show play watch box tab free rest pid pin foo bar"
)
_CC_TLDS = frozenset(_CC_TLD_LIST.split())
_CODE_TLDS = frozenset(_CODE_NAME_LIST.split()) & GENERIC_TLDS
_GENERIC_TLDS = frozenset(_GENERIC_TLD_LIST.split()) | (GENERIC_TLDS - _CODE_TLDS)
# Country codes that are also source and document file extensions: "see x@notes.md", "x@y.py" name files.
# A domain of one label at one reads as a file name (Moldova's mail is rarely at a bare second-level name,
# Paraguay's is at com.py). Not sh, rs, pl, ml, so, in, ai, io, pt: companies and people mail from
# one-word domains there (astral.sh, tokio.rs and comet.ml are in PyPI packages' metadata; wp.pl).
_FILE_TLDS = frozenset({"md", "py"})
# Prose right before an address: a word (and ":" or ","), a space, maybe an opening bracket or quote.
_PROSE_BEFORE = re.compile(r"(?:(?<![\w.@`])(?P<word>[^\W\d_]{2,})[:,]?\s+[(<\"']?|mailto:)\Z")
_NAME_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def _email_name(name: str) -> bool:
    """True for a column or key named for e-mail ("email", "Email Address", "contactEmail", "e_mail")."""
    return not {"email", "emails", "mail"}.isdisjoint(w.lower() for w in _NAME_WORD.findall(name))


def _tld_real(tld: str, *, code_names: bool = False) -> bool:
    if not tld.isascii() or tld[:4].lower() == "xn--":
        return True  # an IDN TLD ("рф", "xn--p1ai") is no identifier
    if not (tld.islower() or tld.isupper() or tld.istitle()):
        return False  # camelCase ("x@W.mT") is an identifier, however a host name is capitalised
    tld = tld.lower()
    return tld in (_CC_TLDS if len(tld) == 2 else _GENERIC_TLDS) or (code_names and tld in _CODE_TLDS)


def _reads_as_prose(text: str, m: re.Match[str], local: str, labels: list[str]) -> bool:
    """An address at a TLD code uses as a name ("jane@studio.run") in prose, not code ("x@self.run",
    "return out@batch.target", "job@task.run()"): it follows a word that is not a Python keyword, or
    "mailto:"; it is no call or subscript; no operand is one letter and no label is camelCase."""
    before = _PROSE_BEFORE.search(text, max(0, m.start() - 40), m.start())
    if before is None or keyword.iskeyword(before["word"] or ""):
        return False
    if text[m.end() : m.end() + 1] in ("(", "["):
        return False
    return len(local) > 1 and all(
        len(label) > 1 and (label.islower() or label.isupper() or label.istitle()) for label in labels
    )


def _find_emails(text: str, email_field: bool = False) -> Iterator[tuple[int, int]]:
    """Spans of e-mail addresses. A domain of plain identifier labels must end in a real TLD (see above);
    one of a single label at a file-extension ccTLD ("x@notes.md") is a file name; one at a TLD code uses
    as a name ("run", "data") counts only in prose (see _reads_as_prose). In a field named for e-mail
    (``email_field``) any TLD of the root zone ends an address: "jane@company.md", "jane@studio.run"."""
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        local, domain = m.group().split("@", 1)
        tld = m.group("tld")
        if len(local) > 64 or tld.lower() in _NOT_TLDS:
            continue
        labels = domain.split(".")
        if email_field and _tld_real(tld, code_names=True):
            yield m.span()
            continue
        if not all(label.isascii() and label.isidentifier() for label in labels):
            yield m.span()  # a host name ("my-studio", "3com"), whatever its TLD
            continue
        if len(labels) == 2 and tld.lower() in _FILE_TLDS:
            continue
        if _tld_real(tld) or (tld.lower() in _CODE_TLDS and _reads_as_prose(text, m, local, labels)):
            yield m.span()
            continue
        # "jane@example.com.Thanks": a sentence run on after the address; cut at the last real TLD.
        for k in range(len(labels) - 1, 1, -1):
            if _tld_real(labels[k - 1]) and not (k == 2 and labels[1].lower() in _FILE_TLDS):
                yield m.start(), m.start() + len(local) + 1 + len(".".join(labels[:k]))
                break


# --------------------------------------------------------------------------------------------------
# Phone numbers. E.164-style international numbers need the leading "+"; national formats are an
# explicit list (NANP, UAE, UK, Germany, France) because a generic "some digits with separators" rule
# flags dates.
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9](?:[ .\-()]{0,2}\d){7,14}" + _NUM_R)
# The same with the "00" international prefix, written with separators ("00971 50 123 4567"). Its first
# group must be 00 and a country code: "0012 3456 7890 1234" is a zero-padded id (there is no code 12).
_PHONE_00 = re.compile(_NUM_L + r"00[1-9]\d{0,2}(?:[ .\-]\d{1,8}){2,5}" + _NUM_R)
_PHONE_00_GROUPS = re.compile(r"[ .\-]")
# ITU-T E.164 country codes: 1 and 7, these two-digit ones, and three digits under the other prefixes.
_CC_2 = frozenset({
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56, 57, 58,
    60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
})  # fmt: skip
_CC_3_PREFIXES = frozenset({
    21, 22, 23, 24, 25, 26, 29, 35, 37, 38, 42, 50, 59, 67, 68, 69, 80, 85, 87, 88, 96, 97, 99,
})  # fmt: skip


def _country_code_ok(cc: str) -> bool:
    if len(cc) == 1:
        return cc in "17"
    return int(cc) in _CC_2 if len(cc) == 2 else int(cc[:2]) in _CC_3_PREFIXES


# Compact ("00971501234567") only where the digits after 00 fit a numbering plan exactly: NANP (1 + NXX NXX
# XXXX), UK (44 + 9-10 digits), Germany (49 + 9-11), France (33 + 9), UAE (971 + mobile 5X or landline).
# Anything else compact after 00 reads as a zero-padded id.
_PHONE_00_COMPACT = re.compile(
    _NUM_L
    + r"00(?:1[2-9]\d{2}[2-9]\d{6}|44[1-37-9]\d{8,9}|49[1-9]\d{8,10}|33[1-9]\d{8}"
    + r"|971(?:5[024568]\d{7}|[234679]\d{7}))"
    + _NUM_R
)
# UK mobile 07XXX XXXXXX and geographic 01/02 numbers written with a space after the area code, or with
# the area code in parentheses ("(020) 7946 0958").
_PHONE_UK = re.compile(
    _NUM_L
    + r"(?:0(?:7\d{3}(?P<u> ?)\d{3}(?P=u)?\d{3}|[12]\d{1,3} \d{3,4} ?\d{3,4})"
    + r"|\(0[12]\d{1,3}\) ?\d{3,4} ?\d{3,4})"
    + _NUM_R
)
_PHONE_NATIONAL = [
    # NANP: (555) 123-4567, 555-123-4567, 555.123.4567 (one separator kind), with or without the country
    # code (1-555-123-4567, 1 (555) 123-4567). Not "555 123 4567": space-separated number lists ("sizes
    # 250 500 1000") look the same.
    re.compile(
        _NUM_L
        + r"(?:1[ .\-]?)?(?:\([2-9]\d{2}\)[ .\-]?|[2-9]\d{2}(?P<s>[.\-]))\d{3}(?(s)(?P=s)|[ .\-])\d{4}"
        + _NUM_R
    ),
    # UAE mobile 05X (050 123 4567, 0501234567) and landline 0A with a separator (04 123 4567).
    re.compile(
        _NUM_L
        + r"0(?:5[024568](?P<a>[ \-]?)\d{3}(?P=a)?\d{4}|[234679](?P<b>[ \-])\d{3}(?P=b)?\d{4})"
        + _NUM_R
    ),
    _PHONE_UK,
    # France: ten digits in exactly five pairs with one separator kind (01 23 45 67 89, 06.12.34.56.78);
    # a longer run of pairs ("04 12 23 35 41 48") is a list of numbers.
    re.compile(_NUM_L + r"(?<!\d )0[1-9](?P<f>[ .\-])\d{2}(?P=f)\d{2}(?P=f)\d{2}(?P=f)\d{2}(?! \d)" + _NUM_R),
]
# Germany: an area code with its 0, then a space or "/" and one block ("030 12345678", "089/1234567",
# "0151 23456789", "(030) 12345678"); 10-12 digits in all, so "0123 4567 8901" is no match. Only Berlin,
# Hamburg, Frankfurt and Munich have two-digit codes, and 01 is for mobiles (015-017): a zero-padded
# code before a number ("070 25070454", "019 963612") is not taken for one.
_TRUNK_0 = re.compile(r"(?<![\w.\-])\(?0[1-9]")
_DE_AREA = r"0(?:30|40|69|89|[2-9]\d{2,3}|1[5-7]\d{1,2})"
_PHONE_DE = re.compile(_NUM_L + r"(?:" + _DE_AREA + r"[ /]|\(" + _DE_AREA + r"\) ?)\d{4,8}" + _NUM_R)


def _parens_ok(s: str) -> bool:
    # Balanced, not nested, at most two pairs: "(+44) (0)20 7946 0958" but not "+44) 20" or "+1 (555 123".
    depth = pairs = 0
    for ch in s:
        if ch == "(":
            depth += 1
            pairs += 1
        elif ch == ")":
            depth -= 1
        if not 0 <= depth <= 1:
            return False
    return depth == 0 and pairs <= 2


def _find_phones(text: str) -> Iterator[tuple[int, int]]:
    if "+" in text:
        for m in _PHONE_INTL.finditer(text):
            s = m.group()
            n_digits = sum(ch.isdigit() for ch in s)
            compact = n_digits == len(s) - 1
            # A bare "+12345678" is more often a signed amount than a phone: ask for 10+ digits then.
            if n_digits < (10 if compact else 8) or n_digits > 15:
                continue
            start = m.start()
            if start and text[start - 1] == "(" and s.count(")") > s.count("("):
                s, start = "(" + s, start - 1  # the country code in parentheses: "(+44) 20 7946 0958"
            if not _parens_ok(s):
                continue
            yield start, m.end()
    if "00" in text:
        for m in _PHONE_00.finditer(text):
            groups = _PHONE_00_GROUPS.split(m.group())
            # Four-digit groups throughout ("0031 2345 6789 0123") is how ids and cards are printed.
            if len(groups) >= 4 and all(len(g) == 4 for g in groups):
                continue
            if _country_code_ok(groups[0][2:]) and 8 <= sum(map(len, groups)) - 2 <= 15:
                yield m.span()
        for m in _PHONE_00_COMPACT.finditer(text):
            # A 13- or 14-digit code with a valid GS1 check digit is a barcode (GTIN-13/14; UPC-A padded
            # to "00..."), which shop data is full of; one phone number in ten is given up for that.
            if len(m.group()) not in (13, 14) or not _gs1_ok(m.group()):
                yield m.span()
    # Every national form but NANP starts with its trunk 0: one scan for that spares the text four more.
    trunk = _TRUNK_0.search(text) is not None
    for i, pattern in enumerate(_PHONE_NATIONAL):
        if i and not trunk:
            break
        # UK numbers have 10 or 11 digits with the 0: a 9-digit "019 963612" is a code and a count.
        least = 10 if pattern is _PHONE_UK else 9
        for m in pattern.finditer(text):
            n_digits = sum(ch.isdigit() for ch in m.group())
            if not least <= n_digits <= 11:
                continue
            # Real numbers are written with dots ("06.12.34.56.78" in a phone column): the dotted form stays,
            # but after "v", "version", "build"... it is a version ("v 01.02.03.04.05"), as for IPv4 quads.
            if "." in m.group() and _VERSION_BEFORE.search(text, max(0, m.start() - 24), m.start()):
                continue
            yield m.span()
    if trunk:
        for m in _PHONE_DE.finditer(text):
            if 10 <= sum(ch.isdigit() for ch in m.group()) <= 12:
                yield m.span()


# --------------------------------------------------------------------------------------------------
# Credit cards: a run of digit groups, then windows of 13-19 digits checked against IIN ranges,
# lengths and Luhn. Windows (instead of one bounded regex) find "ref 12 4111 1111 1111 1111" too.
_DIGIT_RUN = re.compile(r"(?<![\w.\-])(?<!\d[/:])\d+(?:[ \-]\d+)*(?!\w)(?![.:/]\d)")
_DIGITS = re.compile(r"\d+")
# How issuers print numbers (16: 4-4-4-4, Amex 4-6-5, Diners 4-6-4, 17-19: 4-4-4-4-N, 13: 4-3-3-3);
# other groupings ("4723-1459-80648") are reference numbers far more often than cards.
_CARD_GROUPINGS = frozenset(
    {
        (4, 4, 4, 4),
        (4, 6, 5),
        (4, 6, 4),
        (4, 4, 4, 4, 1),
        (4, 4, 4, 4, 2),
        (4, 4, 4, 4, 3),
        (4, 3, 3, 3),
        (4, 4, 4, 3),
    }
)


def _card_network_ok(d: str) -> bool:
    n = len(d)
    p2, p3, p4, p6 = int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:  # Discover
        return 16 <= n <= 19
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):  # Diners Club
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p2 == 62:  # UnionPay
        return 16 <= n <= 19
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763):  # Maestro
        return 13 <= n <= 19
    if 2200 <= p4 <= 2204:  # Mir
        return 16 <= n <= 19
    return False


def _card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _card_network_ok(digits) and _luhn_ok(digits)


def _find_cards(text: str) -> Iterator[tuple[int, int]]:
    for m in _DIGIT_RUN.finditer(text):
        raw = m.group()
        if len(raw) < 13:
            continue
        base = m.start()
        groups = [g.span() for g in _DIGITS.finditer(raw)]
        lengths = [b - a for a, b in groups]
        n = len(groups)
        i = 0
        while i < n:
            hit = -1
            if lengths[i] >= 13:
                hit = i if _card_window_ok(raw, groups, lengths, i, i) else -1
            elif lengths[i] == 4:
                # Printed numbers lead with 4 digits and span at most 5 groups (_CARD_GROUPINGS).
                total = 4
                for j in range(i + 1, min(n, i + 6)):
                    total += lengths[j]
                    if total > 19 or lengths[j] > 6:
                        break
                    if total >= 13 and _card_window_ok(raw, groups, lengths, i, j):
                        hit = j  # keep going: the longest valid window wins
            if hit < 0:
                i += 1
                continue
            yield base + groups[i][0], base + groups[hit][1]
            i = hit + 1


def _card_window_ok(raw: str, groups: list[tuple[int, int]], lengths: list[int], i: int, j: int) -> bool:
    # A window inside a dashed run is part of a longer identifier; only a space may border it.
    if i > 0 and raw[groups[i][0] - 1] != " ":
        return False
    if j < len(groups) - 1 and raw[groups[j][1]] != " ":
        return False
    if not 13 <= sum(lengths[i : j + 1]) <= 19:
        return False
    if j > i and (
        tuple(lengths[i : j + 1]) not in _CARD_GROUPINGS or len({raw[groups[k][1]] for k in range(i, j)}) != 1
    ):
        return False
    return _card_ok("".join(raw[groups[k][0] : groups[k][1]] for k in range(i, j + 1)))


# --------------------------------------------------------------------------------------------------
# IBAN (ISO 13616): registry length per country, check digits 02-98, mod-97 == 1. Uppercase only;
# printed form must group by 4.
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def _iban_ok(compact: str) -> bool:
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not 2 <= int(compact[2:4]) <= 98:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _find_ibans(text: str) -> Iterator[tuple[int, int]]:
    pos = 0
    while (m := _IBAN.search(text, pos)) is not None:
        span = _iban_at(text, m.start(), m.end())
        if span is None:
            pos = m.start() + 1
            continue
        yield span
        pos = span[1]


def _iban_at(text: str, start: int, stop: int) -> tuple[int, int] | None:
    # The regex over-reads (it cannot know the country's length); cut at the registry length.
    length = _IBAN_LENGTHS.get(text[start : start + 2])
    if length is None:
        return None
    chars: list[str] = []
    spaces: list[int] = []  # number of characters seen before each space
    end = start
    for k in range(start, stop):
        ch = text[k]
        if ch == " ":
            spaces.append(len(chars))
            continue
        chars.append(ch)
        end = k + 1
        if len(chars) == length:
            break
    if len(chars) != length or (end < len(text) and text[end].isalnum()):
        return None
    if spaces and spaces != list(range(4, length, 4)):
        return None
    return (start, end) if _iban_ok("".join(chars)) else None


# --------------------------------------------------------------------------------------------------
# IP addresses: shape by regex, validity by `ipaddress` (octets <= 255, no leading zeros).
_IPV4 = re.compile(r"(?<![\w.\-])(?:\d{1,3}\.){3}\d{1,3}(?!\w)(?!\.\d)")
# Not after a closing bracket: "f'{x}::1'", "(a)::1" are a scope or slice, not an address.
_IPV6 = re.compile(
    r"(?<![\w:.)\]}])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})(?![\w:])(?!\.\d)"
)

# Hosts get addresses only where IANA has allocated space: global unicast, unique local, link-local and
# multicast, and the prefixes that carry an IPv4 host (::ffff:0:0/96, NAT64). The rest is reserved, and
# what falls there is code or bytes: C++ scopes ("Face::Add", "abc::def"), hexspeak ("dead::beef"),
# slices ("x[10::10]"), EUI-64 and timecodes ("00:12:4b:00:01:02:03:04": every group under 0x100).
_IPV6_ASSIGNABLE = tuple(
    map(
        ipaddress.IPv6Network,
        ["2000::/3", "fc00::/7", "fe80::/10", "ff00::/8", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48"],
    )
)
# The loopback is reported as 127.0.0.1 is (an anonymised log must not keep one family's addresses), but only
# as written "::1" or in full: "0::1" or "00:00:00:00:00:00:00:01" are slices and bytes.
_LOOPBACK_FORMS = ("::1", "0:0:0:0:0:0:0:1")
# A subscript: an indexed name, then only slice syntax up to the candidate ("x[2000::10]", "int[:, ::1]").
_SUBSCRIPTED = re.compile(r"[\w\])]\[[\w\s:,.+\-]{0,40}$")


def _find_ips(text: str) -> Iterator[tuple[int, int]]:
    if ":" in text:
        for m in _IPV6.finditer(text):
            s = m.group()
            if s not in _LOOPBACK_FORMS:
                parts = [p for p in re.split(r"[:.]", s) if p]
                # "1::2" or "a[::2]" are code far more often than addresses worth redacting.
                if len(parts) < 2 or sum(len(p) for p in parts) < 4:
                    continue
                try:
                    address = ipaddress.IPv6Address(s)
                except ValueError:
                    continue
                if not any(address in net for net in _IPV6_ASSIGNABLE):
                    continue
            # A slice ("x[2000::10]", "x[:, ::1]") is Python or Cython; a URL's "[::1]" follows a "/".
            if _SUBSCRIPTED.search(text, max(0, m.start() - 44), m.start()):
                continue
            yield m.span()
    for m in _IPV4.finditer(text):
        try:
            value = int(ipaddress.IPv4Address(m.group()))
        except ValueError:
            continue
        # Netmasks (255.255.255.0: ones then zeros, from 255.0.0.0 up) and 0.0.0.0 name no host: they fill
        # network configs, and counting them as personal data buried the real addresses in a scan.
        if value == 0 or (value >> 24 == 255 and ((~value & 0xFFFFFFFF) + 1) & (~value & 0xFFFFFFFF) == 0):
            continue
        if _VERSION_BEFORE.search(text, max(0, m.start() - 24), m.start()):
            continue
        yield m.span()


# --------------------------------------------------------------------------------------------------
# National identifiers.
# UAE Emirates ID: 784-YYYY-NNNNNNN-C, Luhn over the 15 digits, plausible birth year.
_EMIRATES_ID = re.compile(_NUM_L + r"784(?P<s>[ \-]?)(?P<year>\d{4})(?P=s)\d{7}(?P=s)\d" + _NUM_R)


def _emirates_ok(digits: str) -> bool:
    return (
        len(digits) == 15
        and digits.startswith("784")
        and 1900 <= int(digits[3:7]) <= 2100
        and _luhn_ok(digits)
    )


def _find_emirates_ids(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMIRATES_ID.finditer(text):
        if _emirates_ok(re.sub(r"\D", "", m.group())):
            yield m.span()


# US SSN, dashed form only: area 000/666/9xx, group 00 and serial 0000 are never issued.
_US_SSN = re.compile(_NUM_L + r"(?P<area>\d{3})-(?P<group>\d{2})-(?P<serial>\d{4})" + _NUM_R)


def _find_ssns(text: str) -> Iterator[tuple[int, int]]:
    for m in _US_SSN.finditer(text):
        area = m.group("area")
        if (
            area in ("000", "666")
            or area[0] == "9"
            or m.group("group") == "00"
            or m.group("serial") == "0000"
        ):
            continue
        yield m.span()


# UK National Insurance number: HMRC prefix letters (no D F I Q U V; second letter no O), suffix A-D.
_UK_NINO = re.compile(
    r"(?<![\w])(?P<prefix>[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z])"
    r"(?P<s> ?)\d{2}(?P=s)\d{2}(?P=s)\d{2}(?P=s)[A-D](?!\w)"
)
_NINO_UNALLOCATED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _find_ninos(text: str) -> Iterator[tuple[int, int]]:
    for m in _UK_NINO.finditer(text):
        if m.group("prefix") not in _NINO_UNALLOCATED:
            yield m.span()


# --------------------------------------------------------------------------------------------------
# Overlaps resolve by priority (most specific, best validated first), then by length.
_Finder = Callable[[str], Iterator[tuple[int, int]]]
_FINDERS: tuple[tuple[str, _Finder, bool], ...] = (  # (kind, finder, needs a digit)
    ("email", _find_emails, False),
    ("iban", _find_ibans, True),
    ("emirates_id", _find_emirates_ids, True),
    ("credit_card", _find_cards, True),
    ("us_ssn", _find_ssns, True),
    ("uk_nino", _find_ninos, True),
    ("ip_address", _find_ips, False),
    ("phone", _find_phones, True),
)


def find_spans(text: str, *, email_field: bool = False) -> list[tuple[int, int, str]]:
    """Detected PII as ``(start, end, kind)``, sorted by start and non-overlapping. ``email_field``: the
    text is a value of a column or key named for e-mail, where any TLD of the root zone ends an address."""
    has_digit = _ANY_DIGIT.search(text) is not None
    if not has_digit and "@" not in text and ":" not in text:
        return []
    candidates: list[tuple[int, int, int, int, str]] = []
    for priority, (kind, finder, needs_digit) in enumerate(_FINDERS):
        if needs_digit and not has_digit:
            continue
        for start, end in _find_emails(text, email_field) if finder is _find_emails else finder(text):
            candidates.append((priority, start - end, start, end, kind))
    candidates.sort()
    starts: list[int] = []
    chosen: list[tuple[int, int, str]] = []
    for _, _, start, end, kind in candidates:
        i = bisect.bisect_left(starts, end)
        # Chosen spans are disjoint and sorted, so only the last one starting before `end` can overlap.
        if i and chosen[i - 1][1] > start:
            continue
        starts.insert(i, start)
        chosen.insert(i, (start, end, kind))
    return chosen


def scan_text(text: str, *, email_field: bool = False) -> dict[str, int]:
    """Count of findings per kind in one string (``email_field`` as for :func:`find_spans`); kinds with no
    finding are absent."""
    counts: dict[str, int] = {}
    for _, _, kind in find_spans(text, email_field=email_field):
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def scan_lines(lines: Iterable[str]) -> dict[str, int]:
    """Summed :func:`scan_text` counts over lines, streaming (nothing is held but the totals)."""
    totals: dict[str, int] = {}
    for line in lines:
        for kind, n in scan_text(line).items():
            totals[kind] = totals.get(kind, 0) + n
    return totals


def redact_text(text: str, template: str = "<{}>") -> str:
    """Replace every detected span with ``<KIND>`` (``<EMAIL>``, ``<CREDIT_CARD>``, ...), or with
    ``template`` filled with the kind (file names use ``[{}]``: '<' and '>' are not portable there)."""
    spans = find_spans(text)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end, kind in spans:
        out.append(text[pos:start])
        out.append(template.format(kind.upper()))
        pos = end
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Tables.
# Every kind needs an "@", a ":" or at least two digits; Arrow's vectorised (RE2) regex drops the
# other cells before any Python work.
_MAYBE_PII = "[@:]|[0-9][^0-9]*[0-9]"
# A bare number has no formatting or leading 0 or + to tell a phone from a count: only the checksum kinds
# can be found in one, cards (13-19 digits) and Emirates IDs (15). RE2 drops every other cell (prices,
# probabilities, counts) before any Python work.
_MAYBE_PII_NUMBER = "^[0-9]{13,19}$"


def _is_text_type(t: Any) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t))


def _is_string_view(t: Any) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check is not None and check(t))


def _text_chunks(column: Any) -> Iterator[Any]:
    """String chunks of a string-like column (string, large_string, string_view, dictionary)."""
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_decode()
        if _is_string_view(chunk.type):
            chunk = chunk.cast(pa.large_string())
        yield chunk


def _counted_values(chunk: Any) -> Iterator[tuple[Any, int]]:
    """Distinct non-null values of an array with their multiplicity (repeated cells scan once)."""
    if len(chunk) == chunk.null_count:
        return
    vc = pc.value_counts(chunk)
    values = vc.field("values").to_pylist()
    counts = vc.field("counts").to_pylist()
    for value, n in zip(values, counts, strict=True):
        if value is not None:
            yield value, int(n)


def _scan_strings(chunks: Iterable[Any], maybe: str, email_field: bool) -> dict[str, int]:
    """Findings in string chunks, scanning only the cells that match the RE2 pattern ``maybe``."""
    found: dict[str, int] = {}
    for chunk in chunks:
        if len(chunk) == chunk.null_count:
            continue
        for value, n in _counted_values(chunk.filter(pc.match_substring_regex(chunk, maybe))):
            for kind, k in scan_text(value, email_field=email_field).items():
                found[kind] = found.get(kind, 0) + k * n
    return found


def _is_number_type(t: Any) -> bool:
    # Half floats hold no 9-digit integer exactly.
    return bool(
        pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_float32(t) or pa.types.is_float64(t)
    )


def _number_text(chunk: Any) -> Any:
    """Numbers as the digits a person typed: pandas stores a card column as float64 once a value is
    missing, and Arrow writes 4111111111111111.0 as "4.111111111111111e+15"; decimals lose ".00"."""
    text = chunk.cast(pa.string())
    if pa.types.is_floating(chunk.type):
        integral = pc.and_(pc.equal(pc.floor(chunk), chunk), pc.less(pc.abs(chunk), 2.0**63))
        whole = pc.if_else(integral, chunk, pa.scalar(None, chunk.type)).cast(pa.int64()).cast(pa.string())
        return pc.if_else(integral, whole, text)
    if pa.types.is_decimal(chunk.type):
        return pc.replace_substring_regex(text, r"\.0+$", "")
    return text


def _merge(out: dict[str, dict[str, int]], key: str, found: dict[str, int]) -> None:
    if found:
        merged = out.setdefault(key, {})
        for kind, n in found.items():
            merged[kind] = merged.get(kind, 0) + n


def _scan_column(column: Any, path: str = "", *, email_field: bool = False) -> dict[str, dict[str, int]]:
    """Findings of one column by sub-path ("" is the column, ".field" a struct field; list and map
    items count as their container), findings in struct field names under HEADER. ``email_field``: the
    column (or the struct field, list or map holding it) is named for e-mail."""
    out: dict[str, dict[str, int]] = {}
    t = column.type
    value_type = t.value_type if pa.types.is_dictionary(t) else t
    if _is_text_type(value_type):
        chunks = _text_chunks(column)
        _merge(out, path, _scan_strings(chunks, _MAYBE_PII, email_field))
    elif _is_number_type(t):
        chunks = (_number_text(c) for c in column.chunks)
        _merge(out, path, _scan_strings(chunks, _MAYBE_PII_NUMBER, email_field))
    elif pa.types.is_struct(t):
        for i, field in enumerate(t):
            _merge(out, HEADER, scan_text(field.name))
            field_path = f"{path}.{field.name}"
            email = _email_name(field.name)
            for sub, found in _scan_column(
                pc.struct_field(column, [i]), field_path, email_field=email
            ).items():
                _merge(out, sub, found)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        for sub, found in _scan_column(pc.list_flatten(column), path, email_field=email_field).items():
            _merge(out, sub, found)
    elif pa.types.is_map(t):
        for part in (column.combine_chunks().keys, column.combine_chunks().items):
            for sub, found in _scan_column(pa.chunked_array([part]), path, email_field=email_field).items():
                _merge(out, sub, found)
    return out


def scan_table(table: Any) -> dict[str, dict[str, int]]:
    """``column -> kind -> count`` for the columns with findings; never a value.

    String-like columns get the full text scan; number columns (integers, decimals, integral floats)
    are scanned as their digits. Struct fields are reported as ``column.field``, list and map items as
    their column. Column names are reported redacted, and findings in them are counted under
    :data:`HEADER`. In a column or struct field named for e-mail ("email", "Email Address", "e_mail",
    "mail"), any TLD of the root zone ends an address (see :func:`find_spans`).
    """
    result: dict[str, dict[str, int]] = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        _merge(result, HEADER, scan_text(field.name))
        for sub, found in _scan_column(column, email_field=_email_name(field.name)).items():
            _merge(result, sub if sub == HEADER else redact_text(field.name + sub), found)
    return result


def _canonical(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))


def _as_strings(chunk: Any) -> Any:
    """The chunk as a string array: the canonical text each cell is masked or hashed from."""
    if pa.types.is_dictionary(chunk.type):
        chunk = chunk.dictionary_decode()
    if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
        return chunk
    if _is_number_type(chunk.type):
        return _number_text(chunk)  # a masked card reads <CREDIT_CARD>, as the scan saw it
    try:
        # Arrow's own formatting: 123 -> "123", so an int key hashes like the same key stored as text.
        return chunk.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pa.array([None if v is None else _canonical(v) for v in chunk.to_pylist()], pa.large_string())


def _map_column(column: Any, fn: Callable[[str], str]) -> Any:
    """Apply ``fn`` to each distinct non-null cell; nulls stay null; the result is a string column."""
    out = []
    for chunk in column.chunks:
        encoded = _as_strings(chunk).dictionary_encode()
        mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], pa.string())
        out.append(mapped.take(encoded.indices))
    return pa.chunked_array(out, pa.string())


def _mask_cell(value: str) -> str:
    if not value:  # a CSV's missing value: "***" would say one was there
        return value
    redacted = redact_text(value)
    # Nothing detected: the user still named the column sensitive, so hide the whole cell.
    return redacted if redacted != value else _MASK


def _hasher(salt: bytes) -> Callable[[str], str]:
    keyed = hmac.new(salt, digestmod=hashlib.sha256)

    def digest(value: str) -> str:
        if not value:  # one token for every missing value would join them all to one another
            return value
        h = keyed.copy()
        h.update(value.encode("utf-8"))
        return "h:" + h.hexdigest()[:32]

    return digest


def cell_function(method: str, salt: bytes) -> Callable[[str], str] | None:
    """What ``method`` does to one cell's text (``None`` for drop), after checking both arguments."""
    if method not in METHODS:
        raise UsageError(
            f"unknown anonymisation method {method!r}; valid methods: {', '.join(METHODS)}",
            method=method,
            valid=list(METHODS),
        )
    if not isinstance(salt, bytes | bytearray) or len(salt) < MIN_SALT_BYTES:
        got = f"{len(salt)} bytes" if isinstance(salt, bytes | bytearray) else type(salt).__name__
        raise UsageError(
            f"salt must be at least {MIN_SALT_BYTES} random bytes, got {got}; "
            "generate one with secrets.token_bytes(32) and keep it secret",
        )
    if method == "drop":
        return None
    return _mask_cell if method == "mask" else _hasher(bytes(salt))


def anonymize_table(table: Any, columns: Sequence[str] | None, method: str, salt: bytes) -> Any:
    """Mask, hash or drop PII columns and redact PII in column names; returns a new table (the input
    is not changed), or ``table`` itself when there is nothing to change.

    ``columns=None`` means the columns where :func:`scan_table` finds PII. ``mask`` replaces
    detected spans with ``<KIND>`` and other non-empty cells with ``***``; ``hash`` replaces each cell
    with ``h:`` + the first 32 hex digits of HMAC-SHA256(salt, cell) (deterministic per salt, so joins
    still work); ``drop`` removes the columns. Nulls stay null and empty cells empty; masked/hashed
    columns become strings.
    A column name holding PII is redacted (``<EMAIL>``) whatever the method.
    """
    fn = cell_function(method, salt)
    if isinstance(columns, str):
        raise UsageError(
            f"columns must be a list of column names, not the string {columns!r}; use [{columns!r}]"
        )
    names: list[str] = list(table.column_names)
    if columns is None:
        chosen = [
            i
            for i, (name, column) in enumerate(zip(names, table.columns, strict=True))
            if _scan_column(column, email_field=_email_name(name))
        ]
    else:
        wanted = list(dict.fromkeys(columns))
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise UsageError(
                f"unknown column(s) {', '.join(map(repr, unknown))}; "
                f"valid columns: {', '.join(redact_text(n) for n in names)}",
                unknown=unknown,
            )
        chosen = [i for i, name in enumerate(names) if name in wanted]
    for index in sorted(chosen, reverse=True):
        if fn is None:
            table = table.remove_column(index)
            continue
        field = table.schema.field(index)
        new_field = pa.field(field.name, pa.string(), nullable=field.nullable, metadata=field.metadata)
        table = table.set_column(index, new_field, _map_column(table.column(index), fn))
    renamed = [redact_text(name) for name in table.column_names]
    if renamed != table.column_names:
        # pandas' schema metadata repeats the old names: it would keep the PII and no longer match.
        metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
        table = table.rename_columns(renamed).replace_schema_metadata(metadata or None)
    return table


# --------------------------------------------------------------------------------------------------
# JSON lines. Read with the json module, not Arrow: Arrow would turn objects into structs, fill absent
# keys with null and re-format numbers, and a line must be written back as it was unless it changes.


class JsonNumber(str):
    """A JSON number as written ("1.50", "1e3"): scanned as its text, written back unchanged."""

    __slots__ = ()


def parse_json(text: str) -> Any:
    """One JSON value with its numbers kept as :class:`JsonNumber`; ValueError when it is not JSON."""
    return json.loads(text, parse_int=JsonNumber, parse_float=JsonNumber, parse_constant=JsonNumber)


def dump_json(value: Any, *, sort_keys: bool = False) -> str:
    """The JSON text of a :func:`parse_json` value (numbers as they were written)."""
    if isinstance(value, JsonNumber):
        return str.__str__(value)
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else value.items()
        body = ", ".join(
            f"{json.dumps(k, ensure_ascii=False)}: {dump_json(v, sort_keys=sort_keys)}" for k, v in items
        )
        return "{" + body + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump_json(v, sort_keys=sort_keys) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _scan_json(value: Any, path: str, out: dict[str, dict[str, int]], email_field: bool) -> None:
    if isinstance(value, str):
        _merge(out, path, scan_text(value, email_field=email_field))
    elif isinstance(value, dict):
        for key, item in value.items():
            _merge(out, HEADER, scan_text(key))
            _scan_json(item, f"{path}.{key}", out, _email_name(key))
    elif isinstance(value, list):
        for item in value:
            _scan_json(item, path, out, email_field)


def scan_records(records: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, int]], set[str]]:
    """Findings in JSON objects, reported as :func:`scan_table` does (``key.field`` for nested
    values, keys under :data:`HEADER`; values of keys named for e-mail as in such columns), and the
    top-level keys whose values hold any."""
    report: dict[str, dict[str, int]] = {}
    keys: set[str] = set()
    for record in records:
        for key, value in record.items():
            _merge(report, HEADER, scan_text(key))
            found: dict[str, dict[str, int]] = {}
            _scan_json(value, key, found, _email_name(key))
            for path, counts in found.items():
                if path != HEADER:
                    keys.add(key)
                _merge(report, path if path == HEADER else redact_text(path), counts)
    return report, keys


def _redact_keys(value: Any, cell: Callable[[str], str] | None) -> Any:
    """``value`` with PII in its keys redacted and, given ``cell``, every string and number masked."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[_unique(redact_text(key), out)] = _redact_keys(item, cell)
        return out
    if isinstance(value, list):
        return [_redact_keys(item, cell) for item in value]
    return cell(value) if cell is not None and isinstance(value, str) else value


def _unique(key: str, taken: dict[str, Any]) -> str:
    # Two keys redacted to the same "<EMAIL>" must not overwrite one another (nothing is lost).
    n, candidate = 1, key
    while candidate in taken:
        n += 1
        candidate = f"{key}_{n}"
    return candidate


def anonymize_record(
    record: dict[str, Any], columns: Iterable[str], fn: Callable[[str], str] | None
) -> dict[str, Any]:
    """One JSON object with ``columns`` (top-level keys) masked, hashed or dropped (``fn`` from
    :func:`cell_function`) and PII in every key redacted. A masked object keeps its shape (each string
    or number masked); a hashed one is hashed whole, as its JSON text with sorted keys."""
    chosen = set(columns)
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in chosen:
            if fn is None:
                continue
            if fn is _mask_cell:
                value = _redact_keys(value, fn)
            elif value is not None:
                value = fn(value if isinstance(value, str) else dump_json(value, sort_keys=True))
        out[_unique(redact_text(key), out)] = _redact_keys(value, None)
    return out
