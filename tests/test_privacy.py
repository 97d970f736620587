"""Masking: ID numbers and mobiles as people really type them never leak in full."""

from __future__ import annotations

import re
import unicodedata

import pytest

from batch_enricher.columns import find_columns
from batch_enricher.errors import ColumnError
from batch_enricher.privacy import scrub

ID = "11010119900307803X"
MOBILE = "13812345678"


def _digits(text: str) -> str:
    """The text as a reader would take it in: half-width, separators and spaces gone."""
    return re.sub(r"[^0-9X*]", "", unicodedata.normalize("NFKC", text).upper())


@pytest.mark.parametrize(
    "text",
    [
        "tel +8613812345678",
        "tel 008613812345678",
        "tel 138-1234-5678",
        "tel 138 1234 5678",
        "tel (+86) 138-1234-5678",
        "tel １３８１２３４５６７８",
        "tel ＋８６　１３８　１２３４　５６７８",
        "tel 138－1234－5678",
    ],
)
def test_scrub_masks_mobiles_as_typed(text: str) -> None:
    scrubbed = scrub(text)
    assert MOBILE not in _digits(scrubbed), scrubbed
    assert "5678" in scrubbed or "５６７８" in scrubbed  # still recognisable by its last four


@pytest.mark.parametrize(
    "text",
    [
        "id １１０１０１１９９００３０７８０３Ｘ",
        "id １１０１０１１９９００３０７８０３ｘ",
        "id 110101 19900307 803X",
        "id 110101-19900307-803x",
        "id 110101 900307 803",
    ],
)
def test_scrub_masks_id_numbers_as_typed(text: str) -> None:
    scrubbed = scrub(text)
    digits = _digits(scrubbed)
    assert "0119900307" not in digits and "101900307" not in digits, scrubbed


def test_scrub_keeps_what_it_did_before() -> None:
    assert scrub("id 11010119900307123X tel 13812345678") == "id 110***********123X tel 138****5678"
    assert scrub("身份证110101199003078") == "身份证110********3078"
    assert scrub("row 12 of 3400, 2024-01-01 12:00, qps 10.5") == (
        "row 12 of 3400, 2024-01-01 12:00, qps 10.5"
    )


def test_headerless_file_with_full_width_and_prefixed_values_is_masked() -> None:
    """A file without a header row shows its first row as 'headers found': a full-width ID and a
    +86 mobile slipped through the 'looks like data' test and were printed in full."""
    row = ["王小明", "１１０１０１１９９００３０７８０３Ｘ", "+8613812345678"]
    with pytest.raises(ColumnError) as caught:
        find_columns(row)
    message = str(caught.value)
    assert "王小明" not in message
    assert "0119900307" not in _digits(message)
    assert MOBILE not in _digits(message)
    assert "needs a header row" in message


# --- the API key: masked where it is a value, not inside the words around it -----------------

_WARNING = "--key is visible to other users (ps, shell history); prefer the JUHE_API_KEY variable"


@pytest.mark.parametrize("key", ["k", "e", "y", "K", "-", "ey", "key", "KEY", "sh"])
def test_a_short_key_does_not_mask_the_words_around_it(key: str) -> None:
    # A one-letter key used to turn the warning itself into "--***ey is visible".
    assert scrub(_WARNING, (key,)) == _WARNING


@pytest.mark.parametrize("key", ["k", "-", "ab", "k3y", "k.y", "密"])
@pytest.mark.parametrize(
    "template",
    [
        "{}",
        "key={}",
        "key={}&mobile=1",
        "--key {}",
        "--key={}",
        "'{}' rejected",
        '{{"key": "{}"}}',
        "path /tmp/{}/out.csv",
        "{}.csv",
        "key: {}.",
        "（{}）",
    ],
)
def test_a_short_key_is_masked_wherever_it_stands_alone(key: str, template: str) -> None:
    text = template.format(key)
    assert scrub(text, (key,)) == template.format("***")


def test_a_long_key_is_masked_even_glued_to_other_text() -> None:
    key = "0123456789abcdef0123456789abcdef"
    assert scrub(f"url?key={key}&x key{key}x", (key,)) == "url?key=***&x key***x"
    assert scrub("k3y-S3CRET was sent", ("k3y-S3CRET",)) == "*** was sent"
