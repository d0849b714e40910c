"""The report: one static HTML page (no server, no network, nothing external) for people
who would rather look than read logs.

It shows, from the store alone: the daemon's heartbeat; what needs a person; a subjects
× stages grid per kind (nights, template coadds, ... : state colours, time spent per
state, tries); DESGW seasons × exposures with a CCD completeness heat map; the recent
attempts with links to their logs; the recent journal with operator overrides marked;
problems and bad files; and each kind's state diagram (inline SVG, mermaid text
beside it). Every piece of text from the store goes through `html.escape`.

Subject data read (all optional; the page degrades to generic tables without them):
exposure `season`, `expnum`, `band`, `nite`, `ccd_table` (chip -> label: `done`,
`RUNnn`, `incomplete`, `never_started`, `no_overlaps`, `missing`), `ccds` (`complete`,
`chips`, `failed`), `forcefiles` (`count`, `expected`); the last attempt's
`result.evidence.table` while the CCD check still polls; season `listed`,
`postprocessed`, `postproc_runs`; night `raws` (counts by outcome), `bad_raws`,
`missing_calibs` (`bias`, `flat` bands); template `members` (or `nights`); any kind:
scalar data values as a short summary.
"""

from __future__ import annotations

import datetime
import html
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from autoproc.config import Config
from autoproc.machines import StateMachine
from autoproc.slurm import describe_ran_on
from autoproc.store import Store, StoreError, Subject

log = logging.getLogger("autoproc.report")

PAGE = "index.html"
DAEMON_ALIVE_SECONDS = 30.0
# DEEP first, in the order work flows (nights feed templates), then DESGW, then the rest.
KIND_ORDER = {k: i for i, k in enumerate(("night", "template", "coadd", "season", "exposure"))}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page_path(config: Config, out: Path | None = None) -> Path:
    """Where the page is written: `out`, config `report.directory`, or <root>/report."""
    return Path(out or config.report.directory or config.root / "report") / PAGE


def when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 1:
        return "<1s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def state_class(machine: StateMachine | None, state: str) -> str:
    """The colour of a state: ok (terminal), bad (needs a person), run (an action runs),
    wait (waits for something)."""
    if machine is None or state not in machine.spec.states:
        return "wait"
    st = machine.state(state)
    if st.attention:
        return "bad"
    if st.terminal:
        return "ok"
    return "run" if st.action else "wait"


# -- gathering ---------------------------------------------------------------------------

def _stages(machine: StateMachine | None, journals: Iterable[list[dict]]) -> list[str]:
    """Grid columns: the machine's working states in declaration order, or (without a
    machine) the states the journal shows, in order of first appearance."""
    if machine is not None:
        return [n for n, st in machine.spec.states.items() if not st.terminal and not st.attention]
    seen: dict[str, None] = {}
    for rows in journals:
        for r in rows:
            seen.setdefault(r["to_state"], None)
    return list(seen)


def _time_in_states(rows: list[dict], now: float) -> dict[str, float]:
    spent: dict[str, float] = {}
    for row, nxt in zip(rows, [*rows[1:], None], strict=True):
        if nxt is not None and nxt["to_state"] == row["to_state"]:
            continue  # a hold or note: the state went on
        end = nxt["time"] if nxt is not None else now
        spent[row["to_state"]] = spent.get(row["to_state"], 0.0) + max(0.0, end - row["time"])
    return spent


def subject_rows(store: Store, subjects: list[Subject], machine: StateMachine | None, now: float) -> list[dict]:
    """Per subject: time per state, tries per stage, the last attempt, the state a failure came from."""
    rows = []
    for s in subjects:
        journal = store.journal(s.id)
        attempts = [a.to_json() for a in store.attempts(s.id)]
        tries: dict[str, int] = {}
        last_status: dict[str, str] = {}
        for a in attempts:
            tries[a["stage"]] = tries.get(a["stage"], 0) + 1
            last_status[a["stage"]] = a["status"]
        failed_from = None
        if state_class(machine, s.state) == "bad" and journal:
            moves = [r for r in journal if r["from_state"] != r["to_state"]]
            failed_from = moves[-1]["from_state"] if moves else None
        rows.append({"subject": s, "spent": _time_in_states(journal, now), "tries": tries,
                     "last_status": last_status, "failed_from": failed_from,
                     "last_attempt": attempts[-1] if attempts else None,
                     "reason": journal[-1]["reason"] if journal else "", "journal": journal})
    return rows


def collect(store: Store, machines: dict[str, StateMachine], config: Config, *, now: float | None = None) -> dict:
    """Everything the page shows, read from the store."""
    now = time.time() if now is None else now
    limits = config.report
    kinds: dict[str, dict] = {}
    counts: dict[str, dict[str, int]] = {}
    for kind, state, n in store.counts():
        counts.setdefault(kind, {})[state] = n
    for kind in sorted(set(counts) | set(machines), key=lambda k: (KIND_ORDER.get(k, len(KIND_ORDER)), k)):
        subjects = store.subjects(kind)
        # Newest keys first (nights, seasons, exposures all sort by time that way).
        subjects.sort(key=lambda s: s.key, reverse=True)
        shown = subjects[:limits.subjects_per_kind]
        machine = machines.get(kind)
        rows = subject_rows(store, shown, machine, now)
        kinds[kind] = {"rows": rows, "stages": _stages(machine, [r["journal"] for r in rows]),
                       "total": len(subjects), "machine": machine, "counts": counts.get(kind, {})}
    daemon = store.daemon_info()
    if daemon:
        daemon = {**daemon, "alive": now - daemon["heartbeat"] < DAEMON_ALIVE_SECONDS
                  and daemon["status"] != "stopped"}
    return {
        "now": now, "kinds": kinds, "daemon": daemon, "root": str(config.root),
        "held": store.subjects(held=True, limit=200),
        "attempts": [a.to_json() for a in store.attempts(limit=limits.attempt_rows, newest_first=True)],
        "journal": store.journal(limit=limits.journal_rows, newest_first=True),
        "problems": store.problems(limit=50),
        "bad_files": store.files(status="bad", limit=200),
        "waiting_files": store.files(status="waiting", limit=200),
        "subject_names": {s.id: s.ref for k in kinds.values() for s in (r["subject"] for r in k["rows"])},
    }


# -- rendering ---------------------------------------------------------------------------

CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .3em}h2{font-size:16px;margin:1.6em 0 .4em;border-bottom:1px solid #ccc}
h3{font-size:14px;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.3em 0;background:#fff}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eee;font-weight:600}td.num{text-align:right}
.ok{background:#c8ecc8}.bad{background:#f6c1c1}.run{background:#cfe0fb}.wait{background:#fbe9b7}
.pending{background:#f3f3f3;color:#aaa}.passed{background:#e3f5e3}.failed{background:#f6c1c1}
.current{font-weight:600;outline:2px solid #555;outline-offset:-2px}.held{background:repeating-linear-gradient(
45deg,#fbe9b7,#fbe9b7 5px,#f6c1c1 5px,#f6c1c1 10px)}
.badge{display:inline-block;padding:0 5px;border-radius:3px;margin:1px}
.small{font-size:11px;color:#666}
tr.operator td{background:#fff3c4}tr.operator td.actor{font-weight:700;color:#8a4b00}
table.heatmap td.ccd{width:14px;height:14px;padding:0;font-size:8px;text-align:center;color:#fff}
.c-done{background:#2e9d48}.c-fail{background:#d23b3b}.c-no_overlaps{background:#8c7bb5}
.c-incomplete{background:#e8a33b}.c-never_started{background:#f0d27a;color:#555!important}
.c-missing{background:#ddd}.c-other{background:#999}
.c-done,.c-fail,.c-no_overlaps,.c-incomplete,.c-other{color:#fff}
.bar{display:inline-block;height:8px;background:#2e9d48;vertical-align:middle}
.barbg{display:inline-block;width:62px;height:8px;background:#ddd;vertical-align:middle}
pre{background:#f0f0f0;padding:6px;overflow:auto;font-size:11px}
svg text{font:11px system-ui,sans-serif}
nav a{margin-right:1em}
"""


def badge(state: str, machine: StateMachine | None, held: str | None = None) -> str:
    cls = "held" if held else state_class(machine, state)
    title = f' title="held: {esc(held)}"' if held else ""
    return f'<span class="badge {cls}"{title}>{esc(state)}</span>'


def link(path: str | None, out_dir: Path, text: str | None = None) -> str:
    """A relative link to a log or directory (works from file:// and copied along the root)."""
    if not path:
        return ""
    href = quote(os.path.relpath(path, out_dir))
    return f'<a href="{esc(href)}">{esc(text or Path(path).name)}</a>'


def data_summary(data: dict[str, Any], limit: int = 5) -> str:
    """A short line from a subject's data: the DEEP night's raws and missing calibrations
    when present, then scalar values."""
    parts = []
    if isinstance(data.get("raws"), dict) and data["raws"]:
        parts.append("raws: " + ", ".join(f"{v} {k}" for k, v in data["raws"].items()))
    if isinstance(data.get("bad_raws"), dict) and data["bad_raws"]:
        parts.append(f"bad raws: {len(data['bad_raws'])}")
    if isinstance(data.get("missing_detectors"), dict) and data["missing_detectors"]:
        parts.append(f"exposures missing CCDs: {len(data['missing_detectors'])}")
    missing = data.get("missing_calibs")
    if isinstance(missing, dict):
        flat = missing.get("flat") or []
        what = (["bias"] if missing.get("bias") else []) + ([f"flat {' '.join(map(str, flat))}"] if flat else [])
        if what:
            parts.append("missing calibs: " + ", ".join(what))
    parts += [f"{k}: {v}" for k, v in data.items() if isinstance(v, int | float | str) and len(str(v)) <= 40]
    return "; ".join(parts[:limit])


def render_grid(kind: str, info: dict) -> str:
    machine, stages = info["machine"], info["stages"]
    head = "".join(f'<th>{esc(st)}<br><span class="small">{info["counts"].get(st, 0)} now</span></th>'
                   for st in stages)
    lines = [f'<table class="grid" id="grid-{esc(kind)}"><tr><th>{esc(kind)}</th>{head}<th>state</th>'
             f'<th>data</th></tr>']
    for r in info["rows"]:
        s: Subject = r["subject"]
        cells = []
        for st in stages:
            tries = r["tries"].get(st, 0)
            if st == s.state:
                cls = "held current" if s.held else f"{state_class(machine, st)} current"
            elif st == r["failed_from"]:
                cls = "failed"
            elif st in r["spent"]:
                cls = "passed"
            else:
                cls = "pending"
            text = duration(r["spent"].get(st)) if st in r["spent"] else ""
            if tries > 1:
                text += f" ×{tries}"
            title = f"{st}: {text or 'not reached'}"
            if st in r["last_status"]:
                title += f"; last attempt {r['last_status'][st]}"
            cells.append(f'<td class="{cls}" data-stage="{esc(st)}" title="{esc(title)}">{esc(text)}</td>')
        lines.append(f'<tr data-key="{esc(s.key)}"><th>{esc(s.key)}</th>{"".join(cells)}'
                     f'<td>{badge(s.state, machine, s.held)}</td>'
                     f'<td class="small">{esc(data_summary(s.data))}{_members(s.data)}</td></tr>')
    lines.append("</table>")
    if info["total"] > len(info["rows"]):
        lines.append(f'<p class="small">and {info["total"] - len(info["rows"])} more (config report.subjects_per_kind)</p>')
    return "\n".join(lines)


def _members(data: dict[str, Any]) -> str:
    for name in ("nights", "members"):
        if isinstance(data.get(name), list) and data[name]:
            return f"<br>{esc(name)}: {esc(', '.join(map(str, data[name])))}"
    return ""


CHIP_FAIL = re.compile(r"^RUN(\d+)$")


def chip_class(label: str) -> str:
    if CHIP_FAIL.match(label):
        return "c-fail"
    if label in ("done", "no_overlaps", "incomplete", "never_started", "missing"):
        return f"c-{label}"
    return "c-other"


def ccd_table(row: dict) -> dict[str, str]:
    """The exposure's chip table: stored once the check passed, else the last poll's."""
    s: Subject = row["subject"]
    table = s.data.get("ccd_table")
    if not table and row["last_attempt"]:
        table = row["last_attempt"]["result"].get("evidence", {}).get("table")
    return {str(k): str(v) for k, v in (table or {}).items()} if isinstance(table, dict) else {}


def render_exposures(info: dict, seasons: dict[str, Subject], season_machine: StateMachine | None) -> str:
    machine = info["machine"]
    by_season: dict[str, list[dict]] = {}
    for r in info["rows"]:
        s = r["subject"]
        season = str(s.data.get("season") or s.key.split(".", 1)[0])
        by_season.setdefault(season, []).append(r)
    out = []
    for season in sorted(by_season, key=lambda k: (len(k), k), reverse=True):
        rows = by_season[season]
        tables = [ccd_table(r) for r in rows]
        chips = sorted({c for t in tables for c in t}, key=lambda c: (len(c), c))
        known = seasons.get(season)
        state = f" {badge(known.state, season_machine, known.held)}" if known is not None else ""
        out.append(f"<h3>season {esc(season)}{state}</h3>")
        out.append(f'<table class="heatmap" id="heatmap-{esc(season)}"><tr><th>exposure</th><th>band</th>'
                   f'<th>nite</th><th>state</th><th>CCDs complete</th><th>forcefiles</th>'
                   + "".join(f'<th class="small">{esc(c)}</th>' for c in chips) + "</tr>")
        for r, table in zip(rows, tables, strict=True):
            s: Subject = r["subject"]
            ccds = s.data.get("ccds") if isinstance(s.data.get("ccds"), dict) else {}
            complete = ccds.get("complete", sum(1 for v in table.values() if v == "done"))
            total = ccds.get("chips", len(table))
            ff = s.data.get("forcefiles") if isinstance(s.data.get("forcefiles"), dict) else {}
            ff_text = f"{ff.get('count', '')} / {ff.get('expected', '')}" if ff else ""
            width = int(62 * complete / total) if total else 0
            bar = (f'<span class="barbg"><span class="bar" style="width:{width}px"></span></span> '
                   f'{esc(complete)}/{esc(total)}' if total else "")
            cells = []
            for c in chips:
                label = table.get(c, "")
                m = CHIP_FAIL.match(label)
                cls = chip_class(label) if label else "c-missing"
                cells.append(f'<td class="ccd {cls}" data-chip="{esc(c)}" data-label="{esc(label)}" '
                             f'title="CCD {esc(c)}: {esc(label or "unknown")}">{esc(m.group(1)) if m else ""}</td>')
            expnum = s.data.get("expnum") or s.key.split(".", 1)[-1]
            out.append(f'<tr data-key="{esc(s.key)}"><th>{esc(expnum)}</th><td>{esc(s.data.get("band", ""))}</td>'
                       f'<td>{esc(s.data.get("nite", ""))}</td><td>{badge(s.state, machine, s.held)}</td>'
                       f'<td class="completeness">{bar}</td><td>{esc(ff_text)}</td>{"".join(cells)}</tr>')
        out.append("</table>")
    out.append('<p class="small">CCD: <span class="badge c-done">done</span><span class="badge c-fail">'
               'RUNnn failed at step nn</span><span class="badge c-incomplete">incomplete</span>'
               '<span class="badge c-never_started">never started</span><span class="badge c-no_overlaps">'
               'no overlaps</span><span class="badge c-missing">missing / unknown</span></p>')
    return "\n".join(out)


def render_seasons(info: dict) -> str:
    machine = info["machine"]
    lines = ['<table id="seasons"><tr><th>season</th><th>state</th><th>listed</th><th>post-processed</th>'
             '<th>post-processing runs</th><th>last reason</th></tr>']
    for r in info["rows"]:
        s: Subject = r["subject"]
        runs = s.data.get("postproc_runs") if isinstance(s.data.get("postproc_runs"), list) else []
        listed = s.data.get("listed") if isinstance(s.data.get("listed"), list) else []
        done = s.data.get("postprocessed") if isinstance(s.data.get("postprocessed"), list) else []
        lines.append(f'<tr data-key="{esc(s.key)}"><th>{esc(s.key)}</th><td>{badge(s.state, machine, s.held)}</td>'
                     f'<td class="num">{len(listed)}</td><td class="num">{len(done)}</td>'
                     f'<td class="num">{len(runs)}</td><td>{esc(r["reason"])}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines)


def diagram_svg(machine: StateMachine) -> str:
    """A simple layered drawing: states by distance from the initial state, arrows with triggers."""
    spec = machine.spec
    states = list(spec.states)
    edges = []
    for t in spec.transitions:
        for src in (states if "*" in t.sources else t.sources):
            if src != t.dest:
                edges.append((src, t.dest, t.trigger))
    layer = {spec.initial: 0}
    frontier = [spec.initial]
    while frontier:
        nxt = []
        for s in frontier:
            for a, b, _ in edges:
                if a == s and b not in layer:
                    layer[b] = layer[s] + 1
                    nxt.append(b)
        frontier = nxt
    deepest = max(layer.values(), default=0)
    for s in states:
        layer.setdefault(s, deepest + 1)
    columns: dict[int, list[str]] = {}
    for s in states:
        columns.setdefault(layer[s], []).append(s)
    col_w, row_h, box_w, box_h = 210, 46, 130, 24  # the 80 px between columns hold the trigger names
    pos = {s: (20 + layer[s] * col_w, 20 + i * row_h) for col in columns.values() for i, s in enumerate(col)}
    width = 40 + max(columns) * col_w + box_w
    height = 40 + max(len(c) for c in columns.values()) * row_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="diagram" width="{width}" height="{height}" '
             f'role="img" aria-label="{esc(spec.kind)} state machine">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#777"/></marker></defs>']
    for a, b, trigger in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        if layer[b] > layer[a]:
            sx, sy, ex, ey = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
            path = f"M {sx} {sy} L {ex} {ey}"
            lx, ly = (sx + ex) / 2, (sy + ey) / 2 - 3
        else:  # back or sideways: a curve below the boxes
            sx, sy, ex, ey = x1 + box_w / 2, y1 + box_h, x2 + box_w / 2, y2 + box_h
            dip = max(sy, ey) + 18
            path = f"M {sx} {sy} Q {(sx + ex) / 2} {dip} {ex} {ey}"
            lx, ly = (sx + ex) / 2, dip - 2
        parts.append(f'<path d="{path}" fill="none" stroke="#999" marker-end="url(#arrow)"/>'
                     f'<text x="{lx:.0f}" y="{ly:.0f}" text-anchor="middle" fill="#555">{esc(trigger)}</text>')
    fills = {"ok": "#c8ecc8", "bad": "#f6c1c1", "run": "#cfe0fb", "wait": "#fbe9b7"}
    for s, (x, y) in pos.items():
        fill = fills[state_class(machine, s)]
        action = machine.state(s).action
        parts.append(f'<g class="state" data-state="{esc(s)}"><rect x="{x}" y="{y}" width="{box_w}" '
                     f'height="{box_h}" rx="5" fill="{fill}" stroke="#666"/><text x="{x + box_w / 2}" '
                     f'y="{y + 16}" text-anchor="middle">{esc(s)}</text>'
                     f'<title>{esc(s)}{esc(" / " + action) if action else ""}</title></g>')
    parts.append("</svg>")
    return "".join(parts)


def render(info: dict, out_dir: Path) -> str:
    kinds = info["kinds"]
    d = info["daemon"]
    if d:
        daemon = (f'daemon <b>{"running" if d["alive"] else "not running"}</b> (pid {esc(d["pid"])} on '
                  f'{esc(d["host"])}, heartbeat {esc(when(d["heartbeat"]))}): {esc(d["status"])}')
    else:
        daemon = "no daemon has run on this store yet"
    body = [f"<h1>autoproc</h1><p>{daemon}<br><span class='small'>generated {esc(when(info['now']))} from "
            f"{esc(info['root'])}</span></p>"]
    body.append("<nav>" + "".join(f'<a href="#kind-{esc(k)}">{esc(k)}</a>' for k in kinds)
                + '<a href="#attention">needs a person</a><a href="#attempts">attempts</a>'
                  '<a href="#journal">journal</a><a href="#problems">problems</a><a href="#diagrams">diagrams</a></nav>')
    summary = ['<table id="counts"><tr><th>kind</th><th>subjects by state</th></tr>']
    for kind, k in kinds.items():
        chips = " ".join(f'{badge(st, k["machine"])} {n}' for st, n in sorted(k["counts"].items()))
        summary.append(f"<tr><th>{esc(kind)}</th><td>{chips or '—'}</td></tr>")
    body.append("\n".join(summary) + "</table>")
    body.append(render_attention(info))
    season_kind = kinds.get("season", {"rows": [], "machine": None})
    seasons = {r["subject"].key: r["subject"] for r in season_kind["rows"]}
    titles = {"night": "Nights × stages", "exposure": "Seasons × exposures (CCD completeness)",
              "season": "Seasons", "template": "Template coadds", "coadd": "Template coadds"}
    for kind, k in kinds.items():
        body.append(f'<h2 id="kind-{esc(kind)}">{esc(titles.get(kind, kind + " × stages"))}</h2>')
        if not k["rows"]:
            body.append('<p class="small">none yet</p>')
        elif kind == "exposure":
            body.append(render_exposures(k, seasons, season_kind["machine"]))
        elif kind == "season":
            body.append(render_seasons(k))
        else:
            body.append(render_grid(kind, k))
    body.append(render_attempts(info, out_dir))
    body.append(render_journal(info))
    body.append(render_problems(info))
    body.append('<h2 id="diagrams">State diagrams</h2>')
    for kind, k in kinds.items():
        if k["machine"] is not None:
            body.append(f"<h3>{esc(kind)}</h3>{diagram_svg(k['machine'])}"
                        f"<details><summary>mermaid</summary><pre>{esc(k['machine'].mermaid())}</pre></details>")
    legend = ('<p class="small">states: <span class="badge ok">finished</span><span class="badge run">'
              'working</span><span class="badge wait">waiting</span><span class="badge bad">needs a person'
              '</span><span class="badge held">held</span></p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width\">"
            "<title>autoproc report</title>"
            f"<style>{CSS}</style></head><body>{legend}{''.join(body)}</body></html>\n")


def render_attention(info: dict) -> str:
    rows = []
    for kind, k in info["kinds"].items():
        for r in k["rows"]:
            s = r["subject"]
            if s.held or state_class(k["machine"], s.state) == "bad":
                rows.append(f'<tr><td>{esc(kind)}</td><td>{esc(s.key)}</td><td>{badge(s.state, k["machine"], s.held)}'
                            f'</td><td>{esc(when(s.entered))}</td><td>{esc(s.held or r["reason"])}</td></tr>')
    if not rows:
        return '<h2 id="attention">Needs a person</h2><p class="small">nothing</p>'
    return ('<h2 id="attention">Needs a person</h2><table id="attention-table"><tr><th>kind</th><th>key</th>'
            '<th>state</th><th>since</th><th>why</th></tr>' + "".join(rows) + "</table>")


def render_attempts(info: dict, out_dir: Path) -> str:
    names = info["subject_names"]
    rows = []
    for a in info["attempts"]:
        took = (a["ended"] or info["now"]) - a["started"] if a["started"] else None
        reason = a["result"].get("reason") or a["result"].get("trigger") or ""
        logs = link(a["log"], out_dir) if a["log"] else link(a["cwd"], out_dir, "directory")
        rows.append(f'<tr class="attempt {esc(a["status"])}"><td class="num">{a["id"]}</td>'
                    f'<td>{esc(names.get(a["subject_id"], a["subject_id"]))}</td><td>{esc(a["stage"])}</td>'
                    f'<td>{esc(a["step"])}</td><td class="num">{esc(a["try"])}</td><td>{esc(a["status"])}</td>'
                    f'<td>{esc(when(a["started"]))}</td><td>{esc(duration(took))}</td><td>{esc(describe_ran_on(a))}</td>'
                    f'<td class="num">{esc("" if a["exit_status"] is None else a["exit_status"])}</td>'
                    f'<td>{logs}</td><td>{esc(str(reason)[:300])}</td></tr>')
    return ('<h2 id="attempts">Recent attempts</h2><table id="attempts-table"><tr><th>#</th><th>subject</th>'
            '<th>stage</th><th>step</th><th>try</th><th>status</th><th>started</th><th>took</th><th>ran on</th><th>exit</th>'
            '<th>log</th><th>result</th></tr>' + "".join(rows) + "</table>")


def render_journal(info: dict) -> str:
    rows = []
    for j in info["journal"]:
        operator = j["actor"] != "daemon"
        rows.append(f'<tr class="{"operator" if operator else "daemon"}"><td class="num">{j["id"]}</td>'
                    f'<td>{esc(when(j["time"]))}</td><td>{esc(j["kind"])}/{esc(j["key"])}</td>'
                    f'<td>{esc(j["from_state"] or "")}</td><td>{esc(j["to_state"])}</td><td>{esc(j["trigger"])}</td>'
                    f'<td class="actor">{esc(j["actor"])}</td><td>{esc(j["reason"])}</td></tr>')
    return ('<h2 id="journal">Recent journal</h2><p class="small">operator overrides are '
            '<span style="background:#fff3c4">highlighted</span></p><table id="journal-table"><tr><th>#</th>'
            '<th>when</th><th>subject</th><th>from</th><th>to</th><th>trigger</th><th>actor</th><th>reason</th></tr>'
            + "".join(rows) + "</table>")


def render_problems(info: dict) -> str:
    problems = "".join(f"<tr><td>{esc(when(p['time']))}</td><td>{esc(p['source'])}</td><td>{esc(p['message'])}"
                       "</td></tr>" for p in info["problems"])
    def files(rows: list[dict]) -> str:
        return "".join(f"<tr><td>{esc(f['path'])}</td><td>{esc(f['reason'])}</td><td>{esc(when(f['updated']))}"
                       "</td></tr>" for f in rows)

    return ('<h2 id="problems">Problems</h2><table id="problems-table"><tr><th>when</th><th>source</th>'
            f'<th>message</th></tr>{problems}</table><h3>Bad files</h3><table id="bad-files"><tr><th>path</th>'
            f'<th>reason</th><th>seen</th></tr>{files(info["bad_files"])}</table>'
            '<h3>Waiting files (incomplete)</h3><table id="waiting-files"><tr><th>path</th><th>why</th>'
            f'<th>since</th></tr>{files(info.get("waiting_files", []))}</table>')


def write_report(store: Store, machines: dict[str, StateMachine], config: Config, out: Path | None = None) -> Path:
    """Write the page (atomically: readers never see half of it); returns its path."""
    path = page_path(config, out)
    return write_page(path, render(collect(store, machines, config), path.parent))


def write_page(path: Path, text: str) -> Path:
    """Replace the page at `path` with `text` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".index.", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ReportWriter:
    """The daemon's side (an `engine.on_loop` callable): when the journal moved or the set
    of running attempts changed, the page is written again, at most every
    `report.min_interval_seconds`, on a thread of its own with its own read-only store
    connection, so the engine loop never waits for it."""

    def __init__(self, config: Callable[[], Config], machines: Callable[[], dict[str, StateMachine]]):
        self.config = config
        self.machines = machines
        self.written: tuple | None = None  # what the last page showed
        self.next_due = 0.0
        self.thread: threading.Thread | None = None

    def on_loop(self, engine: Any) -> None:
        config = self.config()
        if not config.report.enabled or time.monotonic() < self.next_due:
            return
        seen = (engine.last_journal, frozenset(engine.running))
        if seen == self.written or (self.thread is not None and self.thread.is_alive()):
            return
        self.written = seen
        self.next_due = time.monotonic() + config.report.min_interval_seconds
        self.thread = threading.Thread(target=self.write, args=(config,), name="report", daemon=True)
        self.thread.start()

    def write(self, config: Config) -> Path | None:
        try:
            store = Store(config.db, readonly=True)
            try:
                return write_report(store, self.machines(), config)
            finally:
                store.close()
        except (OSError, StoreError) as err:
            log.warning("report not written: %s", err)
            return None
