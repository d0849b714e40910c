"""DEEP nights through a real `autoproc daemon` on the real middleware: raws streamed into a
watched directory, ingest, bias, flat (one band borrowed from the neighbour night), DRP,
a template coadd and difference imaging, all judged from the Butler; a transient memory
failure retried, a permanent failure ending in `failed`, and a kill -9 during `bps submit`.

Step lists are cut to what the assertions need (the DEEP defaults run every DRP step):
flat without the optional crosstalk step0, DRP up to the warps, diff step4a."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

pytest.importorskip("lsst.daf.butler")

from autoproc.sim.deep.flaky import FAIL_DIR_ENV, set_failure, slow_down  # noqa: E402
from autoproc.store import Store  # noqa: E402
from conftest import ancestors, argv_of, child_env, states, wait_for  # noqa: E402

pytestmark = pytest.mark.middleware

ROOT = Path(__file__).resolve().parents[2]
N1, N2 = "20240601", "20240602"
FAST_STEPS = {"bias": ["step1", "step2"], "flat": ["step1", "step2", "step3"],
              "drp": ["step1", "step2a", "step2b", "step2c", "step2d", "step3a"], "diff_drp": ["step4a"]}


def deep_config(write_config, tmp_path: Path, executor: dict | None = None, **deep):
    raws = tmp_path / "raws"
    raws.mkdir(exist_ok=True)
    settings = {"mode": "pipetask", "ingest_quiet_seconds": 1.0, "steps": FAST_STEPS, **deep}
    config, path = write_config(
        machines_dir=str(ROOT / "statemachines"), kinds=["night", "template"], **({"executor": executor} if executor else {}),
        watch=[{"name": "raws", "path": str(raws), "kind": "raw", "patterns": ["*.fits"], "mode": "inotify",
                "quiet_seconds": 0.5}],
        deep=settings)
    return config, path, raws


def deep_init(path: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "deep", "init"],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def stream(raws: Path, night: str, *args: str) -> subprocess.Popen:
    """The simulator's night generator, writing into the watched directory over time."""
    return subprocess.Popen([sys.executable, "-m", "autoproc.sim.deep.night", "--out", str(raws),  # noqa: S603
                             "--night", night, "--interval", "0.05", *args],
                            stdout=subprocess.DEVNULL, env=child_env())


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), *args],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), check=False)


def show(path: Path, kind: str, key: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "show", kind, key,  # noqa: S603
                           "--json"], capture_output=True, text=True, env=child_env(), check=True)
    return json.loads(proc.stdout)


def settled(config, expect: dict[str, str], kind: str = "night", daemon=None):
    """Wait condition: every subject in its expected state; a subject in `failed` that
    was not expected there fails the test at once, with what the daemon said."""
    now = states(config, kind)
    for key, state in now.items():
        if state == "failed" and expect.get(key) != "failed":
            pytest.fail(f"{kind}/{key} failed unexpectedly:\n{daemon.output()[-3000:] if daemon else ''}")
    return all(now.get(k) == s for k, s in expect.items())


def bias_step1_job_done(config, night: str) -> Callable[[], bool]:
    """Wait condition: a bps job of the night's bias step1 submit has finished its quantum."""
    attempts = config.work_dir / "deep"

    def done() -> bool:
        logs = attempts.glob(f"DEEP_{night}_bias_DEEP-bias_step1_*/submit/logs/**/*.stderr")
        return any("quanta successfully" in p.read_text(errors="replace") for p in logs)

    return done


def assert_bias_once(b, night: str) -> str:
    """The night's 4-zero, 2-CCD bias chain holds every output once: none lost, none twice."""
    chain = f"DEEP/{night}/bias"
    for dtype, n in (("cpBiasIsr_metadata", 8), ("cpBiasIsrExp", 8), ("bias", 2)):
        refs = b.query_datasets(dtype, collections=chain, find_first=False, explain=False)
        assert len(refs) == n and len({r.dataId for r in refs}) == n, dtype
    return chain


def mock_get(butler, ref):
    import lsst.pipe.base.tests.mocks  # noqa: F401  (resolves the _mock_* storage classes)

    return butler.get(ref)


def test_two_nights_to_done_with_borrowed_flat_and_diff(write_config, tmp_path, daemon_factory):
    config, path, raws = deep_config(write_config, tmp_path, templates={"allSky": [N1, N2]}, nightly_coadd=True)
    assert "template allSky: created" in deep_init(path)
    daemon = daemon_factory(path).start()
    science = ["--science", "VR:2", "--science", "g:1", "--n-bias", "2", "--flats", "2"]
    # N2 (no g flat) comes first, so it must wait for N1's flats: N1's certification wakes it.
    assert stream(raws, N2, *science, "--missing-flat-band", "g").wait(60) == 0
    wait_for(lambda: states(config, "night").get(N2) == "flat", timeout=60, interval=0.1, what="N2 at its flats")
    assert stream(raws, N1, *science).wait(60) == 0
    wait_for(lambda: settled(config, {N1: "done", N2: "done"}, daemon=daemon), timeout=240, interval=0.5,
             what="both nights done")
    assert states(config, "template") == {"allSky": "done"}

    from lsst.daf.butler import Butler, CollectionType

    from autoproc.deep.calibs import certified

    b = Butler.from_config(str(config.root / "repo"))
    info = b.collections.get_info
    for n in (N1, N2):
        for proc in ("bias", "flat", "drp"):
            assert info(f"DEEP/{n}/{proc}").type is CollectionType.CHAINED
            assert info(f"DEEP/{n}/{proc}/raw").type is CollectionType.TAGGED
        assert info(f"DEEP/{n}/allSky/diff_drp").type is CollectionType.CHAINED
    assert info("DEEP/allSky/coadd").type is CollectionType.CHAINED
    assert info("DEEP/allSky/coadd/warps").type is CollectionType.TAGGED

    # Certified calibrations: each night its own bias; N2's g flat is N1's (borrowed).
    bias = {n: {d["data_id"]["detector"]: d for d in certified(b, f"DEEP/{n}/calib/bias", "bias")} for n in (N1, N2)}
    flat = {n: {(d["data_id"]["detector"], d["data_id"]["physical_filter"].split()[0]): d
                for d in certified(b, f"DEEP/{n}/calib/flat", "flat")} for n in (N1, N2)}
    for n in (N1, N2):
        assert sorted(bias[n]) == [1, 3] and all(d["run"].startswith(f"DEEP/{n}/bias/") for d in bias[n].values())
    assert sorted(flat[N1]) == sorted(flat[N2]) == [(1, "VR"), (1, "g"), (3, "VR"), (3, "g")]
    for (det, band), d in flat[N2].items():
        assert d["run"].startswith(f"DEEP/{N1 if band == 'g' else N2}/flat/"), (det, band, d)

    # Which bias and flat every isr quantum used (MockDataset provenance).
    for n in (N1, N2):
        post = b.query_datasets("postISRCCD", collections=f"DEEP/{n}/drp", explain=False)
        assert len(post) == 3 * 2
        for ref in post:
            q = mock_get(b, ref).quantum
            det, band = ref.dataId["detector"], ref.dataId["band"]
            assert [str(i.dataset_id) for i in q.inputs["bias"]] == [bias[n][det]["id"]]
            assert [str(i.dataset_id) for i in q.inputs["flat"]] == [flat[n][(det, band)]["id"]]
    # The template was made from both nights' warps; each night differenced against it.
    coadds = b.query_datasets("deepCoadd", collections="DEEP/allSky/coadd", explain=False)
    assert coadds
    used = {i.run.split("/")[1] for ref in coadds for i in mock_get(b, ref).quantum.inputs["inputWarps"]}
    assert used == {N1, N2}
    for n in (N1, N2):
        diffs = b.query_datasets("deepDiff_differenceExp", collections=f"DEEP/{n}/allSky/diff_drp", explain=False)
        assert len(diffs) == 3 * 2
        # The nightly coadd: made from that night's warps only.
        nightly = b.query_datasets("deepCoadd", collections=f"DEEP/{n}/coadd", explain=False)
        assert nightly
        assert {i.run.split("/")[1] for ref in nightly for i in mock_get(b, ref).quantum.inputs["inputWarps"]} == {n}
    b.close()

    # What a person sees: the substitution journaled, the raws consumed, nothing bad.
    shown = show(path, "night", N2)
    store = Store(config.db)
    journal = store.journal(store.subject("night", N2).id)
    subs = [s for row in journal for s in row["evidence"].get("substitutions", [])]
    assert [(s["band"], s["source_night"]) for s in subs][-1:] == [("g", int(N1))]
    triggers = [row["trigger"] for row in journal]
    assert triggers.index("need_calibs") < triggers.index("calibs_certified") < triggers.index("flat_done")
    # Back from waiting for the g flat, N2 took its flat steps as done from its step memory.
    (flat_done,) = [row["evidence"]["steps"] for row in journal if row["trigger"] == "flat_done"]
    assert flat_done["step_checks"] == {"checked": 0, "remembered": 3}
    assert flat_done["failed"] == {"step1": 0, "step2": 0, "step3": 0}
    assert store.file_counts() == {"consumed": 9 + 7}
    assert not shown["data"].get("bad_raws")
    # A rerun of N1's flats would leave N2 with N1's old g flat: the dry run says so.
    dry = cli(path, "rerun-from", "night", N1, "flat", "--reason", "bad dome flats", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"night {N2} borrowed this night's flat and keeps the old one" in dry.stdout
    assert f"night {N1} borrowed" not in dry.stdout and states(config, "night") == {N1: "done", N2: "done"}
    store.close()


def test_transient_retry_and_permanent_failure(write_config, tmp_path, daemon_factory):
    fail_dir = tmp_path / "fail"
    night = "20240610"
    config, path, raws = deep_config(write_config, tmp_path, env={FAIL_DIR_ENV: str(fail_dir)},
                                     steps={**FAST_STEPS, "drp": ["step1"]})
    deep_init(path)
    transient = set_failure(fail_dir, "cpBiasIsr", "detector = 3", "builtins.MemoryError")
    set_failure(fail_dir, "calibrate", "detector = 3", "builtins.RuntimeError")
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:1", "--n-bias", "2", "--flats", "1").wait(60) == 0

    store = Store(config.db)

    def memory_failure():
        subject = store.find_subject("night", night)
        return subject and [a for a in store.attempts(subject.id) if a.status == "failed"
                            and a.result.get("kind") == "retry"]

    first = wait_for(memory_failure, timeout=90, interval=0.2, what="a memory-class failure")[0]
    transient.unlink()  # the node had its memory back
    assert first.result["adjust"] == {"request_memory": 4096}
    wait_for(lambda: settled(config, {night: "failed"}, daemon=daemon), timeout=120, interval=0.5,
             what="the night failed in drp")

    shown = show(path, "night", night)
    last = shown["journal"][-1]
    assert (last["from_state"], last["to_state"]) == ("drp", "failed")
    assert "calibrate" in last["reason"] and "detector: 3" in last["reason"].replace("'", "")
    failures = last["evidence"]["failures"]
    assert {(f["task"], f["data_id"]["detector"], f["exception_type"]) for f in failures} == {
        ("calibrate", 3, "RuntimeError")}
    # The bias step was retried with more memory and then succeeded: the night's own bias.
    bias_rows = [r for r in store.journal(store.subject("night", night).id) if r["from_state"] == "bias"]
    assert bias_rows[-1]["trigger"] == "bias_done" and "certified" in bias_rows[-1]["evidence"]
    store.close()


@pytest.mark.slow
def test_kill9_during_bps_submit_then_restart(write_config, tmp_path, daemon_factory):
    night = "20240615"
    config, path, raws = deep_config(write_config, tmp_path, mode="bps", cores=2,
                                     steps={**FAST_STEPS, "drp": ["step1"]})
    deep_init(path)
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:1", "--n-bias", "4", "--flats", "1").wait(60) == 0
    wait_for(bias_step1_job_done(config, night), timeout=120, interval=0.1, what="bps running bias step1")
    daemon.kill9()
    time.sleep(0.5)
    daemon = daemon_factory(path).start()
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=300, interval=0.5, what="done")

    from lsst.daf.butler import Butler

    b = Butler.from_config(str(config.root / "repo"))
    chain = assert_bias_once(b, night)
    runs = [c for c in b.collections.get_info(chain).children if "/DEEP-bias/step1/" in c]
    assert len(runs) >= 2  # the killed submission's RUN was recovered into the chain, then the rest ran
    b.close()
    store = Store(config.db)
    subject = store.subject("night", night)
    assert any(a.status == "interrupted" for a in store.attempts(subject.id))
    store.close()
    # No child of the killed daemon is left.
    assert not [pid for pid in psutil.pids() if _is_bps_of(pid, tmp_path)]


def _is_bps_of(pid: int, tmp_path: Path) -> bool:
    """A `bps` process (or its job's pipetask) working under this test's directory."""
    argv = argv_of(pid)
    return any(Path(a).name in ("bps", "pipetask") for a in argv[:2]) and any(str(tmp_path) in a for a in argv)


@pytest.mark.slow
@pytest.mark.timeout(600)  # three `bps submit`s: ~60 s on a quiet machine, 220 s seen on a busy one
def test_one_bps_job_killed_under_a_running_daemon(write_config, tmp_path, daemon_factory):
    """One Parsl job of the bias step1 `bps submit` (its `pipetask run-qbb`, not bps, not the
    group) is SIGKILLed, as the OOM killer would, while the daemon keeps running: the attempt
    is judged incomplete from the Butler, retried, and the next attempt runs only what is
    missing. A night of zeros only, so bias is the only proc type that runs `bps`."""
    night = "20240616"
    config, path, raws = deep_config(write_config, tmp_path, mode="bps", cores=2)
    deep_init(path)
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0

    def bias_step1_job() -> tuple[int, list[str]] | None:
        """A running job of the first bias step1 submission: a `pipetask run-qbb` below its `bps`."""
        procs = {pid: argv_of(pid) for pid in psutil.pids() if _is_bps_of(pid, tmp_path)}
        submits = {pid for pid, argv in procs.items()
                   if Path(argv[1]).name == "bps" and "DEEP-bias_step1" in " ".join(argv)}
        for pid, argv in procs.items():
            if "run-qbb" in argv and submits & set(ancestors(pid)[1:]):
                return pid, argv
        return None

    pid, argv = wait_for(bias_step1_job, timeout=120, interval=0.05, what="a bps job of bias step1")
    os.kill(pid, signal.SIGKILL)
    assert daemon.proc.poll() is None
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")
    assert daemon.proc.poll() is None  # the daemon stayed up throughout

    from lsst.daf.butler import Butler

    b = Butler.from_config(str(config.root / "repo"))
    chain = f"DEEP/{night}/bias"
    for dtype, n in (("cpBiasIsr_metadata", 8), ("cpBiasIsrExp", 8), ("bias", 2)):
        refs = b.query_datasets(dtype, collections=chain, find_first=False, explain=False)
        assert len(refs) == n and len({r.dataId for r in refs}) == n, dtype  # none lost, none twice
    b.close()

    store = Store(config.db)
    bias = [a for a in store.attempts(store.subject("night", night).id) if a.step == "bias"]
    store.close()
    runs = [(a.status, a.result.get("kind"), a.result.get("evidence", {})) for a in bias]
    step1 = [(status, kind, ev) for status, kind, ev in runs if ev.get("step") == "step1"]
    # The submission whose job was killed: incomplete (its other jobs' quanta kept), retried.
    (killed_status, killed_kind, killed), *later = step1
    assert (killed_status, killed_kind, killed["status"]) == ("failed", "retry", "incomplete"), runs
    assert killed["attempt_dir"] in " ".join(argv)
    done = sum(killed["succeeded"].values())
    assert 0 < done < 8 and killed["failed"] == {"cpBiasIsr": 0}, killed
    # The next attempt ran exactly the quanta the killed job had left, and finished the step.
    assert [(s, k) for s, k, _ in later] == [("succeeded", "outcome")], runs
    assert later[0][2]["status"] == "succeeded" and sum(later[0][2]["expected"].values()) == 8 - done, runs
    assert not [pid for pid in psutil.pids() if _is_bps_of(pid, tmp_path)]


# --- a copy that stalls after its first CCD (issue 10) ----------------------------------------------------

STALL_CCDS = "1,3,4,5"


def stalled_science(raws: Path, night: str, stall: float, expnum: int) -> subprocess.Popen:
    """One science raw without NEXTEND, copied like a network copy that stalls for `stall` s after the
    primary HDU and its first CCD HDU (the simulator's writer, in its own process)."""
    return stream(raws, night, "--n-bias", "0", "--flats", "0", "--science", "g:1", "--detectors", STALL_CCDS,
                  "--no-nextend", "--stall", str(stall), "--start-expnum", str(expnum))


def raws_and_regions(config, expnum: int) -> tuple[list[int], list[int]]:
    from lsst.daf.butler import Butler

    with Butler.from_config(str(config.root / "repo")) as b:
        raws = [int(r.dataId["detector"]) for r in b.query_datasets(
            "raw", collections="DECam/raw/all", where=f"instrument = 'DECam' AND exposure = {expnum}",
            find_first=False, explain=False)]
        regions = [int(r.detector) for r in b.query_dimension_records(
            "visit_detector_region", where=f"instrument = 'DECam' AND visit = {expnum}", explain=False)]
    return sorted(raws), sorted(regions)


@pytest.mark.slow
def test_stalled_copy_waits_for_its_other_ccds(write_config, tmp_path, daemon_factory):
    """The stall (6 s) is far longer than quiet_seconds (0.5 s): the watcher offers the half file,
    intake records it `waiting` (status says why), and the night ingests it only once complete."""
    night, expnum = "20240620", 1_500_000
    config, path, raws = deep_config(write_config, tmp_path, expected_detectors={"object": [1, 3, 4, 5]},
                                     incomplete_grace_seconds=120)
    deep_init(path)
    daemon = daemon_factory(path).start()
    writer = stalled_science(raws, night, 6.0, expnum)
    store = Store(config.db)
    (waiting,) = wait_for(lambda: store.files(status="waiting"), timeout=30, interval=0.05,
                          what="the half-copied raw waiting")
    assert waiting["reason"] == "1 of the 4 CCDs of an OBSTYPE 'object' raw (no NEXTEND); missing CCDNUM 3-5"
    status = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "status", "--json"],  # noqa: S603
                            capture_output=True, text=True, env=child_env(), check=True)
    listed = json.loads(status.stdout)["waiting_files"]
    assert writer.poll() is None, "the copy finished before status was read: the stall is too short here"
    assert [(f["path"], f["reason"]) for f in listed] == [(waiting["path"], waiting["reason"])]
    assert writer.wait(60) == 0
    wait_for(lambda: settled(config, {night: "waiting_calibs"}, daemon=daemon), timeout=60, interval=0.2,
             what="the night ingested (then waiting: it has no zeros)")
    assert raws_and_regions(config, expnum) == ([1, 3, 4, 5], [1, 3, 4, 5])
    journal = store.journal(store.subject("night", night).id)
    (ingest,) = [r for r in journal if r["trigger"] == "ingested"]
    assert ingest["evidence"]["ingested"] == 1 and "incomplete" not in ingest["evidence"]
    assert "replaced" not in ingest["evidence"]
    assert [f["status"] for f in store.files()] == ["consumed"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stalled_copy_ingested_half_first_is_replaced_and_rechecked(write_config, tmp_path, daemon_factory):
    """The grace (0.5 s) runs out during the stall (25 s): the half file goes in with its missing CCDs
    recorded and the night processes it. When the copy completes, the exposure is replaced whole,
    journaled, and the night walks its steps again: DRP then has every CCD of it, each once."""
    night, expnum = "20240621", 1_600_000
    config, path, raws = deep_config(write_config, tmp_path, expected_detectors={"object": [1, 3, 4, 5]},
                                     incomplete_grace_seconds=0.5, steps={**FAST_STEPS, "drp": ["step1"]})
    deep_init(path)
    daemon = daemon_factory(path).start()
    calibs = stream(raws, night, "--n-bias", "1", "--flats", "1", "--science", "g:0", "--detectors", STALL_CCDS)
    assert calibs.wait(60) == 0
    writer = stalled_science(raws, night, 25.0, expnum)
    store = Store(config.db)

    def half_ingested():
        s = store.find_subject("night", night)
        return s is not None and str(expnum) in (s.data.get("missing_detectors") or {})

    wait_for(half_ingested, timeout=60, interval=0.1, what="the half file ingested after the grace")
    assert writer.poll() is None, "the copy finished before the half file was ingested: stall too short here"
    missing = store.subject("night", night).data["missing_detectors"][str(expnum)]
    assert missing["missing"] == [3, 4, 5] and "missing CCDNUM 3-5" in missing["reason"]
    assert raws_and_regions(config, expnum) == ([1], [1])
    assert writer.wait(60) == 0
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon) and not store.files(status=("ready", "waiting")),
             timeout=480, interval=0.5, what="the night done after the replacement")

    # Every CCD's raw once, visit regions for every CCD; nothing missing any more.
    assert raws_and_regions(config, expnum) == ([1, 3, 4, 5], [1, 3, 4, 5])
    subject = store.subject("night", night)
    assert subject.data["missing_detectors"] == {} and subject.data["raws"]["replaced"] == 1
    journal = store.journal(subject.id)
    ingests = [r["evidence"] for r in journal if r["trigger"] == "ingested"]
    first = next(i for i, ev in enumerate(ingests) if "incomplete" in ev)
    (replaced,) = [ev["replaced"] for ev in ingests[first + 1:] if "replaced" in ev]
    assert list(replaced.values()) == [{"exposure": expnum, "before": [1], "after": [1, 3, 4, 5]}]
    assert not subject.data.get("bad_raws")

    # The steps were checked again: DRP ran the new CCDs of that exposure, each once in the chain.
    from lsst.daf.butler import Butler

    with Butler.from_config(str(config.root / "repo")) as b:
        post = b.query_datasets("postISRCCD", collections=f"DEEP/{night}/drp", find_first=False, explain=False,
                                where=f"instrument = 'DECam' AND exposure = {expnum}")
        assert sorted(int(r.dataId["detector"]) for r in post) == [1, 3, 4, 5]
        tagged = b.query_datasets("raw", collections=f"DEEP/{night}/drp/raw", explain=False)
        assert sorted(int(r.dataId["detector"]) for r in tagged) == [1, 3, 4, 5]


# --- rerun-from (issue 10) ----------------------------------------------------------------------------

def chain_runs(b, parent: str) -> list[str]:
    """The RUNs a chain holds (its step RUNs, not the fixed inputs)."""
    from autoproc.deep.collections import DATED_LEAF_RE

    return [c for c in b.collections.get_info(parent).children
            if c.startswith(parent + "/") and DATED_LEAF_RE.match(c.rsplit("/", 1)[-1])]


@pytest.mark.slow
def test_rerun_from_flat_runs_the_flat_steps_again_and_drp_uses_the_new_flats(write_config, tmp_path,
                                                                              daemon_factory):
    night = "20240620"
    config, path, raws = deep_config(write_config, tmp_path, templates={"allSky": [night]})
    deep_init(path)
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:1", "--n-bias", "2", "--flats", "2").wait(60) == 0
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=300, interval=0.5,
             what="the night done")

    from lsst.daf.butler import Butler

    from autoproc.deep.calibs import certified
    from autoproc.deep.collections import SET_ASIDE

    chains = {"bias": f"DEEP/{night}/bias", "flat": f"DEEP/{night}/flat", "drp": f"DEEP/{night}/drp",
              "diff": f"DEEP/{night}/allSky/diff_drp", "template": "DEEP/allSky/coadd"}

    def snapshot() -> tuple[dict[str, list[str]], dict]:
        b = Butler.from_config(str(config.root / "repo"))
        try:
            runs = {p: chain_runs(b, parent) for p, parent in chains.items()}
            flats = {(d["data_id"]["detector"], d["data_id"]["physical_filter"]): d
                     for d in certified(b, f"DEEP/{night}/calib/flat", "flat")}
            return runs, flats
        finally:
            b.close()

    old_runs, old_flats = snapshot()
    assert [len(old_runs[p]) for p in ("flat", "drp", "diff", "template")] == [3, 6, 1, 1] and old_flats

    # The dry run: states in machine order, the RUNs and certifications that would go; nothing changes.
    dry = cli(path, "rerun-from", "night", night, "flat", "--reason", "bad dome flats", "--operator", "ann",
              "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "states to run again, in machine order: flat -> drp -> coadd -> diff" in dry.stdout
    assert "ingesting" not in dry.stdout and "bias ->" not in dry.stdout
    for run in old_runs["flat"] + old_runs["drp"] + old_runs["diff"]:
        assert f"RUN {run} (out of" in dry.stdout
    assert not any(run in dry.stdout for run in old_runs["bias"] + old_runs["template"])
    assert f"certified flat in DEEP/{night}/calib/flat: {len(old_flats)} datasets (decertified)" in dry.stdout
    assert states(config, "night") == {night: "done"} and snapshot() == (old_runs, old_flats)

    # A reason is required.
    assert cli(path, "rerun-from", "night", night, "flat", "--reason", " ").returncode == 2

    real = cli(path, "rerun-from", "night", night, "flat", "--reason", "bad dome flats", "--operator", "ann")
    assert real.returncode == 0, real.stderr
    store = Store(config.db)

    def rerun_done(kind: str, key: str) -> bool:
        s = store.subject(kind, key)
        return s.state == "done" and not (s.data.get("rerun") or {}).get("pending", True)

    wait_for(lambda: rerun_done("night", night), timeout=300, interval=0.5, what="the night done after the rerun")
    assert settled(config, {night: "done"}, daemon=daemon)
    new_runs, new_flats = snapshot()

    # The flat quanta ran again in new RUNs; the old flat, DRP and diff RUNs are out of the
    # chains but kept in the repo, marked; the bias was not redone.
    for proc, n in (("flat", 3), ("drp", 6), ("diff", 1)):
        assert len(new_runs[proc]) == n and not set(new_runs[proc]) & set(old_runs[proc]), proc
    assert new_runs["bias"] == old_runs["bias"] and new_runs["template"] == old_runs["template"]
    b = Butler.from_config(str(config.root / "repo"))
    for run in old_runs["flat"] + old_runs["drp"] + old_runs["diff"]:
        assert b.collections.get_info(run).doc.startswith(SET_ASIDE)
    by_step = {run.split("/")[-2]: run for run in new_runs["flat"]}
    assert sorted(by_step) == ["step1", "step2", "step3"]
    assert len(b.query_datasets("cpFlatIsrExp", collections=by_step["step1"], explain=False)) == 2 * 2
    assert b.query_datasets("flat", collections=by_step["step3"], explain=False)
    # The certified flats are the new ones, and DRP used them (MockDataset provenance).
    assert sorted(new_flats) == sorted(old_flats)
    assert all(d["run"] in new_runs["flat"] for d in new_flats.values())
    assert not {d["id"] for d in new_flats.values()} & {d["id"] for d in old_flats.values()}
    post = b.query_datasets("postISRCCD", collections=chains["drp"], explain=False)
    assert len(post) == 2 and all(r.run in new_runs["drp"] for r in post)
    for ref in post:
        used = [str(i.dataset_id) for i in mock_get(b, ref).quantum.inputs["flat"]]
        assert used == [new_flats[(ref.dataId["detector"], ref.dataId["physical_filter"])]["id"]]
    b.close()

    # The journal: the operator's rerun with what it would set aside, then the daemon's row
    # saying what it set aside and decertified, then the flat and DRP steps again.
    journal = store.journal(store.subject("night", night).id)
    i = next(k for k, r in enumerate(journal) if r["trigger"] == "rerun")
    override_row = journal[i]
    # The actor is who ran the CLI (its real uid); `--operator ann` is journaled as on whose behalf.
    me = pwd.getpwuid(os.getuid()).pw_name
    assert (override_row["actor"], override_row["from_state"], override_row["to_state"]) == (me, "done", "flat")
    assert override_row["evidence"]["on_behalf_of"] == "ann"
    assert override_row["reason"] == "bad dome flats"
    assert override_row["evidence"]["redo"] == ["flat", "drp", "coadd", "diff"]
    assert len(override_row["evidence"]["set_aside"]) == 3 + 6 + 1 + 1
    carried = journal[i + 1]
    assert carried["actor"] == "daemon" and carried["trigger"] == "next_step"
    aside = carried["evidence"]["rerun"]["set_aside"]
    for proc in ("flat", "drp", "diff"):
        assert sorted(aside[chains[proc]]) == sorted(old_runs[proc])
    assert len(carried["evidence"]["rerun"]["decertified"][f"DEEP/{night}/calib/flat"]) == len(old_flats)
    after = [r["trigger"] for r in journal[i + 1:]]
    assert after.count("flat_done") == 1 and after.count("drp_done") == 1 and after.count("diffed") == 1
    assert "bias_done" not in after

    # The template was built from the old warps; rerun from coadding, it is built from the new ones.
    real = cli(path, "rerun-from", "template", "allSky", "coadding", "--reason", "new warps", "--operator", "ann")
    assert real.returncode == 0, real.stderr
    assert f"RUN {old_runs['template'][0]} (out of DEEP/allSky/coadd)" in real.stdout
    wait_for(lambda: rerun_done("template", "allSky"), timeout=120, interval=0.5, what="the template rebuilt")
    rebuilt, _ = snapshot()
    assert len(rebuilt["template"]) == 1 and rebuilt["template"] != old_runs["template"]
    b = Butler.from_config(str(config.root / "repo"))
    coadds = b.query_datasets("deepCoadd", collections=chains["template"], explain=False)
    assert coadds and all(r.run in rebuilt["template"] for r in coadds)
    assert {i.run for r in coadds for i in mock_get(b, r).quantum.inputs["inputWarps"]} <= set(new_runs["drp"])
    b.close()
    store.close()


@pytest.mark.slow
def test_rerun_while_a_drp_step_runs_supersedes_it_and_keeps_its_run_out(write_config, tmp_path, daemon_factory):
    night = "20240621"
    # DRP step1's quanta take 3 s each, so the step still runs when the rerun lands (a step of
    # 4 mock quanta through autoproc-step is over in well under the CLI's start-up).
    slow = slow_down(tmp_path / "switches", "isr", 3.0)
    config, path, raws = deep_config(write_config, tmp_path, steps={**FAST_STEPS, "drp": ["step1", "step2a"]},
                                     env={FAIL_DIR_ENV: str(tmp_path / "switches")})
    deep_init(path)
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:2", "--n-bias", "2", "--flats", "1").wait(60) == 0
    store = Store(config.db)

    def drp_child():
        s = store.find_subject("night", night)
        return s and s.state == "drp" and [a for a in store.attempts(s.id, entry=s.entry, status=("running",))
                                           if a.pgid]

    running = wait_for(drp_child, timeout=240, interval=0.1, what="a DRP step running")[0]
    real = cli(path, "rerun-from", "night", night, "flat", "--reason", "bad dome flats", "--operator", "ann")
    assert real.returncode == 0, real.stderr
    wait_for(lambda: store.attempt(running.id).status == "superseded", timeout=30, what="the step superseded")
    slow.unlink()

    def rerun_done() -> bool:
        s = store.subject("night", night)
        return s.state == "done" and not (s.data.get("rerun") or {}).get("pending", True)

    wait_for(rerun_done, timeout=300, interval=0.5, what="the night done after the rerun")
    assert settled(config, {night: "done"}, daemon=daemon)
    requested = store.subject("night", night).data["rerun"]["requested"]
    cutoff = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(requested))

    from lsst.daf.butler import Butler

    b = Butler.from_config(str(config.root / "repo"))
    for proc in ("flat", "drp"):
        runs = chain_runs(b, f"DEEP/{night}/{proc}")
        # Only RUNs of steps started after the rerun: the superseded step's is not among them.
        assert runs and all(r.rsplit("/", 1)[-1] >= cutoff for r in runs), (proc, runs, cutoff)
    post = b.query_datasets("postISRCCD", collections=f"DEEP/{night}/drp", explain=False)
    flats = {str(r.id) for r in b.query_datasets("flat", collections=chain_runs(b, f"DEEP/{night}/flat"),
                                                 explain=False)}
    assert len(post) == 2 * 2
    assert all({str(i.dataset_id) for i in mock_get(b, r).quantum.inputs["flat"]} <= flats for r in post)
    b.close()
    store.close()
