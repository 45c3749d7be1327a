import hashlib

import pytest

from pixel.hashing import hash_identifier, is_sha256_hex, normalize_phone


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    "kind, raw, normalized",
    [
        ("email", "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        ("phone", "+1 (650) 555-1212", "+16505551212"),
        ("phone", "0049 30 1234567", "+0049301234567"),
        ("external_id", "  User-42 ", "User-42"),
    ],
)
def test_identifiers_are_normalised_then_hashed(kind, raw, normalized):
    assert hash_identifier(kind, raw) == sha(normalized)


def test_prehashed_values_pass_through_lowercased():
    digest = sha("jane@example.com")
    assert hash_identifier("email", digest.upper()) == digest


def test_empty_values_hash_to_nothing():
    assert hash_identifier("email", "   ") == ""
    assert hash_identifier("phone", "no digits") == ""


def test_phone_keeps_at_most_fifteen_digits():
    assert normalize_phone("+1234567890123456789") == "+123456789012345"


def test_a_hex_digest_with_a_trailing_newline_is_not_taken_as_prehashed():
    digest = "a" * 64
    assert is_sha256_hex(digest)
    assert not is_sha256_hex(digest + "\n")


def test_phone_digits_are_ascii_only_as_in_the_pixel():
    # The pixel drops anything but 0-9 (/\D/g); the collector must hash the same number alike.
    assert normalize_phone("+1 (650) 555-1212") == "+16505551212"
    assert normalize_phone("+١٦٥٠٥٥٥١٢١٢") == ""
    assert normalize_phone("+1 650 ٥٥٥ 1212") == "+16501212"
