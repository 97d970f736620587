"""Helpers for tests that run several `enrich` processes against one team database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Member:
    """One `enrich` run as a separate process, with a home of its own (as on its own host)."""

    home: Path
    argv: list[str]
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    ended: float = 0.0
    stderr: str = ""
    returncode: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Member:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HOME": str(self.home),
            "XDG_STATE_HOME": str(self.home / "state"),
            **self.extra_env,
        }
        env.pop("JUHE_API_KEY", None)
        self.home.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batch_enricher", *self.argv],
            env=env,
            cwd=self.home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def wait(self, timeout: float = 120) -> int:
        assert self.proc is not None
        _, self.stderr = self.proc.communicate(timeout=timeout)
        self.ended = time.monotonic()
        self.returncode = self.proc.returncode
        return self.returncode

    def summary(self) -> dict[str, Any]:
        path = self.argv[self.argv.index("--summary-json") + 1]
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return data


def enrich_argv(
    src: Path,
    out: Path,
    url: str,
    secret: Path,
    endpoint: str,
    *extra: str,
    qps: float = 30,
) -> list[str]:
    """An `enrich` command line for a team member."""
    return [
        "enrich",
        str(src),
        "-o",
        str(out),
        "--state",
        url,
        "--secret-file",
        str(secret),
        "--key",
        "team-key",
        "--endpoint",
        endpoint,
        "--qps",
        str(qps),
        "--retry-initial",
        "0.05",
        "--retry-max",
        "0.5",
        "--summary-json",
        str(out.with_suffix(".summary.json")),
        "-q",
        *extra,
    ]
