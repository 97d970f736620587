"""The run summary for people: the terminal text, the XLSX Summary sheet, the JSON file."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from batch_enricher import bands as bands_mod
from batch_enricher import codes as codes_mod
from batch_enricher.autorate import RateFound
from batch_enricher.models import Status
from batch_enricher.summary import FileSummary, RunSummary
from batch_enricher.writer import SummarySheet, write_text_atomically

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
        "possibly_billed": "possibly billed: replies lost after sending (run)",
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
        "possibly_billed": "可能计费：发送后未收到回复（本次）",
        "reused": "复用历史结果（本次）",
        "duplicates": "重复行（本次）",
        "api_calls": "接口请求数（本次）",
        "elapsed_s": "耗时秒（本次）",
        "range": "经济能力区间分布",
        "history": "历史属性区间分布",
        "stability": "稳定性区间分布",
    },
}


#: What a reply's kind means for the row (its status) and for the run, for `codes`.
_KIND_EFFECT: Final[dict[codes_mod.Kind, tuple[str, str]]] = {
    codes_mod.Kind.OK: ("ok", "billed; kept in the journal and reused on reruns"),
    codes_mod.Kind.REJECTED: ("rejected", "final for this person: not billed, never retried"),
    codes_mod.Kind.TRANSIENT: ("failed", "retried with backoff; failed if it persists"),
    codes_mod.Kind.RATE_LIMITED: ("failed", "retried; also slows the shared rate down"),
    # The row that met the persisting 10012 is failed; only the rows never sent are skipped.
    codes_mod.Kind.QUOTA: ("failed", "retried; if it persists, sending stops (exit 3)"),
    codes_mod.Kind.ACCOUNT: ("skipped", "aborts the run at once, nothing more sent (exit 4)"),
}
_UNKNOWN_EFFECT: Final = ("failed", "treated as transient: retried, never billed")

#: Each model's name in the reference, and where its table departs from the obvious.
_MODEL_NAMES: Final = {
    "range": "预测模型评分",
    "history": "历史属性模型评分",
    "stability": "稳定性模型评分",
}
_BAND_NOTES: Final = {
    "range": "as published: 20-29 repeats (0,1500], and no score gives (1500,4500]",
    "history": 'as published but for the parenthesis: the reference prints 90-99 as "120，180]"',
    "stability": "as published: no band for 1-19",
}


def format_codes() -> str:
    """The `codes` text: every error code with its status, effect and reason; the band tables."""
    effects = [*_KIND_EFFECT.values(), _UNKNOWN_EFFECT]
    width = max(len(effect) for _, effect in effects)
    lines = [
        "Error codes: the row's status, what batch-enricher does, the API reference's reason",
        "",
        f"  {'code':<7} {'status':<9} {'what batch-enricher does':<{width}}  reason",
    ]
    for code, reason in codes_mod.REASONS.items():
        status, effect = _KIND_EFFECT[codes_mod.kind_of(code)]
        legacy = codes_mod.LEGACY_RESULTCODES.get(code)
        old = f" (resultcode {legacy})" if legacy is not None else ""
        lines.append(f"  {code:<7} {status:<9} {effect:<{width}}  {reason}{old}")
    status, effect = _UNKNOWN_EFFECT
    lines.append(f"  {'other':<7} {status:<9} {effect:<{width}}  (undocumented)")
    lines += [
        "",
        f"  {codes_mod.INVALID_IDCARD}-{codes_mod.INVALID_MOBILE} also mark rows that fail the "
        "local checks (status invalid): those are never sent.",
    ]
    for model in bands_mod.MODELS:
        lines += ["", f"{model} ({_MODEL_NAMES[model]}): score → band"]
        for low, high, label in bands_mod.DEFAULT_TABLES[model]:
            span = str(low) if low == high else f"{low}-{high}"
            lines.append(f"  {span:<6} {label}")
        lines.append(f"  {'other':<6} {bands_mod.UNMAPPED}")
        lines.append(f"  ({_BAND_NOTES[model]})")
    return "\n".join(lines)


def format_summary(summary: RunSummary) -> str:
    """The closing lines printed on stderr: per file, then the run's counts, time and rate."""
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
    dry = summary.dry_run
    for f in summary.files:
        target = f" → {f.output}" if f.output and not dry else ""
        lines.append(f"  {f.input}: {f.rows} row(s): {_status_counts(f.statuses, dry)}{target}")
    if len(summary.files) > 1:
        total = Counter({s: summary.count(s) for s in Status})
        lines.append(
            f"  all {len(summary.files)} files: {summary.rows} row(s): {_status_counts(total, dry)}"
        )
    if not summary.dry_run:
        elapsed = summary.elapsed_s
        rate = summary.api_calls / elapsed if elapsed > 0 else 0.0
        lines.append(
            f"  people {summary.identities} · billed {summary.billed} · reused {summary.reused}"
            f" · duplicates {summary.duplicates} · API calls {summary.api_calls}"
            f" · retries {summary.retries} · elapsed {elapsed:.1f} s · {rate:.1f} calls/s"
        )
    if summary.possibly_billed:
        lines.append(
            f"  possibly billed {summary.possibly_billed}: replies lost after the request was sent"
            " (timeouts, dropped connections, unreadable replies); the server may have billed"
            f" them: at most {summary.possibly_billed} bill(s) more than 'billed' says"
        )
    if summary.rate_found is not None:
        lines.append(_rate_found(summary.rate_found, summary.rate_limited))
    elif summary.rate_limited:
        lines.append(
            f"  the server answered 10011 (too fast) {summary.rate_limited} time(s): the run slowed"
            " down by itself; a lower --qps would match the account's limit"
        )
    if summary.stop_reason:
        lines.append(f"  stopped early: {summary.stop_reason}")
    return "\n".join(lines)


def _rate_found(found: RateFound, rate_limited: int) -> str:
    """The `--qps auto` line: the rate it found, and how far to trust it."""
    if found.rate is None:
        return "  --qps auto: too few requests to learn the account's limit"
    if found.limited:
        return (
            f"  --qps auto: settled at {found.rate:g} requests/s, just under the account's limit"
            f" (10011 answered {rate_limited} time(s) on the way); give --qps {found.rate:g} to"
            " start there next time"
        )
    if found.rate >= found.ceiling:
        return (
            f"  --qps auto: reached the --max-qps ceiling of {found.ceiling:g} requests/s without"
            " a 10011: the account allows at least that"
        )
    return (
        f"  --qps auto: the server took {found.rate:g} requests/s without a 10011, the most this"
        " run sent for a whole second: the account's limit is at least that"
    )


def _status_counts(counts: Mapping[Status, int], dry_run: bool = False) -> str:
    if dry_run:  # nothing was sent: a row not yet answered would be sent, not skipped
        return (
            f"invalid {counts.get(Status.INVALID, 0)} · from the journal: "
            f"ok {counts.get(Status.OK, 0)}, rejected {counts.get(Status.REJECTED, 0)}"
            f" · to send {counts.get(Status.SKIPPED, 0)}"
        )
    return " · ".join(f"{s.value} {counts.get(s, 0)}" for s in Status)


def summary_sheet(
    file: FileSummary,
    run: RunSummary,
    lang: str = "en",
    tables: Mapping[str, bands_mod.Table] = bands_mod.DEFAULT_TABLES,
) -> SummarySheet:
    """The Summary sheet of one output workbook: its own row counts, the run's, and band charts.

    `tables` (the run's band tables, config overrides included) give the bands' order.
    """
    labels = _LABELS[lang]
    rows: list[tuple[str, object]] = [
        (labels["input"], file.input.name),
        (labels["rows"], file.rows),
        *[(labels[s.value], file.statuses[s]) for s in Status],
        (labels["identities"], run.identities),
        (labels["billed"], run.billed),
        # Only when it happened: most runs lose no reply, and their sheet stays as it was.
        *([(labels["possibly_billed"], run.possibly_billed)] if run.possibly_billed else []),
        (labels["reused"], run.reused),
        (labels["duplicates"], run.duplicates),
        (labels["api_calls"], run.api_calls),
        # Written before the run ends: the time so far (the run's last step is writing).
        (labels["elapsed_s"], round(run.elapsed_now(), 3)),
    ]
    charts: list[tuple[str, list[tuple[str, int]]]] = []
    for model in bands_mod.MODELS:
        counts = file.bands.get(model)
        if not counts:
            continue
        # Every documented band in table order, empty ones too, so charts compare across runs;
        # anything else seen (unmapped, overridden labels) follows.
        order = list(dict.fromkeys(label for _, _, label in tables[model]))
        order += sorted(b for b in counts if b not in order and counts[b])
        charts.append((labels[model], [(b, counts[b]) for b in order]))
    return SummarySheet(title=labels["title"], rows=rows, charts=charts)


def write_json(summary: RunSummary, path: Path) -> None:
    """Write the `--summary-json` document (counts only, no personal data)."""
    write_json_doc(summary.to_json(), path)


def write_json_doc(doc: Mapping[str, Any], path: Path) -> None:
    """Write `doc` as JSON atomically, like any output; raises `OutputError` if it cannot."""
    write_text_atomically(path, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
