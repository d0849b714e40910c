"""What `autoproc rerun-from` sets aside for a DEEP night or template, so its steps really
run again (README "Stepping in").

A rerun from a processing state takes the RUNs of that state's proc type and of every later
one out of the subject's chains: each RUN stays in the repo, marked set aside in its
collection documentation, and `collections.rebuild_chain` never puts it back. The
certified calibrations being redone (the night's bias and/or flat, borrowed ones included)
are decertified. The steps then find nothing in their chains and run into new RUNs; the
later states follow from the new outputs.

The override only plans and records the request (`data["rerun"]`, `pending`), read-only on
the Butler, and (as every operator move) empties the subject's step memory, so every step is
checked again (docs/DEEP.md#step-memory); the subject's next DEEP action does the Butler work. By then the engine has
stopped any step the override superseded, so no RUN of an older step slips back in.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from autoproc.actions import Outcome, RerunPlan, rerun_hook
from autoproc.config import Config
from autoproc.deep import calibs
from autoproc.deep import collections as colls
from autoproc.store import Subject

# Night states whose steps write RUNs, and their proc types (statemachines/night.yaml).
NIGHT_PROCS = {"bias": "bias", "flat": "flat", "drp": "drp", "coadd": "coadd", "diff": "diff_drp"}
CALIB_TYPES = ("bias", "flat")


@dataclass(frozen=True)
class Chain:
    proc: str
    parent: str


def _chains(config: Config, subject: Subject, redo: list[str]) -> list[Chain]:
    from autoproc.deep.stages import names, templates_of

    cfg, n = config.deep, names(config.deep)
    if subject.kind == "template":
        return [Chain("template", n.coadd(subject.key))] if "coadding" in redo else []
    night = subject.key
    out = []
    for state in redo:
        proc = NIGHT_PROCS.get(state)
        if proc in ("bias", "flat", "drp"):
            out.append(Chain(proc, n.parent(proc, night)))
        elif proc == "coadd":
            out.append(Chain(proc, n.coadd(night)))
        elif proc == "diff_drp":
            out.extend(Chain(proc, n.diff(night, t)) for t in templates_of(cfg, night))
    return out


def _calibs(config: Config, subject: Subject, chains: list[Chain]) -> list[tuple[str, str]]:
    """(CALIBRATION collection, dataset type) redone: the night's bias and flat when their steps rerun."""
    from autoproc.deep.stages import names

    n = names(config.deep)
    procs = {c.proc for c in chains}
    return [(n.calib(subject.key, t), t) for t in CALIB_TYPES if subject.kind == "night" and t in procs]


def _describe(butler: Any, chains: list[Chain], calib_list: list[tuple[str, str]]) -> list[str]:
    lines = [f"RUN {run} (out of {c.parent})" for c in chains for run in colls.runs_in_use(butler, c.parent)]
    for coll, dtype in calib_list:
        held = calibs.certified(butler, coll, dtype)
        if held:
            lines.append(f"certified {dtype} in {coll}: {len(held)} datasets (decertified)")
    return lines


def _borrowers(butler: Any, config: Config, night: str, chains: list[Chain]) -> list[str]:
    """Nights within borrowing reach whose certified calibrations came from this night's
    redone bias/flat chains: they keep the old ones until they are rerun themselves."""
    from autoproc.deep.stages import names

    n = names(config.deep)
    redone = {c.proc: c.parent for c in chains if c.proc in CALIB_TYPES}
    notes = []
    for other, _ in calibs.neighbour_nights(night, config.deep.max_borrow_days):
        for dtype, parent in redone.items():
            if any(d["run"].startswith(parent + "/") for d in calibs.certified(butler, n.calib(other, dtype), dtype)):
                notes.append(f"night {other} borrowed this night's {dtype} and keeps the old one: "
                             f"`autoproc rerun-from night {other} {dtype}` to take the new")
    return notes


@rerun_hook("night")
@rerun_hook("template")
def plan_rerun(subject: Subject, state: str, redo: list[str], config: Config | None) -> RerunPlan:
    """The RUNs and certifications a rerun from `state` takes out, listed from the Butler
    (a template rerun from `coadding`: its coadd RUNs; its warps are tagged again anyway)."""
    if config is None:
        return RerunPlan(notes=["no configuration given: the Butler was not looked at"])
    chains = _chains(config, subject, redo)
    calib_list = _calibs(config, subject, chains)
    if not chains:
        return RerunPlan()
    earlier = subject.data.get("rerun") or {}
    if earlier.get("pending"):  # a rerun not yet carried out: this one takes its chains too
        known = {c.parent for c in chains}
        chains += [Chain(c["proc"], c["parent"]) for c in earlier.get("chains", []) if c["parent"] not in known]
        calib_list += [(c, t) for c, t in earlier.get("calibs", []) if (c, t) not in calib_list]
    from autoproc.deep.stages import existing_butler

    butler = existing_butler(config, writeable=False)
    if butler is None:
        lines: list[str] = []
        notes = ["no Butler repository yet: nothing to set aside"]
    else:
        try:
            lines = _describe(butler, chains, calib_list)
            notes = _borrowers(butler, config, subject.key, chains) if subject.kind == "night" else []
        finally:
            butler.close()
        if lines:
            notes.append(f"the {subject.kind}'s next step takes them out (the daemon), before anything runs again")
    request = {"from": state, "pending": True, "requested": time.time(),
               "chains": [{"proc": c.proc, "parent": c.parent} for c in chains],
               "calibs": [list(x) for x in calib_list]}
    return RerunPlan(set_aside=lines, data={"rerun": request}, notes=notes,
                     evidence={"chains": [c.parent for c in chains], "calibs": [c for c, _ in calib_list]})


def carry_out(butler: Any, subject: Subject) -> Outcome | None:
    """Do what a pending rerun asked (see the module docstring): a `next_step` Outcome that
    journals what was set aside, or None when nothing is pending."""
    request = subject.data.get("rerun") or {}
    if not request.get("pending"):
        return None
    note = f"rerun of {subject.kind} {subject.key} from {request['from']} " \
           f"(requested {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(request['requested']))})"
    runs: dict[str, list[str]] = {}
    before = dt.datetime.fromtimestamp(request["requested"], dt.UTC)
    for c in request.get("chains", []):
        runs[c["parent"]] = colls.set_aside_runs(butler, c["parent"], note, before)
    decertified = {}
    for coll, dtype in request.get("calibs", []):
        held = calibs.certified(butler, coll, dtype)
        if held:
            calibs.decertify_all(butler, coll, dtype)
        decertified[coll] = [{"id": d["id"], "run": d["run"], "data_id": d["data_id"]} for d in held]
    n_runs = sum(len(r) for r in runs.values())
    n_cert = sum(len(d) for d in decertified.values())
    done = {**request, "pending": False, "carried_out": time.time(), "set_aside": runs, "decertified": decertified}
    return Outcome("next_step", reason=f"{note}: {n_runs} RUNs taken out of {len(runs)} chains (kept in the "
                   f"repo), {n_cert} certified calibrations decertified",
                   evidence={"rerun": {"set_aside": runs, "decertified": decertified}}, data={"rerun": done})
