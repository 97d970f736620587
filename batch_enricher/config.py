"""Settings: defaults < `--config` TOML < environment < flags.

The TOML file holds the same names as the `enrich` flags (with `-` or `_`), plus an optional
`[bands]` table overriding the score tables. The CLI hands the file's settings to click as the
command's `default_map`, so click applies the precedence itself: a flag beats its environment
variable, which beats the file, which beats the built-in default.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Final

from batch_enricher import bands
from batch_enricher.errors import ConfigError

#: The API endpoint (`--endpoint`).
DEFAULT_ENDPOINT: Final = "https://apis.juhe.cn/financeInfo/query"

#: Environment variables read for each setting (flag > env > config > default).
ENV: Final[dict[str, str]] = {
    "key": "JUHE_API_KEY",
    "endpoint": "JUHE_ENDPOINT",
    "qps": "BATCH_ENRICHER_QPS",
    "max_qps": "BATCH_ENRICHER_MAX_QPS",
    "concurrency": "BATCH_ENRICHER_CONCURRENCY",
    "timeout": "BATCH_ENRICHER_TIMEOUT",
    "max_retries": "BATCH_ENRICHER_MAX_RETRIES",
    "uncertain_retries": "BATCH_ENRICHER_UNCERTAIN_RETRIES",
    "state": "BATCH_ENRICHER_STATE",
    "secret_file": "BATCH_ENRICHER_SECRET_FILE",
    "max_age": "BATCH_ENRICHER_MAX_AGE",
    "max_billed": "BATCH_ENRICHER_MAX_BILLED",
    "headers": "BATCH_ENRICHER_HEADERS",
}

#: Settings a config file may hold (the enrich flags that make sense to fix per machine).
SETTINGS: Final = frozenset(
    {
        "key",
        "endpoint",
        "qps",
        "max_qps",
        "concurrency",
        "timeout",
        "max_retries",
        "uncertain_retries",
        "retry_initial",
        "retry_max",
        "state",
        "secret_file",
        "max_age",
        "max_billed",
        "headers",
        "escape_formulas",
        "name_col",
        "idcard_col",
        "mobile_col",
        "encoding",
        "lock_timeout",
        "log_file",
    }
)

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration like `30d`, `12h`, `15m`, `90s` or `0`.

    >>> parse_duration("30d")
    2592000.0
    >>> parse_duration("0")
    0.0
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30d, 12h, 15m, 90s or 0")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def load_config(path: Path) -> tuple[dict[str, Any], dict[str, bands.Table]]:
    """Read a TOML config: (settings for click's default_map, band tables).

    Unknown settings are an error naming the known ones, so a typo never passes silently.
    """
    try:
        # utf-8-sig: Windows Notepad writes a BOM, which TOML itself does not allow.
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    band_overrides = data.pop("bands", None)
    settings: dict[str, Any] = {}
    for name, value in data.items():
        key = name.replace("-", "_")
        if key not in SETTINGS:
            known = ", ".join(sorted(SETTINGS))
            raise ConfigError(f"unknown setting {name!r} in {path}; known settings: {known}")
        settings[key] = value
    try:
        tables = bands.load_tables(band_overrides if isinstance(band_overrides, dict) else None)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if band_overrides is not None and not isinstance(band_overrides, dict):
        raise ConfigError(f"{path}: [bands] must be a table of score tables")
    return settings, tables
