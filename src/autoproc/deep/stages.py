"""The DEEP stages: what the `night` and `template` machines run (statemachines/night.yaml,
statemachines/template.yaml), plus the `raw` file kind.

A night walks ingest → bias → flat → drp → (nightly coadd) → diff. Each processing state
runs one step per state entry: it builds the proc type's steps' graphs in order in-process
(`runner.plan_step`, skip-existing-in the chain with the skip-failures rule: the "anything
left?" check), runs the first one with work left, that very graph (`runner.execute_plan`:
bps or pipetask, judged from the Butler) and fires the self-loop `next_step`; once every
step's graph is empty it finishes the proc type (certify, borrow, …) and fires the trigger
that leaves the state. So the journal has one row per step run. The steps found done are remembered in the subject's data and not
checked again until their inputs may have changed (docs/DEEP.md#step-memory). After
`rerun-from` a state, the first action to run sets aside the RUNs and certifications the
operator asked to redo (`autoproc.deep.rerun`), as a `next_step` of its own, so the steps
then run again into new RUNs.

Failure rules (docs/DEEP.md#skip-rules, docs/DEEP.md#missing-calibrations): memory-class failures raise `Retry` with more memory
(the engine's retry budget caps them); a fatal failure of a bias or flat step makes the
night borrow that calibration from a neighbour night; a fatal failure anywhere else ends
in `failed` with the failed data IDs and exceptions in the journal. A missing bias or
flat that no neighbour has yet sends the night to `waiting_calibs` until one certifies.

Actions open a fresh Butler each time (a long-lived one would need `registry.refresh()`)
and never write the store: what they found goes back as evidence and data.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autoproc import process, slurm
from autoproc.actions import (
    ActionContext,
    ActionError,
    EnvironmentVerdict,
    Fail,
    FileInfo,
    Hold,
    Outcome,
    Retry,
    Wait,
    action,
    callback,
    condition,
    environment_check,
    file_kind,
    forgotten_on_reset,
)
from autoproc.config import Config
from autoproc.deep import butlers, calibs, ingest, quanta, registry, rerun, runner, warm
from autoproc.deep import collections as colls
from autoproc.deep import rebuild as _rebuild  # noqa: F401 - registers the rebuild hooks
from autoproc.deep.config import DeepConfig
from autoproc.deep.instrument import InstrumentError
from autoproc.store import Subject

# docs/DEEP.md#steps (diff_drp: proc-decam's list), used for proc types not in `deep.steps`.
DEFAULT_STEPS: dict[str, list[str]] = {
    "bias": ["step1", "step2"],
    "flat": ["step0", "step1", "step2", "step3"],
    "drp": ["step0", "step1", "step2a", "step2b", "step2c", "step2d", "step2e", "step2f", "step3a"],
    "coadd": ["assembleCoadd"],
    "diff_drp": ["step4a", "step4b", "step4c", "step4d", "step4e"],
    "template": ["assembleCoadd"],
}
# Night states in which its warps exist (DRP is behind it).
PAST_DRP = ("coadd", "waiting_template", "diff", "done")
MAX_FAILURES_SHOWN = 20
MISSING_INPUT_WAIT = 60.0


@environment_check("deep skip-failures rule")
def _skip_rule_in_force() -> None:
    quanta.skip_rule_api()


# --- configuration helpers ------------------------------------------------------------


def repo_path(config: Config) -> Path:
    return config.deep.repo or config.root / "repo"


def existing_butler(config: Config, writeable: bool) -> Any | None:
    """A Butler on the configured repository, or None when there is none yet (for looking
    at what is there; actions use `open_butler`, which holds the night instead)."""
    from lsst.daf.butler import Butler

    repo = repo_path(config)
    if not (repo / "butler.yaml").exists():
        return None
    return Butler.from_config(str(repo), writeable=writeable)


def names(cfg: DeepConfig) -> colls.Names:
    return colls.Names(prefix=cfg.prefix, raw_run=cfg.raw_run, instrument=cfg.instrument)


def pipeline_of(cfg: DeepConfig, proc: str) -> str:
    """The configured pipeline of a proc type; autoproc ships no science pipelines, so there is
    no default (docs/DEEP.md#pipelines)."""
    if proc in cfg.pipelines:
        return cfg.pipelines[proc]
    raise Fail(f"deep.pipelines.{proc} is not set: autoproc has no default pipeline; set it to the "
               f"pipeline YAML that runs the {proc} steps {' '.join(steps_of(cfg, proc))}")


def steps_of(cfg: DeepConfig, proc: str) -> list[str]:
    return list(cfg.steps.get(proc) or DEFAULT_STEPS[proc])


def template_members(spec: list[str] | str, nights: list[str]) -> list[str]:
    """The member nights of a template: its list, or the given nights its regex matches."""
    if isinstance(spec, list):
        return [str(n) for n in spec]
    return [n for n in nights if re.match(spec, n)]


def templates_of(cfg: DeepConfig, night: str) -> list[str]:
    """The templates a night belongs to (and is differenced against)."""
    return sorted(name for name, spec in cfg.templates.items() if template_members(spec, [night]))


def registry_wait(config: Config, why: str) -> Wait:
    """The registry database is not answering: not the step's failure, so no retry is spent."""
    return Wait(f"Butler registry unreachable: {why}", retry_after=config.deep.registry_retry_seconds,
                problem="registry_unreachable")


@contextmanager
def open_butler(config: Config) -> Iterator[Any]:
    """A Butler of the action's own on the night's repo (`butlers.action_butler`). A
    registry that does not answer (here or in the middle of the action) makes the action
    wait, not fail."""
    repo = repo_path(config)
    if not (repo / "butler.yaml").exists():
        raise Hold(f"no Butler repository at {repo}: run `autoproc deep init` first")
    try:
        butler = butlers.action_butler(repo)
    except Exception as err:
        if (why := registry.unreachable(err)) is not None:
            butlers.forget(repo)
            raise registry_wait(config, why) from err
        raise
    try:
        yield butler
    except Exception as err:
        if not isinstance(err, ActionError) and (why := registry.unreachable(err)) is not None:
            butlers.forget(repo)
            raise registry_wait(config, why) from err
        raise
    finally:
        butler.close()


# --- intake -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _manifest(path: str, mtime: float) -> ingest.Manifest:
    return ingest.load_manifest(path)


@file_kind("raw")
def raw_file(path: Path, config: Config) -> FileInfo:
    """A DECam raw feeds the night it belongs to: the manifest's night when one is
    configured, else the night from DATE-OBS. A valid raw short of HDUs (or of its
    manifest md5) is `waiting`, with why (`ingest.completeness`)."""
    cfg = config.deep
    info = ingest.read_raw_header(path, day_obs_rule=cfg.day_obs_rule)
    night, row = info.day_obs, None
    if cfg.manifest is not None:
        try:
            manifest = _manifest(str(cfg.manifest), cfg.manifest.stat().st_mtime)
        except (ingest.ManifestError, OSError) as err:
            raise EnvironmentVerdict(f"{path.name}: manifest unusable: {err}") from None
        if manifest.lookup(path) is None:
            # A manifest not yet updated for this raw: look again once it is (reload, restart, retry).
            raise EnvironmentVerdict(f"{path.name}: not listed in manifest {cfg.manifest.name}")
        row = ingest.manifest_row(manifest, path, info)  # its md5 decides completeness below
        night = row.night
    done = ingest.completeness(info, cfg.expected_detectors, row)
    return FileInfo(subject=("night", f"{night:08d}"), info={
        "expnum": info.expnum, "obstype": info.obstype, "filter": info.physical_filter,
        "detectors": list(info.detectors), "missing": list(done.missing), "rule": done.rule},
        waiting=done.reason)


def _waiting_for_rest(ctx: ActionContext) -> Outcome | None:
    """The night's incomplete raws wait `incomplete_grace_seconds` after their last change for the
    rest of their HDUs (a copy that stalled); the whole batch waits with them."""
    grace, now = ctx.config.deep.incomplete_grace_seconds, time.time()
    young = [f for f in ctx.files if f["status"] == "waiting" and now - f["updated"] < grace]
    if not young:
        return None
    left = min(grace - (now - f["updated"]) for f in young)
    shown = "; ".join(f"{Path(f['path']).name}: {f['reason']}" for f in young[:3])
    more = f" (+{len(young) - 3} more)" if len(young) > 3 else ""
    return Outcome(None, retry_after=left + 0.05, reason=f"{len(young)} incomplete raw(s) wait up to "
                   f"{grace:g} s for the rest: {shown}{more}")


@action()
def ingest_night(ctx: ActionContext) -> Outcome:
    """Ingest every ready raw of the night in one batch, once none arrived for a while and
    none is waiting for the rest of its HDUs. A raw that changed since it was ingested
    replaces what was ingested from it (raws, exposure, visit and regions)."""
    cfg = ctx.config.deep
    paths = [f["path"] for f in ctx.files]
    if not paths:
        return Outcome("ingested", reason="no new raws", data=forget_steps())
    quiet = cfg.ingest_quiet_seconds - (time.time() - max(f["updated"] for f in ctx.files))
    if quiet > 0:
        return Outcome(None, retry_after=quiet + 0.05, reason=f"{len(paths)} new raws; waiting for a quiet moment")
    if (wait := _waiting_for_rest(ctx)) is not None:
        return wait
    data = ctx.subject.data
    known = dict(data.get("ingested_files") or {})  # path -> [size, mtime] when it was ingested
    changed = [f["path"] for f in ctx.files if f["path"] in known and known[f["path"]] != [f["size"], f["mtime"]]]
    with open_butler(ctx.config) as butler:
        try:
            res = ingest.ingest_raws(butler, paths, run=cfg.raw_run, transfer=cfg.ingest_transfer,
                                     manifest=cfg.manifest, backend=cfg.ingest_backend,
                                     day_obs_rule=cfg.day_obs_rule, expected_detectors=cfg.expected_detectors,
                                     replace=changed)
        except InstrumentError as err:
            raise Fail(f"ingest: {err}") from None  # the configuration, not the raws: retrying cannot help
    bad = {str(p): reason for p, reason in res.bad.items()}
    raws = dict(data.get("raws") or {})
    raws["ingested"] = raws.get("ingested", 0) + len(res.ingested)
    raws["skipped"] = raws.get("skipped", 0) + len(res.skipped)
    if res.replaced:
        raws["replaced"] = raws.get("replaced", 0) + len(res.replaced)
    # Bad raws are marked in the intake table (status, report) and kept with the night.
    bad_raws = {**(data.get("bad_raws") or {}), **bad}
    for f in ctx.files:
        if f["path"] not in bad:
            known[f["path"]] = [f["size"], f["mtime"]]
    # Exposures ingested short of HDUs (after the grace); a complete replacement clears them.
    missing = dict(data.get("missing_detectors") or {})
    for raw in res.ingested:
        if raw.incomplete:
            missing[str(raw.exposure)] = {"path": str(raw.path), "missing": list(raw.missing), "reason": raw.incomplete}
        else:
            missing.pop(str(raw.exposure), None)
    other = sorted(str(n) for n in res.nights if f"{n:08d}" != ctx.subject.key)
    evidence = {"summary": res.summary(), "ingested": len(res.ingested), "skipped": len(res.skipped),
                "bad": bad, "visits": len(res.visits), "run": res.run}
    if res.incomplete:
        evidence["incomplete"] = {str(p): c.reason for p, c in res.incomplete.items()}
    if res.replaced:
        evidence["replaced"] = {str(p): r for p, r in res.replaced.items()}
    if other:
        evidence["other_nights"] = other  # the ingest's night rule disagreed with the intake's
    return Outcome("ingested", evidence=evidence,
                   data={"raws": raws, "bad_raws": bad_raws, "ingested_files": known, "missing_detectors": missing,
                         **forget_steps()},  # new raws: every step may have work again
                   reason=res.summary(), consume=[p for p in paths if p not in bad], bad=bad)


# --- running steps ----------------------------------------------------------------------


def _submit_template(cfg: DeepConfig) -> Path:
    if cfg.submit_template is not None:
        return cfg.submit_template
    from autoproc.deep.bps_site import SUBMIT_TEMPLATES

    return SUBMIT_TEMPLATES[cfg.bps_site]


def _submit_extra(ctx: ActionContext) -> dict[str, Any] | None:
    """What the attempt sets in the submit yaml beyond the template: on the Slurm site, the
    `deep.slurm` values and the comment that ties the step's Slurm job to this attempt (so
    the daemon can cancel it when the attempt ends or is interrupted; autoproc.slurm)."""
    cfg = ctx.config.deep
    if cfg.bps_site != "slurm":
        return None
    return {"site": {"slurm": cfg.slurm.site_settings(slurm.attempt_comment(ctx.config.db, ctx.attempt_id))}}


def _run_child(config: Config) -> runner.RunChild:
    """How a step's child starts: forked from the warm server (`deep.warm`, pipetask mode),
    else as a fresh process; bps mode always the latter."""
    cfg = config.deep
    if cfg.mode != "pipetask" or not cfg.warm:
        return process.run
    log = config.work_dir / "deep" / "warm-server.log"
    return warm.shared(runner.venv_env(cfg.env), cfg.warm_preload, log).run


def _failure_lines(failures: list[dict]) -> str:
    shown = [f"{f['task']} {f['data_id']}: {f['exception_type']}: {f['message'][:200]}"
             for f in failures[:5]]
    more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
    return "; ".join(shown) + more


def _step_evidence(out: runner.StepOutcome) -> dict[str, Any]:
    """What the journal keeps of one attempt (the full record is attempt.json in its directory)."""
    full = out.to_json()
    ev = {k: full[k] for k in ("status", "run", "pipeline", "step", "mode", "expected", "succeeded", "failed",
                               "blocked", "retryable", "renamed_logs", "killed", "recovered", "returncodes",
                               "attempt_dir", "error", "error_kind", "seconds")}
    ev["failures"] = full["failures"][:MAX_FAILURES_SHOWN]
    for k in ("recovered_attempts", "log", "log_tail"):
        if k in out.evidence:
            ev[k] = out.evidence[k]
    return ev


# Subject data: the steps found done, per chain (docs/DEEP.md#step-memory).
STEP_MEMORY = "steps_done"
for _kind in ("night", "template"):
    forgotten_on_reset(_kind, STEP_MEMORY)


def forget_steps() -> dict[str, Any]:
    """Outcome data that forgets every chain's remembered steps (their inputs may change)."""
    return {STEP_MEMORY: {}}


def remembered_steps(ctx: ActionContext) -> dict[str, Any]:
    """The subject's step memory, a copy to update and hand back as Outcome data."""
    return dict(ctx.subject.data.get(STEP_MEMORY) or {})


def _pipeline_digest(pipeline: str) -> str | None:
    """The pipeline file's content hash, so an edited pipeline at the same path is not trusted."""
    path = Path(pipeline.split("#", 1)[0])
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _recover_earlier(ctx: ActionContext, butler: Any, parent: str) -> list[dict]:
    """Finish what earlier attempts of the chain `parent` left (a killed step's registration,
    its judging, its RUN in the chain: `runner.recover_pending_attempts`); what each kept.
    Waits while such an attempt's child is still running (the engine is killing it)."""
    try:
        return runner.recover_pending_attempts(butler, ctx.config.work_dir / "deep", parent,
                                               run_child=_run_child(ctx.config), env=ctx.config.deep.env,
                                               on_progress=ctx.progress)
    except runner.RunnerError as err:
        raise Wait(str(err), retry_after=10.0) from None


class _MemoryWrong(Exception):
    """A step's inputs are missing (or it has no data at all) although earlier steps were
    skipped as remembered done."""


class Steps:
    """The steps of one proc type over one chain, advanced one step per call.

    `memory` is the subject's step memory (`remembered_steps`), shared by the Steps of one
    action: `advance` skips the remembered steps and hands the memory back in its Outcome."""

    def __init__(self, ctx: ActionContext, butler: Any, proc: str, parent: str, fixed: list[str],
                 memory: dict[str, Any] | None = None):
        self.ctx, self.butler, self.proc, self.parent, self.fixed = ctx, butler, proc, parent, fixed
        self.cfg = ctx.config.deep
        self.pipeline = pipeline_of(self.cfg, proc)
        self.failed: dict[str, int] = {}  # step -> quanta that failed for good (skip-failures)
        self.done: dict[str, dict[str, int]] = {}  # step -> quanta succeeded per task
        self.memory = remembered_steps(ctx) if memory is None else memory
        self.checks = 0  # graphs this Steps built (`runner.plan_step`: the check and the graph a step runs)
        self.attempts = ctx.config.work_dir / "deep"
        self.recovered: list[dict] = []  # earlier attempts of the chain this Steps finished
        self.skipped: list[str] = []  # steps taken as done from memory

    def _basis(self, steps: list[str]) -> dict[str, Any]:
        """What a memory was found for: it is ignored when any of this differs."""
        return {"proc": self.proc, "pipeline": self.pipeline, "digest": _pipeline_digest(self.pipeline),
                "steps": steps, "fixed": list(self.fixed), "where": self.cfg.where}

    def remembered(self) -> dict[str, Any]:
        """Outcome data carrying the step memory."""
        return {STEP_MEMORY: self.memory}

    def _remember(self, basis: dict[str, Any], found: dict[str, dict[str, Any]]) -> None:
        self.memory[self.parent] = {"for": basis, "done": dict(found)}

    def forget(self) -> None:
        """Check every step again: the chain's inputs changed."""
        self.memory.pop(self.parent, None)

    def forget_if_tagged(self, tag: colls.TagResult) -> None:
        """Forget when the tagging just added or replaced inputs of the chain."""
        if tag.associated or tag.removed:
            self.forget()

    def advance(self) -> Outcome | None:
        """Run the first step with work left and return its Outcome (`next_step`), or None
        when every step's graph is empty. Raises Retry / Wait / Fail per the rules above.
        Steps remembered done are not checked again (docs/DEEP.md#step-memory)."""
        # Before any graph is built, so none redoes quanta an earlier attempt finished.
        self.recovered = _recover_earlier(self.ctx, self.butler, self.parent)
        if colls.rebuild_chain(self.butler, self.parent, self.fixed).changed or self.recovered:
            self.forget()  # RUNs or fixed inputs came or went behind the memory's back
        steps = steps_of(self.cfg, self.proc)
        basis = self._basis(steps)
        entry = self.memory.get(self.parent) or {}
        known = dict(entry.get("done") or {}) if entry.get("for") == basis else {}
        try:
            try:
                outcome = self._walk(steps, basis, known)
            except _MemoryWrong:
                self.memory.pop(self.parent, None)
                outcome = self._walk(steps, basis, {})
        except ActionError as err:
            err.evidence["step_checks"] = self.counted()
            raise
        if outcome is not None:
            outcome.evidence["step_checks"] = self.counted()
        return outcome

    def counted(self) -> dict[str, int]:
        """How many steps this Steps checked, and how many it took as done from memory
        (in the evidence, for benchmarks/step_profile.py)."""
        return {"checked": self.checks, "remembered": len(self.skipped)}

    def _walk(self, steps: list[str], basis: dict[str, Any], known: dict[str, dict[str, Any]]) -> Outcome | None:
        self.failed, self.done, self.skipped = {}, {}, []
        found: dict[str, dict[str, Any]] = {}  # what this walk knows done, in step order
        for step in steps:
            mem = known.get(step)
            # Only a clean prefix is trusted: a step with failures or blocked quanta may get work
            # back (a release, a calibration certified), and so may every step after one that ran.
            if (len(found) == len(self.skipped) and isinstance(mem, dict) and mem.get("failed") == 0
                    and mem.get("blocked") == 0 and isinstance(mem.get("succeeded"), dict)):
                self.failed[step], self.done[step] = 0, dict(mem["succeeded"])
                found[step] = mem
                self.skipped.append(step)
                continue
            try:
                self.checks += 1
                plan = runner.plan_step(self.butler, self.pipeline, step, self.parent, self.attempts,
                                        where=self.cfg.where)
            except quanta.StepCheckError as err:
                if err.kind == "missing_input" and any(self.failed.values()):
                    self.failed[step] = 0  # blocked behind an earlier step's failures
                    continue
                if err.kind == "missing_input" and self.skipped:
                    raise _MemoryWrong(step) from None
                if err.kind == "missing_input":
                    raise Wait(f"{self.parent} {step}: inputs missing: {err}", retry_after=MISSING_INPUT_WAIT) from None
                raise Fail(f"{self.parent} {step}: the graph cannot be built: {err}") from None
            st = plan.status
            if st.no_data and self.skipped:
                raise _MemoryWrong(step)  # no input at all behind steps taken as done: look at them
            if st.empty:
                self.failed[step] = st.n_failed
                self.done[step] = dict(st.succeeded)
                found[step] = {"failed": st.n_failed, "blocked": st.n_blocked, "succeeded": dict(st.succeeded)}
                continue
            self._remember(basis, found)
            outcome = self._run(step, plan)
            if outcome.evidence.get("status") in ("succeeded", "nothing_to_do"):
                # What the next check would find: the quanta done before plus the graph just run.
                done = {t: st.succeeded.get(t, 0) + st.to_run.get(t, 0) for t in {*st.succeeded, *st.to_run}}
                found[step] = {"failed": 0, "blocked": st.n_blocked, "succeeded": done}
                self._remember(basis, found)
            outcome.data.update(self.remembered())
            return outcome
        self._remember(basis, found)
        return None

    def _run(self, step: str, plan: runner.StepPlan) -> Outcome:
        """Run the graph the walk just built for `step` (no second build) and judge it."""
        ctx, cfg = self.ctx, self.cfg
        memory = int(ctx.adjust.get("request_memory") or cfg.request_memory)
        stopping = ctx.stopping
        out = runner.execute_plan(
            self.butler, str(repo_path(ctx.config)), plan, mode=cfg.mode, quantum_backed=cfg.quantum_backed,
            submit_template=_submit_template(cfg), submit_extra=_submit_extra(ctx), request_memory=memory,
            cores=cfg.cores, clusters=cfg.clusters, env=cfg.env, timeout=cfg.step_timeout_seconds,
            run_child=_run_child(ctx.config),
            # The child goes into the engine's ledger (the attempt's row and `step.child.json`): the
            # engine kills it after a restart, when an operator moves the night on, and on SIGTERM.
            on_start=lambda child: ctx.record_child("step", child),
            should_stop=stopping.is_set if stopping is not None else None)
        if self.recovered:
            out.evidence["recovered_attempts"] = self.recovered
        ev = _step_evidence(out)
        what = f"{self.parent} {step}"
        full = out.no_space()
        if full is not None:  # the engine waits for space; the failed quanta run again then
            raise OSError(full.errno, f"{what}: {full.strerror}")
        lost = out.registry_lost()
        if lost is not None:  # its unfinished quanta run again once the server answers
            raise registry_wait(ctx.config, f"{what}: {lost}")
        fatal = [f.to_json() for f in out.fatal_failures]
        if out.status in ("succeeded", "nothing_to_do"):
            return Outcome("next_step", evidence=ev, reason=f"{what}: {sum(out.succeeded.values())} quanta "
                           f"succeeded in {out.run}" if out.run else f"{what}: nothing to do")
        if out.status == "failed":
            if fatal and self.proc not in ("bias", "flat"):
                raise Fail(f"{what}: {len(fatal)} quanta failed: {_failure_lines(fatal)}", evidence=ev)
            if out.retryable:
                more = min(cfg.max_memory, int(memory * cfg.memory_factor))
                raise Retry(f"{what}: {len(out.failures) - len(fatal)} quanta failed for memory; "
                            f"next try with {more} MB", adjust={"request_memory": more}, evidence=ev)
            # bias/flat: the step is done with failures; finishing the proc type borrows instead.
            return Outcome("next_step", evidence=ev, reason=f"{what}: {len(fatal)} quanta failed: "
                           f"{_failure_lines(fatal)}")
        if out.status == "incomplete":
            raise Retry(f"{what}: incomplete ({'killed' if out.killed else 'quanta neither succeeded nor failed'})",
                        evidence=ev)
        if out.error_kind == "missing_input":
            raise Wait(f"{what}: inputs missing: {out.error}", retry_after=MISSING_INPUT_WAIT, evidence=ev)
        raise Fail(f"{what}: {out.error}", evidence=ev)


def _step_summary(steps: Steps) -> dict[str, Any]:
    return {"pipeline": steps.pipeline, "parent": steps.parent, "failed": steps.failed, "succeeded": steps.done,
            "step_checks": steps.counted()}


def _pending_rerun(ctx: ActionContext) -> Outcome | None:
    """An operator's rerun not yet carried out: set aside what it redoes first. A step the
    rerun superseded may have left outputs its RUN has not registered yet (an `autoproc-step`
    killed mid-step): they are registered first, so that RUN is set aside with the others
    rather than chained by a later recovery."""
    request = ctx.subject.data.get("rerun") or {}
    if not request.get("pending"):
        return None
    with open_butler(ctx.config) as butler:
        for chain in request.get("chains", []):
            _recover_earlier(ctx, butler, chain["parent"])
        return rerun.carry_out(butler, ctx.subject)


def _late_raws(ctx: ActionContext) -> Outcome | None:
    """A pending rerun first (above). Then new raws of a night in the middle of processing:
    ingest them first (which forgets the steps found done), then walk the stages again (every
    step with nothing new to do costs one in-process check)."""
    if (pending := _pending_rerun(ctx)) is not None:
        return pending
    if ctx.files:
        return Outcome("reingest", reason=f"{len(ctx.files)} new raws arrived")
    return None


def _science_bands(butler: Any, cfg: DeepConfig, night: str) -> list[str]:
    bands = calibs.band_of_filters(butler, cfg.instrument)
    recs = butler.query_dimension_records(
        "exposure", where=f"instrument = '{cfg.instrument}' AND exposure.day_obs = {int(night)} "
        "AND exposure.observation_type = 'science'", explain=False)
    return sorted({bands.get(r.physical_filter, r.physical_filter) for r in recs})


def _needs_calibs(ctx: ActionContext, steps: Steps, bias: bool, flat: list[str], evidence: dict, looked: float
                  ) -> Outcome:
    what = " and ".join((["bias"] if bias else []) + ([f"flat ({', '.join(flat)})"] if flat else []))
    return Outcome("need_calibs", evidence=evidence, reason=f"no {what} on this night or a neighbour "
                   f"within {ctx.config.deep.max_borrow_days} nights yet",
                   # `checked`: when the neighbour lookup began (`looked`); a neighbour certifying after
                   # it wakes us, also one that certified while we looked (found or not).
                   data={"missing_calibs": {"bias": bias, "flat": flat, "checked": looked},
                         **steps.remembered()})


def _own_calibs(ctx: ActionContext, **update: Any) -> dict[str, Any]:
    own = dict(ctx.subject.data.get("own_calibs") or {})
    own.update(update)
    return own


# --- the night's actions --------------------------------------------------------------


@action()
def process_bias(ctx: ActionContext) -> Outcome:
    """bias: tag the zeros, run step1, step2; certify the night's bias, or borrow one."""
    if (late := _late_raws(ctx)) is not None:
        return late
    cfg, night = ctx.config.deep, ctx.subject.key
    n = names(cfg)
    with open_butler(ctx.config) as butler:
        tag, steps, step = _tag_and_advance(ctx, butler, "bias", _tag_raws("bias"), n.parent("bias", night))
        if step is not None:
            return step
        evidence: dict[str, Any] = {"raws": tag.to_json(), "steps": _step_summary(steps)}
        why = "no zeros" if not tag.total else ("failed quanta" if any(steps.failed.values()) else "")
        if not why:
            try:
                cert = calibs.certify_night(butler, night, "bias", names=n, begin=cfg.certify_begin,
                                            end=cfg.certify_end)
                return Outcome("bias_done", evidence={**evidence, "certified": cert.to_json()},
                               data={"own_calibs": _own_calibs(ctx, bias=time.time()), "missing_calibs": {}},
                               reason=f"certified {cert.count} bias into {cert.calib_collection}")
            except LookupError as err:
                why = str(err)
        looked = time.time()
        sub = calibs.borrow_calibration(butler, night, "bias", max_days=cfg.max_borrow_days, names=n,
                                        begin=cfg.certify_begin, end=cfg.certify_end)
    evidence["own_bias_unusable"] = why
    if sub is None:
        return _needs_calibs(ctx, steps, True, [], evidence, looked)
    return Outcome("bias_done", evidence={**evidence, "substitution": sub.to_json()}, data={"missing_calibs": {}},
                   reason=f"{why}: borrowed the bias of {sub.source_night} ({sub.distance:+d} nights)")


@action()
def process_flat(ctx: ActionContext) -> Outcome:
    """flat: tag the dome flats, run step0..step3; certify the night's flats and borrow
    the bands it lacks (or all of them when its flat steps failed)."""
    if (late := _late_raws(ctx)) is not None:
        return late
    cfg, night = ctx.config.deep, ctx.subject.key
    n = names(cfg)
    with open_butler(ctx.config) as butler:
        tag, steps, step = _tag_and_advance(ctx, butler, "flat", _tag_raws("flat"), n.parent("flat", night))
        if step is not None:
            return step
        evidence: dict[str, Any] = {"raws": tag.to_json(), "steps": _step_summary(steps)}
        own = _own_calibs(ctx)
        borrow = [band for _, band in calibs.find_missing_calibs(butler, [night], names=n).flat]
        if tag.total and not any(steps.failed.values()):
            try:
                cert = calibs.certify_night(butler, night, "flat", names=n, begin=cfg.certify_begin,
                                            end=cfg.certify_end)
                evidence["certified"] = cert.to_json()
                bands = calibs.band_of_filters(butler, cfg.instrument)
                now = time.time()
                own = _own_calibs(ctx, flat={**(own.get("flat") or {}), **{
                    bands.get(d["data_id"]["physical_filter"], d["data_id"]["physical_filter"]): now
                    for d in cert.datasets}})
            except LookupError as err:
                evidence["own_flat_unusable"] = str(err)
                borrow = _science_bands(butler, cfg, night)
        elif tag.total:
            evidence["own_flat_unusable"] = "failed quanta"
            borrow = _science_bands(butler, cfg, night)
        subs, missing, looked = [], [], time.time()
        for band in borrow:
            sub = calibs.borrow_calibration(butler, night, "flat", band=band, max_days=cfg.max_borrow_days,
                                            names=n, begin=cfg.certify_begin, end=cfg.certify_end)
            if sub is None:
                missing.append(band)
            else:
                subs.append(sub.to_json())
    evidence["substitutions"] = subs
    if missing:
        out = _needs_calibs(ctx, steps, False, missing, evidence, looked)
        out.data["own_calibs"] = own
        return out
    borrowed = ", ".join(f"{s['band']} from {s['source_night']}" for s in subs)
    return Outcome("flat_done", evidence=evidence, data={"own_calibs": own, "missing_calibs": {}},
                   reason="flats certified" + (f"; borrowed {borrowed}" if borrowed else ""))


@action()
def process_drp(ctx: ActionContext) -> Outcome:
    """drp: tag the science raws, run the configured DRP steps (to warps)."""
    return _tag_then_steps(
        ctx, "drp", _tag_raws("drp"), lambda n, night: n.parent("drp", night), done="drp_done", tagged="raws",
        reasons=("DRP steps done", "no science exposures"))


@action()
def nightly_coadd(ctx: ActionContext) -> Outcome:
    """The night's own coadd: tag its warps, then the coadd steps over its coadd chain."""
    return _tag_then_steps(
        ctx, "coadd", lambda butler, n, night: colls.tag_warps(butler, [night], night, names=n),
        lambda n, night: n.coadd(night), done="coadd_done", tagged="warps",
        reasons=("nightly coadd done", "no warps to coadd"))


def _tag_raws(proc: str):
    return lambda butler, n, night: colls.tag_raws(butler, night, proc, names=n)


def _tag_and_advance(ctx: ActionContext, butler: Any, proc: str, tag_inputs, parent: str
                     ) -> tuple[Any, Steps, Outcome | None]:
    """Tag a proc type's inputs into its collection and run its next step with work left:
    (the tagging, the Steps, that step's Outcome or None when there is none or nothing was tagged)."""
    n, night = names(ctx.config.deep), ctx.subject.key
    tag = tag_inputs(butler, n, night)
    steps = Steps(ctx, butler, proc, parent, n.fixed_inputs(proc, night))
    steps.forget_if_tagged(tag)
    return tag, steps, (steps.advance() if tag.total else None)


def _tag_then_steps(ctx: ActionContext, proc: str, tag_inputs, parent_of, *, done: str, tagged: str,
                    reasons: tuple[str, str]) -> Outcome:
    """Tag a proc type's inputs into their collection, then run its next step with work
    left (a `next_step` Outcome), or say the proc type is `done` (nothing tagged: nothing to do)."""
    if (late := _late_raws(ctx)) is not None:
        return late
    with open_butler(ctx.config) as butler:
        tag, steps, step = _tag_and_advance(ctx, butler, proc, tag_inputs,
                                            parent_of(names(ctx.config.deep), ctx.subject.key))
        if step is not None:
            return step
    return Outcome(done, evidence={tagged: tag.to_json(), "steps": _step_summary(steps)},
                   reason=reasons[0] if tag.total else reasons[1])


@action()
def difference(ctx: ActionContext) -> Outcome:
    """diff_drp against every template the night belongs to (their coadds exist by now)."""
    if (late := _late_raws(ctx)) is not None:
        return late
    cfg, night = ctx.config.deep, ctx.subject.key
    n = names(cfg)
    summary, memory = {}, remembered_steps(ctx)  # one memory for every template's chain
    with open_butler(ctx.config) as butler:
        for template in templates_of(cfg, night):
            steps = Steps(ctx, butler, "diff_drp", n.diff(night, template),
                          n.fixed_inputs("diff_drp", night, template), memory)
            if (step := steps.advance()) is not None:
                return step
            summary[template] = _step_summary(steps)
    return Outcome("diffed", evidence={"templates": summary}, reason=f"differenced against {', '.join(summary)}")


# --- the template's action ------------------------------------------------------------


@action()
def assemble_template(ctx: ActionContext) -> Outcome:
    """A template coadd: tag the warps of its member nights (their drp chains, found in
    the Butler), then the template steps (assembleCoadd) over its coadd chain."""
    cfg, name = ctx.config.deep, ctx.subject.key
    if name not in cfg.templates:
        raise Fail(f"template {name!r} is not configured (deep.templates)")
    if (pending := _pending_rerun(ctx)) is not None:
        return pending
    n = names(cfg)
    with open_butler(ctx.config) as butler:
        drp = re.compile(re.escape(cfg.prefix) + r"/(\d{8})/drp$")
        known = sorted(m.group(1) for c in butler.collections.query(f"{cfg.prefix}/*/drp")
                       if (m := drp.match(c)))
        members = template_members(cfg.templates[name], known)
        warps = colls.tag_warps(butler, members, name, names=n)
        if not warps.total:
            raise Wait(f"no warps yet in the drp chains of {', '.join(members) or 'any member night'}")
        steps = Steps(ctx, butler, "template", n.coadd(name), n.fixed_inputs("coadd", name))
        steps.forget_if_tagged(warps)  # a member night's new or redone warps
        if (step := steps.advance()) is not None:
            return step
    return Outcome("built", evidence={"members": members, "warps": warps.to_json(), "steps": _step_summary(steps)},
                   data={"members": members}, reason=f"template from {warps.total} warps of {len(members)} nights")


# --- conditions (store only: they run in the engine's loop) -----------------------------


@condition()
def nightly_coadd_on(subject: Subject, env: Any) -> bool:
    return env.config.deep.nightly_coadd


@condition()
def has_templates(subject: Subject, env: Any) -> bool:
    return bool(templates_of(env.config.deep, subject.key))


@condition()
def templates_built(subject: Subject, env: Any) -> bool:
    found = [env.store.find_subject("template", t) for t in templates_of(env.config.deep, subject.key)]
    return all(s is not None and s.state == "done" for s in found)


@condition()
def missing_bias(subject: Subject, env: Any) -> bool:
    return bool((subject.data.get("missing_calibs") or {}).get("bias"))


@condition()
def neighbour_certified(subject: Subject, env: Any) -> bool:
    """A night within reach certified its own product of what this night lacks since
    this night last looked."""
    missing = subject.data.get("missing_calibs") or {}
    since = float(missing.get("checked") or 0)
    reach = {str(m) for m, _ in calibs.neighbour_nights(subject.key, env.config.deep.max_borrow_days)}
    for other in env.store.subjects("night"):
        if other.key not in reach:
            continue
        own = other.data.get("own_calibs") or {}
        if missing.get("bias") and float(own.get("bias") or 0) > since:
            return True
        if any(float((own.get("flat") or {}).get(band) or 0) > since for band in missing.get("flat") or ()):
            return True
    return False


@condition()
def members_past_drp(subject: Subject, env: Any) -> bool:
    """Every member night known to autoproc is past DRP (a listed night must be known)."""
    spec = env.config.deep.templates.get(subject.key)
    if spec is None:
        return False
    nights = {s.key: s.state for s in env.store.subjects("night")}
    members = template_members(spec, sorted(nights))
    return bool(members) and all(nights.get(m) in PAST_DRP for m in members)


# --- callbacks: cross-subject pokes ---------------------------------------------------


@callback()
def poke_waiting_nights(change: dict, env: Any) -> None:
    """A night certified its bias or flat: nights waiting for calibrations look again."""
    for s in env.store.subjects("night", "waiting_calibs"):
        env.poke("night", s.key)


@callback()
def poke_templates(change: dict, env: Any) -> None:
    """A night is past DRP: its templates (created here when `deep init` did not) look
    whether all their members are."""
    for name in templates_of(env.config.deep, change["key"]):
        if not env.create("template", name, reason=f"night {change['key']} is past DRP"):
            env.poke("template", name)


@callback()
def poke_diff_nights(change: dict, env: Any) -> None:
    """A template was built: its nights waiting for it go on to difference imaging."""
    for s in env.store.subjects("night", "waiting_template"):
        env.poke("night", s.key)
