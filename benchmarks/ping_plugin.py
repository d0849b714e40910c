"""Benchmark plugin: each `*.ping` file is its own subject; its action notes when it began."""

from __future__ import annotations

import time
from pathlib import Path

from autoproc.actions import FileInfo, Outcome, action, file_kind


@file_kind("ping")
def ping_file(path: Path, config) -> FileInfo:
    return FileInfo(subject=("ping", path.stem))


@action()
def record_start(ctx) -> Outcome:
    return Outcome("recorded", evidence={"action_started": time.time()})
