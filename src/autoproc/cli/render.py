"""rich renderings of the `autoproc.script.inspect` views."""

from __future__ import annotations

import datetime
import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from autoproc.slurm import describe_ran_on


def _when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def _age(t: float | None) -> str:
    return str(datetime.timedelta(seconds=int(time.time() - t))) if t else ""


def status_view(info: dict[str, Any]) -> Group:
    parts: list[Any] = []
    daemon = info.get("daemon")
    if daemon:
        state = "running" if daemon["alive"] else "not running"
        parts.append(Text(f"daemon {state} (pid {daemon['pid']} on {daemon['host']}, last heartbeat "
                          f"{_age(daemon['heartbeat'])} ago): {daemon['status']}"))
    else:
        parts.append(Text("no daemon has run on this store yet"))
    last = (info.get("backups") or [None])[0]
    parts.append(Text(f"last backup {_age(last['time'])} ago ({last['why']}): {last['path']}" if last
                      else "no backup of this store yet (`autoproc store backup`)"))
    counts = Table(title="subjects")
    counts.add_column("kind")
    counts.add_column("state")
    counts.add_column("count", justify="right")
    for kind, states in info["counts"].items():
        for state, n in states.items():
            counts.add_row(kind, state, str(n))
    parts.append(counts)
    for title, rows in (("subjects", info["subjects"]), ("held (needs a person)", info["held"])):
        if rows:
            t = Table(title=title)
            for col in ("kind", "key", "state", "for", "held"):
                t.add_column(col)
            for r in rows:
                t.add_row(r["kind"], r["key"], r["state"], _age(r["since"]), Text(r["held"] or ""))
            parts.append(t)
    if info["bad_files"]:
        t = Table(title="bad files")
        t.add_column("path")
        t.add_column("cause")
        t.add_column("reason")
        for f in info["bad_files"]:
            t.add_row(Text(f["path"]), f.get("cause", "file"), Text(f["reason"]))
        parts.append(t)
    if info.get("waiting_files"):
        t = Table(title="waiting files (incomplete)")
        t.add_column("path")
        t.add_column("for")
        t.add_column("why")
        for f in info["waiting_files"]:
            t.add_row(Text(f["path"]), _age(f["since"]), Text(f["reason"]))
        parts.append(t)
    if info["problems"]:
        t = Table(title="recent problems")
        t.add_column("when")
        t.add_column("source")
        t.add_column("message")
        for p in info["problems"]:
            t.add_row(_when(p["time"]), p["source"], Text(p["message"]))
        parts.append(t)
    return Group(*parts)


def journal_table(rows: list[dict], title: str) -> Table:
    t = Table(title=title)
    for col in ("#", "when", "from", "to", "trigger", "actor", "reason"):
        t.add_column(col)
    for r in rows:
        behalf = (r.get("evidence") or {}).get("on_behalf_of")
        actor = Text(r["actor"] + (f" (for {behalf})" if behalf else ""),
                     style="bold yellow" if r["actor"] != "daemon" else "")
        t.add_row(str(r["id"]), _when(r["time"]), r["from_state"] or "", r["to_state"], r["trigger"], actor,
                  Text(r["reason"]))
    return t


def subject_view(info: dict[str, Any], *, wide: bool = False) -> Group:
    head = Text(f"{info['kind']}/{info['key']}: {info['state']} (since {_when(info['since'])})")
    if info["held"]:
        head.append(f"\nHELD: {info['held']}", style="bold red")
    data = Table(title="data", show_header=False)
    for k, v in info["data"].items():
        data.add_row(k, Text(str(v)[:300]))
    attempts = attempts_table(info["attempts"], wide=wide)
    parts: list[Any] = [head, data, attempts]
    if info["files"]:
        files = Table(title=f"files ({len(info['files'])})")
        files.add_column("path")
        files.add_column("status")
        files.add_column("reason")
        for f in info["files"][:50]:
            files.add_row(Text(f["path"]), f["status"], Text(f["reason"]))
        parts.append(files)
    parts.append(journal_table(info["journal"], "recent journal"))
    return Group(*parts)


def _took(a: dict) -> str:
    if not a.get("started") or not a.get("ended"):
        return ""
    return str(datetime.timedelta(seconds=int(a["ended"] - a["started"])))


def attempts_table(rows: list[dict], *, wide: bool = False) -> Table:
    """An 80-column view (when, how long, what it said) or, `wide`, every column in full."""
    t = Table(title="attempts")
    columns = (("#", "stage", "step", "try", "status", "started", "ended", "ran on", "exit", "log", "result")
               if wide else ("#", "stage", "try", "status", "started", "took", "result"))
    for col in columns:
        t.add_column(col, overflow="fold" if wide else "ellipsis", no_wrap=not wide and col != "result")
    for a in rows:
        reason = a["result"].get("reason") or a["result"].get("trigger") or ""
        if a["result"].get("progress"):  # what an interrupted attempt got done (see max_interruptions)
            reason = f"{reason} [progress: {'; '.join(a['result']['progress'])}]".strip()
        if a["result"].get("slurm_wait"):  # a running attempt whose Slurm job cannot start
            reason = f"{reason} [waiting: {a['result']['slurm_wait']}]".strip()
        exit_status = "" if a["exit_status"] is None else str(a["exit_status"])
        ran_on = describe_ran_on(a)
        if wide:
            t.add_row(str(a["id"]), a["stage"], a["step"], str(a["try"]), a["status"], _when(a["started"]),
                      _when(a["ended"]), Text(ran_on), exit_status, Text(a["log"] or a["cwd"] or ""),
                      Text(str(reason)))
        else:
            if "Slurm job" in ran_on:  # where it ran matters once it is a cluster's node
                reason = f"{reason} [on {ran_on}]".strip()
            stage = a["stage"] + (f"/{a['step']}" if a["step"] else "")
            status = a["status"] + (f" ({exit_status})" if exit_status else "")
            t.add_row(str(a["id"]), stage, str(a["try"]), status, _short_when(a["started"]), _took(a),
                      Text(str(reason)[:120]))
    return t


def _short_when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%m-%d %H:%M:%S") if t else ""


def demo_summary(summary: dict[str, Any]) -> Group:
    t = Table(title=f"demo {'finished' if summary['finished'] else 'stopped at its time limit'} "
                    f"in {summary['seconds']:.0f} s")
    for col in ("kind", "key", "state", "held"):
        t.add_column(col)
    for kind, key, state, held in summary["states"]:
        t.add_row(kind, key, state, Text(held or ""))
    cfg = summary["config"]
    return Group(t, Text(
        f"report: {summary['report']}\n"
        f"look around: autoproc -c {cfg} status | show night 20240602 | history exposure 2206.941205\n"
        f"logs: {summary['root']}/daemon.log, per attempt under {summary['root']}/state/work/"))
