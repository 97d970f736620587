"""`validate`: its report must never replace the file being checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_enricher.checkfile import validate_file
from batch_enricher.errors import OutputError

CSV = "姓名,身份证号,手机号\n张三,11010119900307803X,13812345678\n李四,123,456\n"


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_report_over_the_input_is_refused(tmp_path: Path, spelling: str) -> None:
    """`validate in.csv -o in.csv` replaced the customer's file with the report."""
    source = tmp_path / "in.csv"
    source.write_text(CSV, encoding="utf-8")
    report = {
        "same": source,
        "dotted": tmp_path / "." / "in.csv",
        "symlink": tmp_path / "link.csv",
    }[spelling]
    if spelling == "symlink":
        report.symlink_to(source)
    with pytest.raises(OutputError, match="input"):
        validate_file(source, report=report)
    assert source.read_text(encoding="utf-8") == CSV
