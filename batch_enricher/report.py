"""The run summary for people: the terminal text, the XLSX Summary sheet, the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from batch_enricher import bands as bands_mod
from batch_enricher.models import Status
from batch_enricher.summary import FileSummary, RunSummary
from batch_enricher.writer import SummarySheet

_EXIT_MEANING: Final = {
    0: "every row is final",
    3: "some rows are failed or skipped: rerun the same command to continue",
    4: "aborted by an account-level API error",
}

# Labels for the Summary sheet, by --headers language.
_LABELS: Final[dict[str, dict[str, str]]] = {
    "en": {
        "title": "Summary",
        "input": "input",
        "rows": "rows",
        **{s.value: s.value for s in Status},
        "identities": "distinct people (run)",
        "billed": "billed (run)",
        "reused": "reused from journal (run)",
        "duplicates": "duplicate rows (run)",
        "api_calls": "API calls (run)",
        "elapsed_s": "elapsed seconds (run)",
        "range": "range: rows per band",
        "history": "history: rows per band",
        "stability": "stability: rows per band",
    },
    "zh": {
        "title": "汇总",
        "input": "输入文件",
        "rows": "行数",
        "ok": "成功",
        "invalid": "本地校验失败",
        "rejected": "接口拒绝",
        "failed": "失败",
        "skipped": "未发送",
        "identities": "不同人数（本次）",
        "billed": "计费次数（本次）",
        "reused": "复用历史结果（本次）",
        "duplicates": "重复行（本次）",
        "api_calls": "接口请求数（本次）",
        "elapsed_s": "耗时秒（本次）",
        "range": "经济能力区间分布",
        "history": "历史属性区间分布",
        "stability": "稳定性区间分布",
    },
}


def format_summary(summary: RunSummary) -> str:
    """The closing lines printed on stderr."""
    lines: list[str] = []
    if summary.dry_run:
        lines.append(
            f"dry run: {summary.rows} row(s), {summary.identities} distinct valid people, "
            f"{summary.reused} answered from the journal, {summary.to_call} call(s) would be made "
            f"(at most {summary.max_billable} billed); nothing was sent"
        )
    else:
        meaning = _EXIT_MEANING.get(summary.exit_code, "")
        lines.append(
            f"batch-enricher: finished in {summary.elapsed_s:.1f} s, exit {summary.exit_code} "
            f"({meaning})"
        )
    for f in summary.files:
        counts = " · ".join(f"{s.value} {f.statuses[s]}" for s in Status)
        target = f" → {f.output}" if f.output and not summary.dry_run else ""
        lines.append(f"  {f.input}: {f.rows} row(s): {counts}{target}")
    if not summary.dry_run:
        rate = summary.api_calls / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
        lines.append(
            f"  people {summary.identities} · billed {summary.billed} · reused {summary.reused}"
            f" · duplicates {summary.duplicates} · API calls {summary.api_calls}"
            f" · retries {summary.retries} · {rate:.1f} calls/s"
        )
    if summary.stop_reason:
        lines.append(f"  stopped early: {summary.stop_reason}")
    return "\n".join(lines)


def summary_sheet(file: FileSummary, run: RunSummary, lang: str = "en") -> SummarySheet:
    """The Summary sheet of one output workbook: its own row counts, the run's, and band charts."""
    labels = _LABELS[lang]
    rows: list[tuple[str, object]] = [
        (labels["input"], file.input.name),
        (labels["rows"], file.rows),
        *[(labels[s.value], file.statuses[s]) for s in Status],
        (labels["identities"], run.identities),
        (labels["billed"], run.billed),
        (labels["reused"], run.reused),
        (labels["duplicates"], run.duplicates),
        (labels["api_calls"], run.api_calls),
        (labels["elapsed_s"], round(run.elapsed_s, 1)),
    ]
    charts: list[tuple[str, list[tuple[str, int]]]] = []
    for model in bands_mod.MODELS:
        counts = file.bands.get(model)
        if not counts:
            continue
        order = list(dict.fromkeys(label for _, _, label in bands_mod.DEFAULT_TABLES[model]))
        order += sorted(b for b in counts if b not in order)
        charts.append((labels[model], [(b, counts[b]) for b in order if counts[b]]))
    return SummarySheet(title=labels["title"], rows=rows, charts=charts)


def write_json(summary: RunSummary, path: Path) -> None:
    """Write the `--summary-json` document (counts only, no personal data)."""
    path.write_text(
        json.dumps(summary.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
