"""The report: one static HTML page (no server, no network, nothing external) for people
who would rather look than read logs.

It shows, from the store alone: the daemon's heartbeat; what needs a person; a section
per kind, by default a subjects × stages grid (state colours, time spent per state,
tries), or the section the kind's chain renders (autoproc.chain.KindView: DEEP's nights,
DESGW's seasons × exposures with a CCD heat map); the recent attempts with links to their
logs; the recent journal with operator overrides marked; problems and bad files; and each
kind's state diagram (inline SVG, mermaid text beside it). The page is Jinja2 templates
(`templates/`, and each chain's) with autoescaping: every piece of text from the store is
escaped.

Subject data read by the grid (all optional): scalar data values as a short summary, after
what the kind's view says of its data (`KindView.summary`, `KindView.lists`).
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from autoproc.chain import KindView, chains, kind_views
from autoproc.config import Config
from autoproc.machines import StateMachine
from autoproc.slurm import describe_ran_on
from autoproc.store import Store, StoreError, Subject

log = logging.getLogger("autoproc.report")

PAGE = "index.html"
DAEMON_ALIVE_SECONDS = 30.0
UNDESCRIBED = KindView("")  # a kind no chain describes: the grid, after every described kind


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
    views = kind_views()
    last = max((v.order for v in views.values()), default=0) + 1
    for kind in sorted(set(counts) | set(machines), key=lambda k: (views[k].order if k in views else last, k)):
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

def data_summary(data: dict[str, Any], view: KindView = UNDESCRIBED, limit: int = 5) -> str:
    """A short line from a subject's data: what its kind's view says first, then scalar values."""
    parts = view.summary(data) if view.summary is not None else []
    parts += [f"{k}: {v}" for k, v in data.items() if isinstance(v, int | float | str) and len(str(v)) <= 40]
    return "; ".join(parts[:limit])


def _lists(data: dict[str, Any], view: KindView) -> list[tuple[str, list[str]]]:
    """The first of the view's list keys the data has, shown on a line of its own."""
    for name in view.lists:
        if isinstance(data.get(name), list) and data[name]:
            return [(name, [str(v) for v in data[name]])]
    return []


def grid_rows(info: dict[str, Any], view: KindView) -> list[dict[str, Any]]:
    """The grid's cells: a stage is current, failed from, passed or pending, with its time and tries."""
    machine, stages, rows = info["machine"], info["stages"], []
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
            cells.append({"cls": cls, "stage": st, "title": title, "text": text})
        rows.append({"subject": s, "cells": cells, "summary": data_summary(s.data, view),
                     "lists": _lists(s.data, view)})
    return rows


def diagram(machine: StateMachine) -> dict[str, Any]:
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
    pos: dict[str, tuple[float, float]] = {s: (20 + layer[s] * col_w, 20 + i * row_h) for col in columns.values() for i, s in enumerate(col)}
    arrows = []
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
        arrows.append({"path": path, "x": f"{lx:.0f}", "y": f"{ly:.0f}", "trigger": trigger})
    fills = {"ok": "#c8ecc8", "bad": "#f6c1c1", "run": "#cfe0fb", "wait": "#fbe9b7"}
    boxes = [{"state": s, "x": x, "y": y, "cx": x + box_w / 2, "ty": y + 16, "fill": fills[state_class(machine, s)],
              "action": machine.state(s).action} for s, (x, y) in pos.items()]
    return {"kind": spec.kind, "width": 40 + max(columns) * col_w + box_w,
            "height": 40 + max(len(c) for c in columns.values()) * row_h, "box_w": box_w, "box_h": box_h,
            "edges": arrows, "boxes": boxes}


@functools.cache
def environment() -> jinja2.Environment:
    """The templates: the core's (`templates/`), and each chain's as `<chain>/<file>`. Every
    value is escaped (autoescape), and None shows as nothing."""
    chain_loaders: dict[str, jinja2.BaseLoader] = {
        c.name: jinja2.FileSystemLoader(c.templates) for c in chains() if c.templates is not None}
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.PackageLoader("autoproc", "templates"), jinja2.PrefixLoader(chain_loaders)]),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
        finalize=lambda value: "" if value is None else value)
    env.globals.update(state_class=state_class, when=when, duration=duration, diagram=diagram,
                       basename=lambda path: Path(path).name)
    return env


def render(info: dict, out_dir: Path) -> str:
    views = kind_views()
    kinds = {}
    for kind, k in info["kinds"].items():
        view = views.get(kind, UNDESCRIBED)
        kinds[kind] = {**k, "title": view.title or f"{kind} × stages", "body": view.template or "grid.html.j2",
                       "context": view.context(k, info["kinds"]) if view.context is not None and k["rows"] else {},
                       "grid": grid_rows(k, view) if view.template is None else []}
    attention = [(kind, k, r) for kind, k in kinds.items() for r in k["rows"]
                 if r["subject"].held or state_class(k["machine"], r["subject"].state) == "bad"]
    attempts = [{**a, "took": (a["ended"] or info["now"]) - a["started"] if a["started"] else None,
                 "ran_on": describe_ran_on(a),
                 "reason": str(a["result"].get("reason") or a["result"].get("trigger") or "")[:300]}
                for a in info["attempts"]]
    template = environment().get_template("report.html.j2")
    return template.render({**info, "kinds": kinds, "attention": attention, "attempts": attempts,
                            "waiting_files": info.get("waiting_files", []),
                            "href": lambda path: quote(os.path.relpath(path, out_dir))})


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
