"""Google's normalisers, run as SQL in DuckDB: ``gmail_email`` (e-mail, then no dots before the @ of a
gmail.com or googlemail.com address) and ``e164_phone`` ("+" and the digits), each then SHA-256,
compared with Python doing what Google's formatting guide says."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_audience_hashing import emails, mapped


def google_email(value: str) -> str:
    address = "".join(value.split()).lower()
    local, _, domain = address.rpartition("@")
    if domain in ("gmail.com", "googlemail.com"):
        address = local.replace(".", "") + "@" + domain
    return hashlib.sha256(address.encode()).hexdigest()


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        (" Jane.Doe@Gmail.com ", "janedoe@gmail.com"),
        ("j.a.n.e+ads@GOOGLEMAIL.COM", "jane+ads@googlemail.com"),
        ("jane.doe@example.com", "jane.doe@example.com"),  # dots stay everywhere else
        ("jane.doe@gmail.com.au", "jane.doe@gmail.com.au"),
        ("jane.doe@notgmail.com", "jane.doe@notgmail.com"),
        ("Jane . Doe @ gmail.com", "janedoe@gmail.com"),
    ],
)
def test_gmail_email_drops_the_dots_only_before_a_gmail_at(given: str, normalised: str) -> None:
    ((record, invalid, _),) = mapped([given], {"f": "gmail_email"})
    assert invalid is None and record["f"] == hashlib.sha256(normalised.encode()).hexdigest()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(emails(), emails().map(lambda e: e.split("@")[0] + "@gmail.com")), min_size=1, max_size=5
    )
)
def test_gmail_email_hashes_as_google_documents(addresses: list[str]) -> None:
    got = [record["f"] for record, _, _ in mapped(addresses, {"f": "gmail_email"})]
    assert got == [google_email(a) for a in addresses]


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("+1 (800) 555-0100", "+18005550100"),
        ("1-800-555-0100", "+18005550100"),
        ("0044 20 7946 0000", "+442079460000"),
        ("+44 (0) 20 7946 0000", "+4402079460000"),  # the model must give the number as dialled from abroad
    ],
)
def test_e164_phone_is_a_plus_and_the_digits(given: str, normalised: str) -> None:
    ((record, invalid, _),) = mapped([given], {"f": "e164_phone"})
    assert invalid is None and record["f"] == hashlib.sha256(normalised.encode()).hexdigest()


@pytest.mark.parametrize(("normaliser", "blank"), [("gmail_email", " \t\n"), ("e164_phone", "+ () -")])
def test_nothing_left_is_null_not_the_hash_of_nothing(normaliser: str, blank: str) -> None:
    rows = mapped(["  ", blank, None], {"f": normaliser})
    # Then no record holds a hash of "" or of "+": the row has no identifier, and is invalid
    assert [record.get("f") for record, _, _ in rows] == [None, None, None]
    assert all("is empty" in str(invalid) for _, invalid, _ in rows)
