"""Masking of personal data and the API key, for anything we print or log.

Mask at the source (every message that names a person uses these), and `PiiFilter` as a
safety net on the log handlers in case a value slips through in a third-party message.
"""

from __future__ import annotations

import logging
import re
from typing import Final

# 15/17+check-digit ID numbers and 11-digit mainland mobiles, as they might appear in free text.
_ID_RE: Final = re.compile(r"(?<![0-9])([0-9]{3})[0-9]{8,11}([0-9]{3}[0-9Xx])(?![0-9])")
_ID15_RE: Final = re.compile(r"(?<![0-9])([0-9]{3})[0-9]{9}([0-9]{3})(?![0-9])")
_MOBILE_RE: Final = re.compile(r"(?<![0-9])(1[3-9][0-9])[0-9]{4}([0-9]{4})(?![0-9])")


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

    >>> scrub("id 11010119900307123X tel 13812345678")
    'id 110***********123X tel 138****5678'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _ID_RE.sub(lambda m: mask_idcard(m.group(0)), text)
    text = _ID15_RE.sub(lambda m: mask_idcard(m.group(0)), text)
    return _MOBILE_RE.sub(lambda m: mask_mobile(m.group(0)), text)


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
