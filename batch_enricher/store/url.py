"""A team database's address, `--state postgresql://user@host:port/db`, never shown in full.

The URL goes to libpq as it is (so its own environment variables, `~/.pgpass`, `sslmode` and
the other URL parameters work as libpq documents them); every message shows `masked`, where
a password, in the user part or as a `password=` parameter, is replaced by `***`.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["SCHEMES", "TeamUrl", "is_team_url", "mask_urls", "parse_state"]

#: What makes `--state` a team database rather than a file.
SCHEMES: Final = ("postgresql://", "postgres://")
_MASK: Final = "***"
# A URL anywhere in a message (libpq and psycopg may quote the conninfo back).
_URL_IN_TEXT: Final = re.compile(r"postgres(?:ql)?://\S+", re.IGNORECASE)
# `password=...` in a key=value conninfo as libpq error messages may echo it.
_PASSWORD_PARAM: Final = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def is_team_url(value: str | Path | None) -> bool:
    """Whether a `--state` value names a PostgreSQL database.

    >>> is_team_url("postgresql://batch@db.example/enricher"), is_team_url("j.sqlite3")
    (True, False)
    """
    return isinstance(value, str) and value.strip().lower().startswith(SCHEMES)


@dataclass(frozen=True)
class TeamUrl:
    """A PostgreSQL URL; `str()` and `repr()` give the masked form, `conninfo` the real one."""

    conninfo: str

    @property
    def masked(self) -> str:
        """The URL with any password replaced by `***`."""
        return _mask_one(self.conninfo)

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"TeamUrl({self.masked!r})"


def parse_state(value: str | Path | TeamUrl | None) -> Path | TeamUrl | None:
    """`--state` as given: a team URL, a file path, or None (the default file).

    >>> parse_state("postgres://u:pw@h/db")
    TeamUrl('postgres://u:***@h/db')
    """
    if value is None or isinstance(value, TeamUrl | Path):
        return value
    if is_team_url(value):
        return TeamUrl(value.strip())
    return Path(value)


def mask_urls(text: str, extra: tuple[str, ...] = ()) -> str:
    """`text` with every PostgreSQL URL's password, and every `password=` value, masked."""
    text = _URL_IN_TEXT.sub(lambda m: _mask_one(m.group(0)), text)
    text = _PASSWORD_PARAM.sub(lambda m: m.group(1) + _MASK, text)
    for secret in extra:
        if secret:
            text = text.replace(secret, _MASK)
    return text


def _mask_one(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://" + _MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + _MASK
        netloc = f"{userinfo}@{hosts}"
    query = "&".join(
        (f"{name}={_MASK}" if name.lower() == "password" else pair)
        for pair in parts.query.split("&")
        if pair
        for name in [pair.split("=", 1)[0]]
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
