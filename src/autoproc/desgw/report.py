"""The DESGW sections of the report page (autoproc.report): seasons, and each season's
exposures with a CCD completeness heat map (templates/exposures.html.j2, seasons.html.j2).

Subject data read (all optional): exposure `season`, `expnum`, `band`, `nite`, `ccd_table`
(chip -> label: `done`, `RUNnn`, `incomplete`, `never_started`, `no_overlaps`, `missing`),
`ccds` (`complete`, `chips`, `failed`), `forcefiles` (`count`, `expected`); the last
attempt's `result.evidence.table` while the CCD check still polls; season `listed`,
`postprocessed`, `postproc_runs`.
"""

from __future__ import annotations

import re
from typing import Any

from autoproc.store import Subject

CHIP_FAIL = re.compile(r"^RUN(\d+)$")


def chip_class(label: str) -> str:
    if CHIP_FAIL.match(label):
        return "c-fail"
    if label in ("done", "no_overlaps", "incomplete", "never_started", "missing"):
        return f"c-{label}"
    return "c-other"


def ccd_table(row: dict[str, Any]) -> dict[str, str]:
    """The exposure's chip table: stored once the check passed, else the last poll's."""
    s: Subject = row["subject"]
    table = s.data.get("ccd_table")
    if not table and row["last_attempt"]:
        table = row["last_attempt"]["result"].get("evidence", {}).get("table")
    return {str(k): str(v) for k, v in (table or {}).items()} if isinstance(table, dict) else {}


def _exposure_row(r: dict[str, Any], table: dict[str, str], chips: list[str]) -> dict[str, Any]:
    s: Subject = r["subject"]
    ccds: dict[str, Any] = s.data["ccds"] if isinstance(s.data.get("ccds"), dict) else {}
    complete = ccds.get("complete", sum(1 for v in table.values() if v == "done"))
    total = ccds.get("chips", len(table))
    ff: dict[str, Any] = s.data["forcefiles"] if isinstance(s.data.get("forcefiles"), dict) else {}
    cells = []
    for c in chips:
        label = table.get(c, "")
        m = CHIP_FAIL.match(label)
        cells.append({"chip": c, "label": label, "cls": chip_class(label) if label else "c-missing",
                      "text": m.group(1) if m else ""})
    return {"subject": s, "expnum": s.data.get("expnum") or s.key.split(".", 1)[-1],
            "band": s.data.get("band", ""), "nite": s.data.get("nite", ""),
            "bar": {"width": int(62 * complete / total), "complete": complete, "total": total} if total else None,
            "forcefiles": f"{ff.get('count', '')} / {ff.get('expected', '')}" if ff else "", "cells": cells}


def exposures_context(info: dict[str, Any], kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The exposures grouped by season (newest first), each with its chips' columns."""
    season_kind = kinds.get("season", {"rows": [], "machine": None})
    seasons = {r["subject"].key: r["subject"] for r in season_kind["rows"]}
    by_season: dict[str, list[dict[str, Any]]] = {}
    for r in info["rows"]:
        s = r["subject"]
        by_season.setdefault(str(s.data.get("season") or s.key.split(".", 1)[0]), []).append(r)
    groups = []
    for season in sorted(by_season, key=lambda k: (len(k), k), reverse=True):
        rows = by_season[season]
        tables = [ccd_table(r) for r in rows]
        chips = sorted({c for t in tables for c in t}, key=lambda c: (len(c), c))
        groups.append({"season": season, "known": seasons.get(season), "chips": chips,
                       "rows": [_exposure_row(r, t, chips) for r, t in zip(rows, tables, strict=True)]})
    return {"season_groups": groups, "season_machine": season_kind["machine"]}


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    return value if isinstance(value, list) else []


def season_counts(data: dict[str, Any]) -> dict[str, int]:
    """How many exposures a season lists and has post-processed, and its post-processing runs."""
    return {"listed": len(_list(data, "listed")), "postprocessed": len(_list(data, "postprocessed")),
            "runs": len(_list(data, "postproc_runs"))}


def seasons_context(info: dict[str, Any], kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per season: its counts and the reason of its last change."""
    return {"season_rows": [{"subject": r["subject"], "reason": r["reason"], **season_counts(r["subject"].data)}
                            for r in info["rows"]]}
