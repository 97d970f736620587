"""Masking of personal data and the API key, for anything we print or log.

Mask at the source (every message that names a person uses these), and `PiiFilter` as a
safety net on the log handlers in case a value slips through in a third-party message.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Final

# ID numbers (15 to 18 characters, the last a digit or X) and 11-digit mainland mobiles (with an
# optional +86/0086/86 prefix), as they might appear in free text: a single space or hyphen may
# separate any two digits ("138-1234-5678", "110101 19900307 803X"). The patterns run on a
# same-length copy of the text with full-width digits and signs folded to ASCII (`_FOLD`).
_SEP: Final = "[ -]?"
_ID_RE: Final = re.compile(rf"(?<![0-9])[0-9](?:{_SEP}[0-9]){{13,16}}{_SEP}[0-9Xx](?![0-9])")
_MOBILE_RE: Final = re.compile(
    rf"(?<![0-9])(?:(?:\+|00)?86{_SEP})?1{_SEP}[3-9](?:{_SEP}[0-9]){{9}}(?![0-9])"
)
#: Secrets this long are masked wherever they appear: no word holds one by chance, and a key
#: glued to other text must not show. Shorter ones only where they stand as a whole token, so a
#: one-letter test key is masked in `key=k` but does not turn `--key` into `--***ey`.
_SECRET_ANYWHERE: Final = 8
#: What continues a token on either side of a short secret (`-` too: `--key` is one word).
_TOKEN: Final = r"[\w-]"
#: One character for one: full-width digits, X, plus and hyphen, and the ideographic space.
_FOLD: Final[dict[int, str]] = {
    **{0xFF10 + d: str(d) for d in range(10)},
    0xFF38: "X",
    0xFF58: "x",
    0xFF0B: "+",
    0xFF0D: "-",
    0x3000: " ",
}


def mask_idcard(value: str) -> str:
    """Keep the first three and last four characters of an ID number.

    >>> mask_idcard("11010119900307123X")
    '110***********123X'
    """
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_mobile(value: str) -> str:
    """Keep the first three and last four digits of a mobile number.

    >>> mask_mobile("13812345678")
    '138****5678'
    """
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_name(value: str) -> str:
    """Keep a name's first character only.

    >>> mask_name("王小明")
    '王*'
    """
    return value[:1] + "*" if value else ""


def mask_key(value: str) -> str:
    """Never show any part of an API key."""
    return "***" if value else ""


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask anything in free text that looks like an ID number or mobile, and the given secrets.

    A secret shorter than 8 characters is masked only where it stands as a whole token.

    >>> scrub("id 11010119900307123X tel 13812345678")
    'id 110***********123X tel 138****5678'
    >>> scrub("--key is visible; key=k", ("k",))
    '--key is visible; key=***'
    """
    for secret in secrets:
        if secret:
            text = _secret_pattern(secret).sub("***", text)
    text = _mask_all(text, _ID_RE, mask_idcard)
    return _mask_all(text, _MOBILE_RE, mask_mobile)


@functools.lru_cache(maxsize=16)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    escaped = re.escape(secret)
    if len(secret) >= _SECRET_ANYWHERE:
        return re.compile(escaped)
    return re.compile(rf"(?<!{_TOKEN}){escaped}(?!{_TOKEN})")


def _mask_all(text: str, pattern: re.Pattern[str], mask: Callable[[str], str]) -> str:
    """Mask every match of `pattern` in the folded text, in the original text (same length)."""
    folded = text.translate(_FOLD)
    pieces: list[str] = []
    last = 0
    for match in pattern.finditer(folded):
        start, end = match.span()
        pieces += (text[last:start], mask(text[start:end]))
        last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


class PiiFilter(logging.Filter):
    """A logging filter that scrubs ID numbers, mobiles and the API key from every record."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = scrub(message, self._secrets)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are rendered later from exc_info: scrub them here, once, as text.
            record.exc_text = scrub(
                logging.Formatter().formatException(record.exc_info), self._secrets
            )
            record.exc_info = None
        return True
