"""The engine: the single writer of subject state.

One loop takes events (a file is ready, an attempt finished, an operator changed
something, time passed), routes them to subjects, fires transitions and dispatches
actions. Everything it decides is written to the store before it acts on it, so a
restart, even after kill -9, picks up from the store and the evidence on disk.
"""

from __future__ import annotations

import functools
import heapq
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transitions import MachineError

from autoproc import actions, decision, intake, process, slurm
from autoproc.actions import ActionResult, ResultKind
from autoproc.chain import chains
from autoproc.config import Config
from autoproc.errors import AutoprocError
from autoproc.executor import Executor
from autoproc.machines import Change, StateMachine, StateSpec, load_configured
from autoproc.store import (
    ATTEMPT_ACTIVE,
    DAEMON_BUSY_SLICE_MS,
    Attempt,
    AttemptStatus,
    Conflict,
    Store,
    Subject,
)

if TYPE_CHECKING:  # watchdog is imported only when the engine watches (start_watcher)
    from autoproc.watch import FileReady, Watcher

log = logging.getLogger("autoproc.engine")

OPERATOR_POLL_SECONDS = 0.25
REAPER_SECONDS = 5.0
SLURM_POLL_SECONDS = 5.0
# What a reload cannot change in a running daemon: the store and its lock, the executor's
# workers, the log handlers and the control socket are set up once, at the start.
RESTART_ONLY = ("root", "db", "work_dir", "executor", "logging", "control")
HEARTBEAT_SECONDS = 5.0
PERIOD_CHECK_SECONDS = 1.0
@dataclass(frozen=True)
class AttemptDone:
    attempt_id: int
    result: ActionResult


@dataclass(frozen=True)
class ChildStarted:
    attempt_id: int
    child: process.Child


@dataclass(frozen=True)
class Progress:
    attempt_id: int
    note: str


@dataclass(frozen=True)
class Reload:
    pass


def safe_component(text: str) -> str:
    """A subject key made safe as one path component."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)[:100] or "_"


class Engine:
    """Owns the store connection, the machines, the executor and the watchers."""

    def __init__(self, config: Config, *, config_path: Path | None = None, watch: bool = True,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.config_path = config_path
        self.clock = clock
        # The daemon never gives up on a write because another process holds the database
        # (a backup, a sqlite3 shell left in a transaction): it waits, and says so.
        self.store = Store(self.config.db, busy_timeout_ms=DAEMON_BUSY_SLICE_MS, on_busy=self._store_busy,
                           check=True)
        self.on_busy: list[Callable[[Engine, float], None]] = []  # while waiting for the lock (watchdog)
        self._busy_waited = 0.0
        self.machines: dict[str, StateMachine] = self._load_machines(config)
        actions.check_environment()
        self.events: queue.Queue[Any] = queue.Queue()
        self.stopping = threading.Event()
        self.listeners: list[Callable[[Change], None]] = []   # after every committed change (hooks)
        self.on_loop: list[Callable[[Engine], None]] = []        # every loop turn (watchdog pings)
        self.on_started: list[Callable[[Engine], None]] = []     # once the store and watchers are up
        self.running: dict[int, Future[ActionResult]] = {}  # attempt id -> future
        self.looked: set[tuple[int, int | None]] = set()  # (subject, entry) whose action returned since start
        self.running_groups: dict[str, int] = {}  # concurrency group -> attempts running
        self.timers: list[tuple[float, int]] = []  # (when, subject id)
        self.last_journal = self.store.last_journal_id()
        self.executor: Executor | None = None
        self.watcher: Watcher | None = None
        self._watch = watch
        self._slurm_watch: threading.Thread | None = None
        self.started = self.clock()
        # Each chain's time hook (`Chain.period`): the period the clock is in, by chain.
        self.periods = {c.name: c.period(self.started) for c in chains() if c.period is not None}
        self._next_period_check = self.started
        self._status_cache: tuple[float, str] = (float("-inf"), "")
        self.loop_beat = time.monotonic()  # each loop turn (the metrics' heartbeat age)
        self.watcher_lag = Lag()

    @staticmethod
    def _load_machines(config: Config) -> dict[str, StateMachine]:
        return load_configured(config)

    # -- the Env that conditions and callbacks see --------------------------------------

    def subject(self, kind: str, key: str) -> Subject:
        return self.store.subject(kind, key)

    def poke(self, kind: str, key: str) -> None:
        """Ask for another subject to be looked at soon (e.g. a season when one of its
        exposures became ready). Safe from any thread."""
        self.events.put(lambda engine: engine._poke(kind, key))

    def create(self, kind: str, key: str, *, reason: str, data: dict | None = None) -> bool:
        """Create a subject (from a callback, in the engine's thread) and look at it soon."""
        machine = self.machines[kind]
        if not re.match(machine.spec.key_pattern, key):
            raise ValueError(f"{key!r} is not a valid {kind} key (must match {machine.spec.key_pattern})")
        subject, created = self.store.ensure_subject(kind, key, machine.spec.initial, actor="daemon", reason=reason,
                                                     data=data)
        if created:
            self.poke(kind, key)
        return created

    def problem(self, source: str, message: str) -> None:
        self.store.add_problem(source, message)

    def _store_busy(self, waited: float) -> None:
        """Another process holds the state database's write lock: keep waiting (the loop is
        blocked; watchers queue their events, actions keep running), keep systemd's
        watchdog fed, and say so; a problem row is recorded once the lock is ours."""
        self._busy_waited = waited
        log.warning("state database %s: write lock held by another process for %.0f s; waiting",
                    self.config.db, waited)
        for fn in self.on_busy:
            try:
                fn(self, waited)
            except Exception as err:  # noqa: BLE001 - a hook must not end the wait
                log.warning("on_busy hook failed: %s", err)

    def _note_busy(self) -> None:
        if self._busy_waited:
            waited, self._busy_waited = self._busy_waited, 0.0
            self.store.add_problem("store", f"{self.config.db}: the write lock was held by another process; "
                                   f"the daemon waited {waited:.0f} s for it and carried on")

    def _poke(self, kind: str, key: str) -> None:
        subject = self.store.find_subject(kind, key)
        if subject is None:
            return
        # Something it waits for may have happened: a polling action looks again now.
        for attempt in self.store.attempts(subject.id, entry=subject.entry, status=(AttemptStatus.WAITING,)):
            self.store.update_attempt(attempt.id, not_before=self.clock())
        self.evaluate(subject.id)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Open for business: recover from the last run, start executor and watchers."""
        self.store.heartbeat("starting", started=self.started)
        self.recover_attempts()
        # The last daemon's Slurm jobs (its HTEX blocks, its steps' blocks) outlive it: none of
        # them may run beside what this daemon starts.
        self.cancel_slurm_jobs(slurm.tag_of(self.config.db), "left by the last daemon")
        self.executor = Executor(self.config.executor, self.config.work_dir / "parsl",
                                 slurm_comment=slurm.daemon_comment(self.config.db)
                                 if self.config.executor.uses_slurm else None)
        self._check_watch_kinds()
        self.recheck_files(intake.to_recheck(self.store, self.config))
        for s in self.store.subjects():
            if not self.machines.get(s.kind) or not self.machines[s.kind].state(s.state).terminal:
                self.evaluate(s.id)
        if self._watch and self.config.watch:
            self.start_watcher()
        self._follow_slurm()
        for fn in self.on_started:
            fn(self)

    def start_watcher(self) -> None:
        from autoproc.watch import Watcher

        def emit(ready: FileReady) -> None:
            if ready.how == "closed":  # close -> event; quiet and scanned files wait by design
                self.watcher_lag.observe(ready.root, time.time() - ready.mtime)
            self.events.put(intake.Arrival(ready.root, ready.kind, ready.path, ready.size, ready.mtime))

        def problem(where: str, message: str) -> None:
            log.warning("watch %s: %s", where, message)
            self.events.put(("problem", f"watch:{where}", message))

        self.watcher = Watcher(self.config.watch, emit, on_problem=problem)
        self.watcher.start(wait_for_scan=False)

    def run(self) -> None:
        """The loop. Returns when `stop()` was called (e.g. on SIGTERM)."""
        next_operator = next_reaper = next_beat = 0.0
        next_reconcile = self.clock() + self.config.reconcile_minutes * 60
        while not self.stopping.is_set():
            self.loop_beat = time.monotonic()
            now = self.clock()
            wait = min(OPERATOR_POLL_SECONDS, max(0.0, (self.timers[0][0] - now) if self.timers else 1.0))
            try:
                event = self.events.get(timeout=wait)
            except queue.Empty:
                event = None
            if event is not None:
                self.handle(event)
            now = self.clock()
            if now >= next_operator:
                self.check_operator_changes()
                next_operator = now + OPERATOR_POLL_SECONDS
            self.fire_timers(now)
            if now >= next_reaper:
                self.reap(now)
                next_reaper = now + REAPER_SECONDS
            if now >= next_beat:
                self.store.heartbeat(self.status_line())
                next_beat = now + HEARTBEAT_SECONDS
            for fn in self.on_loop:
                fn(self)
            self._note_busy()
            rollover = self.check_rollover(now)
            if self.watcher is not None and (rollover or now >= next_reconcile):
                threading.Thread(target=self.watcher.reconcile, name="reconcile", daemon=True).start()
                next_reconcile = now + self.config.reconcile_minutes * 60

    def check_rollover(self, now: float) -> bool:
        """True once when the clock crosses into a new period of a chain (DEEP: a new observing
        night). Events are hints; the reconcile scan then run finds whatever the last period's
        watchers missed (what a file belongs to always comes from the file, never this clock)."""
        if now < self._next_period_check:
            return False
        self._next_period_check = now + PERIOD_CHECK_SECONDS  # a hook may be slow (DEEP's reads TAI through astropy)
        rolled = False
        for c in chains():
            if c.period is None:
                continue
            period = c.period(now)
            if period != self.periods[c.name]:
                log.info("%s rollover %s -> %s: reconcile scan", c.name, self.periods[c.name], period)
                self.periods[c.name] = period
                rolled = True
        return rolled

    def stop(self) -> None:
        self.stopping.set()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop watchers, kill running children (their attempts become `interrupted`),
        record what finished, and close."""
        self.stopping.set()
        deadline = time.monotonic() + (timeout or self.config.stop_timeout_seconds)
        if self.watcher is not None:
            self.watcher.stop()
        while self.running and time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(event, AttemptDone | ChildStarted | Progress):
                self.handle(event)
        # Kill every still-running attempt's children at once: the stop must stay bounded.
        process.kill_groups([g for a in self.running for g in _groups(self.store.attempt(a))], grace=2.0)
        for attempt_id in list(self.running):
            self.store.update_attempt(attempt_id, status=AttemptStatus.INTERRUPTED, ended=self.clock(),
                                      result=_with_progress(self.store.attempt(attempt_id), {
                                          "reason": "daemon stopped before the action returned", "clean_stop": True}))
        self.running.clear()
        stopper = None
        if self.executor is not None and not self.running:
            stopper = threading.Thread(target=self.executor.shutdown, daemon=True)
            stopper.start()
        # The process exits right after this: its blocks and its steps' jobs are cancelled
        # here, not left to the executor's shutdown thread.
        self.cancel_slurm_jobs(slurm.tag_of(self.config.db), "the daemon stopped")
        if stopper is not None:
            # What is left of the stop budget lets Parsl stop its interchange (an HTEX one
            # outlives an exit); the next daemon stops any that did not (executor.py).
            stopper.join(max(0.0, deadline - time.monotonic()))
        self.store.heartbeat("stopped")
        self.store.close()

    # -- events -------------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        if isinstance(event, intake.Arrival):
            self.on_arrival(event)
        elif isinstance(event, AttemptDone):
            self.on_attempt_done(event)
        elif isinstance(event, ChildStarted):
            c = event.child
            self.store.update_attempt(event.attempt_id, pid=c.pid, pgid=c.pgid, host=c.host, argv=list(c.argv),
                                      log=c.log)
        elif isinstance(event, Progress):
            # Kept in the running attempt's result, which a restart keeps (recover_attempts).
            attempt = self.store.attempt(event.attempt_id)
            notes = [*attempt.progress, event.note]
            self.store.update_attempt(event.attempt_id, result={**attempt.result, "progress": notes})
        elif isinstance(event, tuple) and event and event[0] == "problem":
            self.store.add_problem(event[1], event[2])
        elif isinstance(event, Reload):
            self.reload()
        elif callable(event):
            event(self)

    def _check_watch_kinds(self) -> None:
        """A watch root of a kind nobody provides is the configuration's fault: say so (its
        files are kept as environment verdicts, examined again once it is fixed)."""
        try:
            intake.check_watch_kinds(self.config)
        except AutoprocError as err:
            self.store.add_problem("config", str(err))

    def recheck_files(self, arrivals: list[intake.Arrival]) -> None:
        """Examine bad files again (environment verdicts after a reload or restart, or those
        an operator sent back), through intake like new arrivals."""
        if arrivals:
            log.info("examining %d bad file(s) again", len(arrivals))
        for arrival in arrivals:
            self.on_arrival(arrival)

    def on_arrival(self, arrival: intake.Arrival) -> None:
        accepted = intake.accept(self.store, self.config, self.machines, arrival)
        if accepted is None:
            return
        subject = accepted.subject
        trigger = self.machines[subject.kind].spec.on_intake
        if trigger and not subject.held and trigger in self.machines[subject.kind].triggers_from[subject.state]:
            self.fire(subject, trigger, reason=f"new file {arrival.path}")
        if accepted.changed:
            # A file seen before changed (e.g. an incomplete raw got the rest): a polling action
            # waiting for it looks again now, not at its next poll.
            self._poke(subject.kind, subject.key)
        else:
            self.evaluate(subject.id)

    def on_attempt_done(self, done: AttemptDone) -> None:
        if self.running.pop(done.attempt_id, None) is None:
            return  # already given up on (reaped or shut down)
        attempt = self.store.attempt(done.attempt_id)
        st = self._state_of_attempt(attempt)
        if st.limit:
            self.running_groups[st.limit] = max(0, self.running_groups.get(st.limit, 1) - 1)
        result = done.result
        if result.executor_lost:
            # The process that ran the action is gone (e.g. a lost HTEX worker), but the children it
            # started live on in their own groups: stop them first, so a retry never runs beside them.
            process.kill_groups(_groups(attempt), grace=2.0)
        if self.config.actions_start_slurm_jobs:
            # Nor beside the Slurm jobs its step left (a bps killed from outside never cancels its block).
            self.cancel_slurm_jobs(slurm.attempt_comment(self.config.db, done.attempt_id), "its attempt ended")
        now = self.clock()
        ended = decision.ended(result, attempt, self._policy(st), now, stopping=self.stopping.is_set())
        recorded = _with_progress(attempt, result.to_json())
        if ended.clean_stop:
            recorded["clean_stop"] = True
        fields: dict[str, Any] = {"ended": now, "result": recorded, "status": ended.status}
        if ended.not_before is not None:
            fields["not_before"] = ended.not_before
        if result.ran_on.get("host"):
            fields["host"] = result.ran_on["host"]
        log_path = attempt.log
        if not attempt.pid:
            # The action ran in another process (HTEX): its children are known from disk.
            children = _children_on_disk(attempt)
            if children:
                c = children[-1]
                fields.update(pid=c["pid"], pgid=c["pgid"], host=c["host"], argv=c["argv"], log=c["log"])
                log_path = c["log"]
        exit_status = _child_exit(log_path)
        if exit_status is not None:
            fields["exit_status"] = exit_status
        if ended.problem:
            # The environment's fault (a full disk, a database away): a person may need to act.
            self.store.add_problem(ended.problem, f"{subject_ref(self.store, attempt)}: {result.reason}")
        self.store.update_attempt(done.attempt_id, **fields)
        self.looked.add((attempt.subject_id, attempt.entry))
        self.evaluate(attempt.subject_id)
        self._dispatch_waiting(st.limit)

    # -- deciding -----------------------------------------------------------------------

    def evaluate(self, subject_id: int) -> None:
        """Look at one subject and do the next thing it needs, if any (autoproc.decision decides)."""
        subject = self.store.subject_by_id(subject_id)
        machine = self.machines.get(subject.kind)
        if machine is None or subject.held:
            return
        st = machine.state(subject.state)
        if st.terminal:
            return
        now = self.clock()
        attempts = self.store.attempts(subject.id, entry=subject.entry) if st.action else []
        if st.deadline:
            after = self.config.deadlines.get(f"{subject.kind}.{subject.state}", st.deadline.after)
            # (Past due and not looked at yet: the attempt's end evaluates it again.)
            due = decision.deadline(subject.state, st, subject.entered, after, now, attempts=attempts,
                                    looked=(subject.id, subject.entry) in self.looked)
            if isinstance(due, decision.Later):
                self.schedule(due.when, subject.id)
            elif isinstance(due, decision.Expire):
                self.fire(subject, st.deadline.trigger, reason=due.reason)
                return
        if st.action:
            self._advance_action(subject, st, attempts, now)
            return
        for trigger in st.auto:
            if self.fire(subject, trigger, reason="conditions met", quiet=True):
                return

    def _advance_action(self, subject: Subject, st: StateSpec, attempts: list[Attempt], now: float) -> None:
        """Apply what autoproc.decision says the subject's action needs next."""
        step = decision.next_step(attempts, st, self._policy(st), now)
        if isinstance(step, decision.Busy):
            return
        if isinstance(step, decision.HoldSubject):
            self.store.update_attempt(step.attempt.id, applied=1)
            self.hold(subject, step.reason, step.attempt.result)
        elif isinstance(step, decision.Apply):
            self.apply(subject, step.attempt)
        elif isinstance(step, decision.Later):
            self.schedule(step.when, subject.id)
        elif isinstance(step, decision.RunAgain):
            self.dispatch(subject, st, reuse=step.attempt)
        elif isinstance(step, decision.GiveUp):
            self.fire(subject, self.machines[subject.kind].spec.on_failure, reason=step.reason,
                      evidence=step.evidence)
        else:
            self.dispatch(subject, st, try_number=step.try_number, adjust=step.adjust, recover=step.recover,
                          previous=step.previous)

    def _policy(self, st: StateSpec) -> decision.Policy:
        return decision.Policy.of(self.config, st)

    def _state_of_attempt(self, attempt: Attempt) -> StateSpec:
        subject = self.store.subject_by_id(attempt.subject_id)
        return self.machines[subject.kind].state(attempt.stage)

    def schedule(self, when: float, subject_id: int) -> None:
        heapq.heappush(self.timers, (when, subject_id))

    def fire_timers(self, now: float) -> None:
        due = set()
        while self.timers and self.timers[0][0] <= now:
            due.add(heapq.heappop(self.timers)[1])
        for subject_id in due:
            self.evaluate(subject_id)

    # -- acting -------------------------------------------------------------------------

    def dispatch(self, subject: Subject, st: StateSpec, *, try_number: int = 1, adjust: dict | None = None,
                 recover: str | None = None, reuse: Attempt | None = None, previous: dict | None = None) -> None:
        if self.stopping.is_set() or self.executor is None:
            return
        if st.limit and self.running_groups.get(st.limit, 0) >= self.limit(st.limit):
            return  # picked up by _dispatch_waiting when a slot frees
        if reuse is not None:
            attempt_id = reuse.id
            try_number = reuse.try_number
            previous = reuse.result
        else:
            attempt_id = self.store.add_attempt(subject, subject.state, step="recover" if recover else st.step,
                                                try_number=try_number)
        workdir = (self.config.work_dir / safe_component(subject.kind) / safe_component(subject.key)
                   / f"{attempt_id:06d}-{subject.state}")
        n = 1
        while reuse is None and workdir.exists():
            # The directory of an attempt the store forgot (restored from an older backup, whose
            # attempt ids start again): kept as evidence, never mixed with this attempt's files.
            workdir = workdir.with_name(f"{attempt_id:06d}-{subject.state}.{n}")
            n += 1
        try:
            process.make_dirs(workdir)
        except OSError as err:
            # E.g. the work directory's disk is full: not the step's fault, and not a reason
            # to stop the loop. The attempt waits (no retry budget spent) and is tried again.
            reason = f"cannot create the attempt directory {workdir}: {err.strerror or err}"
            self.store.update_attempt(attempt_id, status=AttemptStatus.WAITING, ended=self.clock(),
                                      not_before=self.clock() + self.config.space_retry_seconds,
                                      result=ActionResult(ResultKind.WAIT, reason).to_json())
            self.store.add_problem("work_dir", reason)
            self.schedule(self.clock() + self.config.space_retry_seconds, subject.id)
            return
        # Waiting files (valid but incomplete) too: the action decides how long they may wait.
        files = self.store.files(subject_id=subject.id, status=("ready", "waiting"))
        ctx = actions.ActionContext(
            subject=subject, stage=subject.state, attempt_id=attempt_id, try_number=try_number, workdir=workdir,
            config=self.config, adjust=adjust or {}, timeout=st.timeout, files=files, previous=previous or {},
            notify=self._child_started, on_progress=self._progress, stopping=self.stopping)
        name = recover or st.action
        if name is None:
            raise AutoprocError(f"{subject.ref}: state {subject.state} has no action to dispatch")
        fn = actions.ACTIONS[name]
        self.store.update_attempt(attempt_id, status=AttemptStatus.RUNNING, started=self.clock(), cwd=str(workdir),
                                  not_before=None)
        future = self.executor.submit(fn, ctx)
        self.running[attempt_id] = future
        if st.limit:
            self.running_groups[st.limit] = self.running_groups.get(st.limit, 0) + 1
        future.add_done_callback(functools.partial(self._attempt_done, attempt_id))

    # From the executor's threads: handed to the loop as events.
    def _attempt_done(self, attempt_id: int, future: Future[ActionResult]) -> None:
        self.events.put(AttemptDone(attempt_id, _result_of(future)))

    def _child_started(self, attempt_id: int, child: process.Child) -> None:
        self.events.put(ChildStarted(attempt_id, child))

    def _progress(self, attempt_id: int, note: str) -> None:
        self.events.put(Progress(attempt_id, note))

    def limit(self, group: str) -> int:
        """Attempts of a concurrency group allowed at once: config `limits`, else the
        machines' default, else unlimited."""
        if group in self.config.limits:
            return self.config.limits[group]
        defaults = [m.spec.limits[group] for m in self.machines.values() if group in m.spec.limits]
        return min(defaults) if defaults else 10**9

    def _dispatch_waiting(self, group: str | None) -> None:
        """A slot in `group` came free: look at subjects that wait for one."""
        if not group:
            return
        for kind, machine in self.machines.items():
            for state, st in machine.spec.states.items():
                if st.limit != group:
                    continue
                for s in self.store.subjects(kind, state, held=False):
                    if self.running_groups.get(group, 0) >= self.limit(group):
                        return
                    if not self.store.attempts(s.id, entry=s.entry, status=ATTEMPT_ACTIVE):
                        self.evaluate(s.id)

    def apply(self, subject: Subject, attempt: Attempt) -> None:
        """Fire the trigger a finished action asked for, and mark its attempt applied."""
        result = ActionResult.from_json(attempt.result)
        trigger = result.trigger or ""
        try:
            moved = self.fire(subject, trigger, reason=result.reason or f"{attempt.stage} finished",
                              evidence={"attempt": attempt.id, **result.evidence},
                              data=result.data or None, consume=result.consume, bad=result.bad or None, strict=True)
        except MachineError as err:
            self._refuse(subject, attempt, f"bad outcome: {err}")
            return
        self.store.update_attempt(attempt.id, applied=1)
        if not moved:
            self._refuse(subject, attempt, f"{trigger!r} was refused by its conditions")

    def _refuse(self, subject: Subject, attempt: Attempt, reason: str) -> None:
        """The outcome of a successful action cannot be applied: its attempt fails for good."""
        self.store.update_attempt(attempt.id, status=AttemptStatus.FAILED,
                                  result={**attempt.result, "kind": ResultKind.FAIL.value, "reason": reason})
        self.evaluate(subject.id)

    def fire(self, subject: Subject, trigger: str, *, reason: str = "", evidence: dict | None = None,
             data: dict | None = None, consume: Sequence[str] = (), bad: dict | None = None, quiet: bool = False,
             strict: bool = False, actor: str = "daemon") -> bool:
        """Fire `trigger` through the machine and commit the change (compare-and-set).
        Returns whether the subject moved."""
        machine = self.machines[subject.kind]
        try:
            dest = machine.fire(subject, trigger, self)
        except MachineError:
            if strict:
                raise
            if not quiet:
                log.warning("%s: trigger %s is not valid in state %s", subject.ref, trigger, subject.state)
            return False
        if dest is None:
            return False
        try:
            after = self.store.transition(subject, dest, trigger=trigger, actor=actor, reason=reason,
                                          evidence=evidence, data=data, consume_files=list(consume), bad_files=bad)
        except Conflict:
            # An operator got there first; look again with what is stored now.
            self.evaluate(subject.id)
            return False
        self.last_journal = max(self.last_journal, after.entry or 0)
        change = Change(after, subject.state, dest, trigger, actor, reason, evidence or {})
        self.announce(change, machine.after_callbacks(subject.state, trigger, dest))
        self.evaluate(after.id)
        return True

    def announce(self, change: Change, callbacks: Sequence[str] = ()) -> None:
        for name in callbacks:
            try:
                actions.CALLBACKS[name](change.to_json(), self)
            except Exception as err:  # a callback must never stop the engine
                self.store.add_problem(f"callback:{name}", f"{type(err).__name__}: {err}")
        for listener in self.listeners:
            try:
                listener(change)
            except Exception as err:
                self.store.add_problem("listener", f"{type(err).__name__}: {err}")

    def hold(self, subject: Subject, reason: str, evidence: dict | None = None) -> None:
        try:
            self.store.update(subject, held=reason, trigger="hold", actor="daemon", reason=reason,
                              evidence=evidence)
        except Conflict:
            return
        self.announce(Change(self.store.subject_by_id(subject.id), subject.state, subject.state, "hold",
                             "daemon", reason, evidence or {}))

    # -- operators, crashes and hangs ---------------------------------------------------

    def check_operator_changes(self) -> None:
        """Pick up what the CLI wrote (overrides, holds, new subjects, files sent back) within a second."""
        self.recheck_files(intake.requested_rechecks(self.store, self.config))
        newest = self.store.last_journal_id()
        if newest <= self.last_journal:
            return
        touched = []
        for row in self.store.journal(since=self.last_journal):
            if row["actor"] != "daemon":
                touched.append(row["subject_id"])
                # Callbacks, hooks and the report hear about operators' changes as about the
                # daemon's (e.g. an exposure set to `ready` pokes its season).
                subject = self.store.subject_by_id(row["subject_id"])
                callbacks = []
                if row["from_state"] and subject.kind in self.machines:
                    callbacks = self.machines[subject.kind].after_callbacks(row["from_state"], row["trigger"],
                                                                            row["to_state"])
                self.announce(Change(subject, row["from_state"], row["to_state"], row["trigger"], row["actor"],
                                     row["reason"], row["evidence"]), callbacks)
        self.last_journal = newest
        for subject_id in dict.fromkeys(touched):
            subject = self.store.subject_by_id(subject_id)
            for attempt in self.store.attempts(subject_id, status=ATTEMPT_ACTIVE):
                if attempt.entry != subject.entry and attempt.id in self.running:
                    # The operator moved the subject on: its running step is no longer wanted.
                    self.kill_attempt(attempt.id)
                    self.running.pop(attempt.id, None)
                    self.store.update_attempt(attempt.id, status=AttemptStatus.SUPERSEDED, ended=self.clock(),
                                              result={"reason": "the subject was moved by an operator"})
            self.evaluate(subject_id)

    def _follow_slurm(self) -> None:
        """Watch this store's Slurm jobs while the configuration uses Slurm (at the start,
        and from a reload that turned it on)."""
        if self.config.uses_slurm and (self._slurm_watch is None or not self._slurm_watch.is_alive()):
            self._slurm_watch = threading.Thread(target=self._watch_slurm, name="slurm-watch", daemon=True)
            self._slurm_watch.start()

    def _watch_slurm(self) -> None:
        """Beside the loop (squeue can take seconds when the controller is down): what keeps
        this store's Slurm jobs from starting, handed to the loop as an event. Ends when a
        reload turned Slurm off."""
        tag = slurm.tag_of(self.config.db)
        while not self.stopping.wait(SLURM_POLL_SECONDS) and self.config.uses_slurm:
            try:
                jobs = slurm.jobs(tag)
                error = None
            except slurm.SlurmError as err:
                jobs, error = [], f"the Slurm controller does not answer: {err}"
            waits: dict[str, str] = {}
            by_owner: dict[str, list[slurm.Job]] = {}
            for job in jobs:
                by_owner.setdefault(job.comment.removeprefix(tag + ":"), []).append(job)
            for owner, owned in by_owner.items():
                reason = slurm.waiting_reason(owned)
                if reason and not (owner == "htex" and any(j.state == "RUNNING" for j in owned)):
                    waits[owner] = reason
            self.events.put(lambda e, waits=waits, error=error: e.note_slurm_waits(waits, error))

    def note_slurm_waits(self, waits: dict[str, str], error: str | None) -> None:
        """Mark running attempts whose Slurm jobs cannot start (`slurm_wait` in their result,
        shown by `show`, and one problem row per new reason); clear it once they can. A
        pending HTEX block holds up every running action; a step's block its own attempt."""
        for attempt_id in list(self.running):
            reason = error or waits.get(f"a{attempt_id}") or waits.get("htex")
            attempt = self.store.attempt(attempt_id)
            if attempt.result.get("slurm_wait") == reason:
                continue
            result = {k: v for k, v in attempt.result.items() if k != "slurm_wait"}
            if reason:
                result["slurm_wait"] = reason
                self.store.add_problem("slurm", f"{subject_ref(self.store, attempt)} waits: {reason}")
            self.store.update_attempt(attempt_id, result=result)

    def cancel_slurm_jobs(self, prefix: str, why: str) -> list[str]:
        """scancel this store's jobs whose comment starts with `prefix` (see autoproc.slurm);
        only where the configuration uses Slurm. A controller that does not answer is a problem
        recorded, not a reason to stop."""
        if not self.config.uses_slurm:
            return []
        try:
            ids = slurm.cancel_tagged(prefix)
        except slurm.SlurmError as err:
            self.store.add_problem("slurm", f"could not cancel the jobs {prefix}* ({why}): {err}")
            return []
        if ids:
            log.info("cancelled Slurm jobs %s (%s): %s", prefix, why, " ".join(ids))
        return ids

    def kill_attempt(self, attempt_id: int) -> bool:
        """Kill every process group the attempt started on this host."""
        return bool(process.kill_groups(_groups(self.store.attempt(attempt_id)), grace=2.0))

    def recover_attempts(self) -> None:
        """At start: attempts the last daemon left running are interrupted. Their child
        process groups (if any survived) are killed; the step runs again, or its
        `recover` action looks for evidence first."""
        for attempt in self.store.attempts(status=ATTEMPT_ACTIVE):
            killed = bool(process.kill_groups(_groups(attempt), grace=2.0))
            self.store.update_attempt(attempt.id, status=AttemptStatus.INTERRUPTED, ended=self.clock(), result={
                **attempt.result, "reason": "the daemon stopped while this ran",
                "child_killed": killed, "child_exit": _child_exit(attempt.log)})

    def reap(self, now: float) -> None:
        """Attempts hung past their timeout (the action itself, not a child) are given up."""
        for attempt_id in list(self.running):
            attempt = self.store.attempt(attempt_id)
            st = self._state_of_attempt(attempt)
            result = decision.hung(attempt, st.timeout, now)
            if result is None:
                continue
            self.kill_attempt(attempt_id)
            self.running.pop(attempt_id, None)
            if st.limit:
                self.running_groups[st.limit] = max(0, self.running_groups.get(st.limit, 1) - 1)
            ended = decision.ended(result, attempt, self._policy(st), now, stopping=False)
            self.store.update_attempt(attempt_id, status=ended.status, ended=now, not_before=ended.not_before,
                                      result=result.to_json())
            self.evaluate(attempt.subject_id)

    def reload(self) -> None:
        """SIGHUP: read the configuration again; a bad file is reported and the old kept."""
        from autoproc.config import load_config

        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
            self._load_machines(new)
        except Exception as err:  # noqa: BLE001 - any failure keeps the running config
            message = f"reload refused, keeping the running configuration: {err}"
            log.error("%s", message)
            self.store.add_problem("config", message)
            return
        old = self.config
        kept = [name for name in RESTART_ONLY if getattr(new, name) != getattr(old, name)]
        if kept:
            new = new.model_copy(update={name: getattr(old, name) for name in kept})
        self.config = new
        self.machines = self._load_machines(new)
        if new.watch != old.watch and self._watch:
            if self.watcher is not None:
                self.watcher.stop()
            self.watcher = None
            if new.watch:
                self.start_watcher()
        self._follow_slurm()
        message = f"reloaded {self.config_path}"
        if kept:
            message += f"; {', '.join(kept)} changed and take effect at the next start (systemctl restart autoproc)"
        self.store.add_problem("config", message)
        log.info("%s", message)
        self._check_watch_kinds()
        self.recheck_files(intake.to_recheck(self.store, self.config))

    def status_line(self) -> str:
        """One line for systemd's STATUS= and the heartbeat (the counts are cached a few
        seconds: they scan every subject)."""
        now = time.monotonic()
        if now - self._status_cache[0] > HEARTBEAT_SECONDS:
            counts: dict[str, int] = {}
            for _kind, state, n in self.store.counts():
                counts[state] = counts.get(state, 0) + n
            summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no subjects"
            self._status_cache = (now, summary)
        return f"{self._status_cache[1]}; {len(self.running)} running"


class Lag:
    """Seconds from a file's close to the watcher's event, summed per watched root (metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_root: dict[str, tuple[float, int]] = {}

    def observe(self, root: str, seconds: float) -> None:
        with self._lock:
            total, count = self.by_root.get(root, (0.0, 0))
            self.by_root[root] = (total + max(0.0, seconds), count + 1)

    def snapshot(self) -> dict[str, tuple[float, int]]:
        with self._lock:
            return dict(self.by_root)


def _children_on_disk(attempt: Attempt) -> list[dict]:
    """The children an attempt started, from the `*.child.json` files `ctx.run` writes."""
    if not attempt.cwd:
        return []
    return actions.recorded_children(Path(attempt.cwd))


def _groups(attempt: Attempt) -> set[int]:
    """The process groups an attempt started on this host (killable from here)."""
    groups = {c["pgid"] for c in _children_on_disk(attempt) if c.get("host") == socket.gethostname()}
    if attempt.pgid and attempt.host in (None, socket.gethostname()):
        groups.add(attempt.pgid)
    return groups


def _child_exit(log: str | None) -> int | None:
    """The exit status the child logging to `log` left (process.run's wrapper writes it)."""
    return process.recorded_exit(log + ".exit") if log else None


def _with_progress(attempt: Attempt, result: dict[str, Any]) -> dict[str, Any]:
    """`result` keeping the progress the attempt reported while it ran."""
    return {**result, "progress": attempt.progress} if attempt.progress else result


def _result_of(future: Future[ActionResult]) -> ActionResult:
    try:
        return future.result()
    except Exception as err:  # the executor itself failed (e.g. a lost HTEX worker)
        return decision.executor_lost(err)


def subject_ref(store: Store, attempt: Attempt) -> str:
    return store.subject_by_id(attempt.subject_id).ref
