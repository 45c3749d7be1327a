"""CSV cells a spreadsheet opens as text (OWASP's rule), checked on any text."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from reporting.spreadsheet import FORMULA_STARTS, safe_cell


@pytest.mark.parametrize("text, cell", [
    ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
    ("+SUM(1,2)", "'+SUM(1,2)"),
    ("@SUM(1+1)", "'@SUM(1+1)"),
    ("-1+cmd|' /C calc'!A0", "'-1+cmd|' /C calc'!A0"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("-", "'-"),
    ("-1", "-1"),
    ("-12.50", "-12.50"),
    ("-3e-05", "-3e-05"),
    ("+1", "'+1"),
    ("spring", "spring"),
    ("a=b", "a=b"),
    ("", ""),
])
def test_formula_cells_get_a_quote_and_numbers_stay_numbers(text, cell):
    assert safe_cell(text) == cell


def test_numbers_and_nulls():
    assert (safe_cell(-5), safe_cell(2.5), safe_cell(None)) == (-5, 2.5, "")


@given(st.text(alphabet=st.sampled_from("=+-@\t\r01.eE9aZ |'!(") | st.characters(), max_size=20))
def test_no_cell_starts_a_formula(text):
    cell = safe_cell(text)
    assert cell in (text, "'" + text)
    if cell.startswith(FORMULA_STARTS):  # only a plain (negative) number may
        assert cell == text and cell.startswith("-") and float(cell) <= 0
    if not text.startswith(FORMULA_STARTS):
        assert cell == text  # anything else is left as it is
