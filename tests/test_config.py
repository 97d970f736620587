"""Settings: durations, the TOML file (names, errors, band tables), and flag/env/file precedence."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from batch_enricher.config import load_config, parse_duration
from batch_enricher.errors import ConfigError
from batch_enricher.sandbox import expected_answer
from tests.conftest import Served, person, read_csv, write_csv

Run = Callable[..., Result]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("12h", 43200.0),
        ("30d", 2592000.0),
        ("1w", 604800.0),
        (" 2D ", 172800.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "30 days", "-1d", "1y", "1h30m"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape("use e.g. 30d, 12h, 15m, 90s or 0")):
        parse_duration(text)


def test_config_names_take_dashes_or_underscores(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('max-age = "12h"\nmax_retries = 2\nqps = 5\n', encoding="utf-8")
    settings, tables = load_config(path)
    assert settings == {"max_age": "12h", "max_retries": 2, "qps": 5}
    assert tables["range"][1] == (10, 19, "(0,1500]")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("qsp = 5\n", "unknown setting 'qsp'"),
        ("qps = \n", "is not valid TOML"),
        ('[bands]\nrange = [[10, 5, "x"]]\n', "bad row"),
        ('[bands]\nscore = [[0, 1, "x"]]\n', "unknown score model 'score'"),
    ],
)
def test_bad_config_files_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_missing_config_file_is_exit_1_not_a_traceback(tmp_path: Path, run: Run) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    result = run("enrich", str(src), "--sandbox", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: config file not found")


def test_unknown_setting_lists_the_known_ones(tmp_path: Path, run: Run) -> None:
    config = tmp_path / "c.toml"
    config.write_text("qsp = 5\n", encoding="utf-8")
    result = run("enrich", str(write_csv(tmp_path / "in.csv", [])), "--config", str(config))
    assert result.exit_code == 1
    assert "known settings:" in result.output and "qps" in result.output


def test_config_file_sets_band_tables_headers_and_formula_escaping(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox()
    config = tmp_path / "c.toml"
    config.write_text(
        f'endpoint = "{server.url}"\nkey = "k"\nqps = 200\nheaders = "zh"\n'
        "escape_formulas = false\n"
        '[bands]\nrange = [[0, 100, "any range"]]\n',
        encoding="utf-8",
    )
    n, i, m = next(p for p in map(person, range(100)) if expected_answer(*p)[0] == 0)
    src = write_csv(
        tmp_path / "in.csv", [[n, i, m, "=1+1"]], ("姓名", "身份证号", "手机号", "备注")
    )
    out = tmp_path / "out.csv"

    result = run("enrich", str(src), "--config", str(config), "-o", str(out))

    assert result.exit_code == 0, result.output
    [row] = read_csv(out)
    assert row["备注"] == "=1+1", "escape_formulas = false reached the writer"
    assert row["状态"] == "ok"
    assert row["经济能力区间"] == "any range", "the [bands] table replaced the built-in one"
    assert server.stats.requests == 1, "the endpoint came from the file"


def test_env_beats_file_and_flag_beats_env(
    tmp_path: Path, sandbox: Callable[..., Served], run: Run
) -> None:
    server = sandbox()
    config = tmp_path / "c.toml"
    config.write_text(f'endpoint = "{server.url}"\nkey = "k"\nheaders = "zh"\n', encoding="utf-8")
    src = write_csv(tmp_path / "in.csv", [list(person(3))])

    env = {"BATCH_ENRICHER_HEADERS": "en"}
    by_env = run(
        "enrich", str(src), "--config", str(config), "-o", str(tmp_path / "a.csv"), env=env
    )
    assert by_env.exit_code == 0, by_env.output
    assert "status" in read_csv(tmp_path / "a.csv")[0]
    by_flag = run(
        "enrich",
        str(src),
        "--config",
        str(config),
        "-o",
        str(tmp_path / "b.csv"),
        "--headers",
        "zh",
        env=env,
    )
    assert by_flag.exit_code == 0, by_flag.output
    assert "状态" in read_csv(tmp_path / "b.csv")[0]


def test_usage_errors_exit_2(tmp_path: Path, run: Run) -> None:
    src = write_csv(tmp_path / "in.csv", [list(person(1))])
    bad_age = run("enrich", str(src), "--sandbox", "--max-age", "forever")
    assert bad_age.exit_code == 2 and "use e.g. 30d" in bad_age.output
    both = run("enrich", str(src), "--sandbox", "-o", "x.csv", "--output-dir", str(tmp_path))
    assert both.exit_code == 2 and "not both" in both.output
    assert run("enrich").exit_code == 2


def test_a_config_saved_with_a_utf8_bom_loads(tmp_path: Path) -> None:
    # Windows Notepad saves UTF-8 with a BOM; the Chinese column names still have to match.
    path = tmp_path / "c.toml"
    path.write_bytes('qps = 5\nname_col = "客户名称"\n'.encode("utf-8-sig"))
    settings, _ = load_config(path)
    assert settings == {"qps": 5, "name_col": "客户名称"}
