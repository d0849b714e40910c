"""DEEP steps: collection names, chain rebuild, raw tagging, the in-process skip-failures
check, one attempt through `pipetask run -j 1` judged from the Butler, the retries.py
log rename, and failure classification."""

from __future__ import annotations

import datetime as dt
import errno
import json
from pathlib import Path

import pytest

pytest.importorskip("lsst.daf.butler")

from steps_support import BIAS_PARENT, NIGHT, fail_config, make_repo, run_bias_step  # noqa: E402

from autoproc.deep import collections as C  # noqa: E402
from autoproc.deep import quanta as Q  # noqa: E402
from autoproc.deep import runner as R  # noqa: E402
from autoproc.sim.deep.flaky import DIE_AFTER_OUTPUTS, FAIL_DIR_ENV, set_failure  # noqa: E402

pytestmark = pytest.mark.middleware

PARENT = BIAS_PARENT


# --- the skip-failures hook of the installed pipe_base -------------------------------------

SKIP_HOOKS = ("_compute_skip_decision", "_apply_skip_decision", "_skip_quantum_if_metadata_exists")


def test_skip_rule_hook_is_detected_for_either_pipe_base():
    class Decision:
        def _compute_skip_decision(self): ...
        def _apply_skip_decision(self): ...

    class Single:
        def _skip_quantum_if_metadata_exists(self): ...

    assert (Q._skip_hook_api(Decision), Q._skip_hook_api(Single)) == ("decision", "single")
    assert Q.skip_rule_api() in ("decision", "single")  # the installed one has one of them
    with pytest.raises(Q.SkipRuleUnavailable, match="will not run without it"):
        Q._skip_hook_api(type("Neither", (), {}))


def test_a_pipe_base_without_either_hook_stops_config_check_and_the_daemon(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from lsst.pipe.base.all_dimensions_quantum_graph_builder import AllDimensionsQuantumGraphBuilder

    from autoproc.actions import EnvironmentProblem
    from autoproc.cli import main
    from autoproc.config import Config
    from autoproc.engine import Engine

    for cls in AllDimensionsQuantumGraphBuilder.__mro__:
        for name in SKIP_HOOKS:
            if name in vars(cls):
                monkeypatch.delattr(cls, name)
    monkeypatch.setenv("AUTOPROC_ROOT", str(tmp_path / "root"))
    checked = CliRunner().invoke(main, ["config", "check"])
    assert checked.exit_code == 2, checked.output
    assert "deep skip-failures rule" in checked.output and "will not run without it" in checked.output
    with pytest.raises(EnvironmentProblem, match="skip-failures"):
        Engine(Config(root=tmp_path / "root"))


# --- names (no butler) --------------------------------------------------------------------


def test_names_and_fixed_inputs():
    n = C.Names()
    assert n.parent("bias", NIGHT) == f"DEEP/{NIGHT}/bias"
    assert n.parent("coadd", "allSky", "3", "") == "DEEP/allSky/3/coadd"
    assert n.diff(NIGHT, "allSky") == f"DEEP/{NIGHT}/allSky/diff_drp"
    assert n.raw_tagged(NIGHT, "flat") == f"DEEP/{NIGHT}/flat/raw"
    assert n.calib(NIGHT, "flat") == f"DEEP/{NIGHT}/calib/flat"
    assert n.warps("allSky") == "DEEP/allSky/coadd/warps"
    assert n.fixed_inputs("bias", NIGHT) == ["DECam/calib", f"DEEP/{NIGHT}/bias/raw"]
    assert n.fixed_inputs("flat", NIGHT) == [f"DEEP/{NIGHT}/calib/bias", "DECam/calib", f"DEEP/{NIGHT}/flat/raw"]
    assert n.fixed_inputs("drp", NIGHT) == [
        "DEEP/fakes", "refcats", "skymaps", f"DEEP/{NIGHT}/calib/flat", f"DEEP/{NIGHT}/calib/bias", "DEEP/calib",
        "DECam/calib", f"DEEP/{NIGHT}/drp/raw"]
    assert n.fixed_inputs("coadd", "allSky") == ["DEEP/allSky/coadd/warps", "skymaps"]
    assert n.fixed_inputs("diff_drp", NIGHT, "allSky") == ["DEEP/allSky/coadd", f"DEEP/{NIGHT}/drp"]
    assert C.Names(prefix="X").parent("drp", NIGHT) == f"X/{NIGHT}/drp"
    t = dt.datetime(2024, 11, 11, 11, 50, 7, tzinfo=dt.UTC)
    assert C.new_run_name(PARENT, "DEEP-bias", "step1", t) == f"{PARENT}/DEEP-bias/step1/20241111T115007Z"
    assert C.new_run_name(PARENT, "DEEP-bias", None, t).endswith("/_/20241111T115007Z")
    assert C.pipeline_name_of("/a/b/DEEP-DRP.yaml#step1") == "DEEP-DRP"
    for bad in ("2024060", "2024-06-01", "20240601; rm -rf /"):
        with pytest.raises(C.CollectionNameError):
            n.parent("drp", bad) if ";" in bad else n.raw_tagged(bad, "drp")
    with pytest.raises(C.CollectionNameError):
        C.new_run_name(PARENT, "DEEP-bias", "step 1")
    with pytest.raises(C.CollectionNameError):
        n.parent("coadd", "../x")
    with pytest.raises(R.RunnerError):
        R.check_where("visit = 1; `touch x`")


# --- in-process registry work -------------------------------------------------------------


@pytest.fixture
def empty_butler(tmp_path):
    from lsst.daf.butler import Butler

    Butler.makeRepo(str(tmp_path / "repo"))
    b = Butler.from_config(str(tmp_path / "repo"), writeable=True)
    yield b
    b.close()


def test_rebuild_chain_rules(empty_butler, caplog):
    from lsst.daf.butler import CollectionType

    b = empty_butler
    for c in ("DECam/calib", f"{PARENT}/raw"):
        b.collections.register(c, CollectionType.TAGGED)
    runs = [f"{PARENT}/DEEP-bias/step1/20241111T115007Z", f"{PARENT}/DEEP-bias/step2/20241112T000000Z",
            f"{PARENT}/DEEP-bias/step1/20241110T000000Z", f"{PARENT}/zzz", f"{PARENT}/aaa"]
    for r in runs:
        b.collections.register(r, CollectionType.RUN)
    b.collections.register(f"DEEP/{NIGHT}/biasx/run", CollectionType.RUN)  # not under parent/
    fixed = ["DECam/calib", f"{PARENT}/raw", "DEEP/missing"]
    res = C.rebuild_chain(b, PARENT, fixed)
    expect = [runs[1], runs[0], runs[2], f"{PARENT}/aaa", f"{PARENT}/zzz", "DECam/calib", f"{PARENT}/raw"]
    assert res.created and res.chain == expect and res.missing == ["DEEP/missing"]
    assert list(b.collections.get_info(PARENT).children) == expect
    assert "missing child DEEP/missing" in caplog.text
    # idempotent
    again = C.rebuild_chain(b, PARENT, fixed)
    assert not again.changed and not again.created and again.chain == expect
    # a new run is added (newest first)
    new = f"{PARENT}/DEEP-bias/step1/20250101T000000Z"
    b.collections.register(new, CollectionType.RUN)
    assert C.rebuild_chain(b, PARENT, fixed).chain[0] == new
    # a child the candidate lacks is never dropped without overwrite
    b.collections.register("extra", CollectionType.TAGGED)
    b.collections.prepend_chain(PARENT, "extra")
    before = list(b.collections.get_info(PARENT).children)
    kept = C.rebuild_chain(b, PARENT, fixed)
    assert not kept.changed and kept.would_drop == ["extra"]
    assert list(b.collections.get_info(PARENT).children) == before
    # fixup_chain (execute.py) keeps it, after the dated runs
    b.collections.register(f"{PARENT}/DEEP-bias/step2/20250202T000000Z", CollectionType.RUN)
    fx = C.fixup_chain(b, PARENT)
    assert fx.changed and fx.chain[0] == f"{PARENT}/DEEP-bias/step2/20250202T000000Z" and "extra" in fx.chain
    dated = [c for c in fx.chain if C.DATED_LEAF_RE.match(c.rsplit("/", 1)[-1])]
    assert dated == sorted(dated, key=lambda c: c.rsplit("/", 1)[-1], reverse=True)
    # overwrite drops it
    over = C.rebuild_chain(b, PARENT, fixed, overwrite=True)
    assert over.changed and "extra" not in over.chain


def test_set_aside_runs_stay_in_the_repo_and_out_of_the_chain(empty_butler):
    from lsst.daf.butler import CollectionType

    b = empty_butler
    b.collections.register("DECam/calib", CollectionType.TAGGED)
    old = [f"{PARENT}/DEEP-bias/step1/20241110T000000Z", f"{PARENT}/DEEP-bias/step2/20241110T000100Z"]
    for r in old:
        b.collections.register(r, CollectionType.RUN)
    fixed = ["DECam/calib"]
    rerun = dt.datetime(2024, 12, 1, tzinfo=dt.UTC)
    assert C.set_aside_runs(b, "DEEP/20240101/bias", "nothing ran there", rerun) == []
    assert C.rebuild_chain(b, PARENT, fixed).chain == [old[1], old[0], "DECam/calib"]
    assert C.set_aside_runs(b, PARENT, "rerun of night from bias", rerun) == [old[1], old[0]]
    assert list(b.collections.get_info(PARENT).children) == ["DECam/calib"]
    assert all(b.collections.get_info(r).doc == f"{C.SET_ASIDE}: rerun of night from bias" for r in old)
    assert C.runs_in_use(b, PARENT) == [] and C.set_aside_runs(b, PARENT, "again", rerun) == []
    # Rebuilding (a step's start, execute.py's fixup) never puts them back; new RUNs go in,
    # but not one a superseded step started before the rerun and registered only after it.
    late = f"{PARENT}/DEEP-bias/step2/20241130T235959Z"
    new = f"{PARENT}/DEEP-bias/step1/20250101T000000Z"
    for r in (late, new):
        b.collections.register(r, CollectionType.RUN)
    assert C.rebuild_chain(b, PARENT, fixed).chain == [new, "DECam/calib"]
    assert C.fixup_chain(b, PARENT).chain == [new, "DECam/calib"]
    # One put back by hand is dropped again without needing overwrite.
    b.collections.prepend_chain(PARENT, old[0])
    res = C.rebuild_chain(b, PARENT, fixed)
    assert res.chain == [new, "DECam/calib"] and not res.would_drop
    assert list(b.collections.get_info(PARENT).children) == [new, "DECam/calib"]


def test_tag_raws_idempotent(tmp_path):
    b, _, _ = make_repo(tmp_path, n_bias=3, science=(("VR", 2), ("g", 1)), flats_per_band=1)
    r1 = C.tag_raws(b, NIGHT, "bias")
    assert r1.collection == f"DEEP/{NIGHT}/bias/raw" and r1.associated == 6 and r1.total == 6
    r2 = C.tag_raws(b, NIGHT, "bias")
    assert r2.associated == 0 and r2.total == 6
    flat = C.tag_raws(b, NIGHT, "flat")
    drp = C.tag_raws(b, NIGHT, "drp")
    assert (flat.total, drp.total) == (4, 6)
    refs = b.query_datasets("raw", collections=f"DEEP/{NIGHT}/flat/raw", explain=False)
    assert {r.dataId.records["exposure"].observation_type for r in
            b.query_datasets("raw", collections=f"DEEP/{NIGHT}/flat/raw", with_dimension_records=True)} == {
        "dome flat"}
    assert len(refs) == 4
    empty = C.tag_raws(b, 20240602, "bias")
    assert empty.total == 0 and empty.associated == 0


# --- one attempt through pipetask, judged from the butler -----------------------------------


def test_fatal_failure_then_skip_failures_then_release(bias_repo, tmp_path):
    b, repo, pipe = bias_repo
    st0 = Q.check_step(b, pipe, "step1", PARENT)
    assert st0.to_run == {"cpBiasIsr": 6} and not st0.empty
    bad = b.query_dimension_records("exposure", where="exposure.observation_type='zero'", explain=False)
    exp = sorted(r.id for r in bad)[1]
    cfg = fail_config(tmp_path, f"detector = 3 AND exposure = {exp}")
    out = run_bias_step(b, repo, pipe, tmp_path, config_files={"cpBiasIsr": [str(cfg)]})
    assert out.status == "failed" and out.returncodes == [1]
    assert out.succeeded == {"cpBiasIsr": 5} and out.failed == {"cpBiasIsr": 1}
    (f,) = out.failures
    assert f.data_id == {"instrument": "DECam", "detector": 3, "exposure": exp}
    assert f.exception_type == "RuntimeError" and "Simulated failure" in f.message
    assert not f.retryable and not out.retryable and out.renamed_logs == 0
    assert out.evidence["chain_after"]["chain"][0] == out.run
    assert json.loads((tmp_path / "attempts" / out.run.replace("/", "_") / "attempt.json").read_text())[
        "state"] == "done"
    # skip-failures: the failed quantum is not work left; the step is "done with 1 failure"
    st = Q.check_step(b, pipe, "step1", PARENT)
    assert st.empty and st.succeeded == {"cpBiasIsr": 5}
    assert [d["data_id"]["exposure"] for d in st.failed["cpBiasIsr"]] == [exp]
    # without skip-failures the failed one is work again (plain skip-existing)
    assert Q.check_step(b, pipe, "step1", PARENT, skip_failures=False).to_run == {"cpBiasIsr": 1}
    # nothing to do: no run, no child, no attempt directory
    attempts = sorted((tmp_path / "attempts").iterdir())
    again = run_bias_step(b, repo, pipe, tmp_path)
    assert again.status == "nothing_to_do" and again.run is None and not again.commands
    assert again.attempt_dir is None and sorted((tmp_path / "attempts").iterdir()) == attempts
    # the operator releases it (retries.py rename); a new attempt without the failure fixes it
    assert R.release_failures(b, PARENT, pipeline=pipe, step="step1") == 1
    assert Q.check_step(b, pipe, "step1", PARENT).to_run == {"cpBiasIsr": 1}
    fixed = run_bias_step(b, repo, pipe, tmp_path)
    assert fixed.status == "succeeded" and fixed.expected == {"cpBiasIsr": 1} and fixed.succeeded == {
        "cpBiasIsr": 1}
    done = Q.check_step(b, pipe, "step1", PARENT)
    assert done.empty and done.n_failed == 0 and done.succeeded == {"cpBiasIsr": 6}
    # no duplicates: exactly one metadata per quantum through the chain
    md = b.query_datasets("cpBiasIsr_metadata", collections=PARENT, find_first=False, explain=False)
    assert len(md) == 6 and len({r.dataId for r in md}) == 6
    # step2 runs on top, through the same chain
    s2 = run_bias_step(b, repo, pipe, tmp_path, step="step2")
    assert s2.status == "succeeded" and s2.succeeded == {"cpBiasCombine": 2}
    chain = list(b.collections.get_info(PARENT).children)
    assert chain[0] == s2.run and chain.index(fixed.run) < chain.index(out.run)


def test_disk_full_quanta_wait_for_space_then_run_again(bias_repo, tmp_path):
    b, repo, pipe = bias_repo
    cfg = fail_config(tmp_path, "detector = 1", "autoproc.sim.deep.flaky.DiskFull", "full.py")
    out = run_bias_step(b, repo, pipe, tmp_path, config_files={"cpBiasIsr": [str(cfg)]})
    assert out.status == "failed" and out.failed == {"cpBiasIsr": 3}
    assert all(f.no_space and f.retryable and "No space left on device" in f.message for f in out.failures)
    assert out.renamed_logs == 3  # not "failed for good": skip-failures will not skip them
    full = out.no_space()
    assert full.errno == errno.ENOSPC and full.strerror.startswith('3 quanta failed with "No space left on device"')
    assert run_bias_step(b, repo, pipe, tmp_path).no_space() is None  # space is back: the three run again
    assert Q.check_step(b, pipe, "step1", PARENT).succeeded == {"cpBiasIsr": 6}
    md = b.query_datasets("cpBiasIsr_metadata", collections=PARENT, find_first=False, explain=False)
    assert len(md) == 6 and len({r.dataId for r in md}) == 6


def test_outputs_of_a_quantum_killed_before_its_metadata_are_not_kept_twice(bias_repo, tmp_path):
    b, repo, pipe = bias_repo
    switch = set_failure(tmp_path / "fail", "cpBiasIsr", "detector = 3", DIE_AFTER_OUTPUTS)
    out = run_bias_step(b, repo, pipe, tmp_path, env={FAIL_DIR_ENV: str(tmp_path / "fail")})
    assert out.status == "incomplete" and out.returncodes[0] != 0 and not out.failures
    assert out.evidence["pruned_unfinished_outputs"] == 1  # the dead quantum's cpBiasIsrExp
    switch.unlink()
    nxt = run_bias_step(b, repo, pipe, tmp_path)
    assert nxt.status == "succeeded" and nxt.succeeded == {"cpBiasIsr": 6 - out.succeeded["cpBiasIsr"]}
    for dtype in ("cpBiasIsr_metadata", "cpBiasIsrExp"):
        refs = b.query_datasets(dtype, collections=PARENT, find_first=False, explain=False)
        assert len(refs) == 6 and len({r.dataId for r in refs}) == 6, dtype  # none lost, none twice


def test_memory_failure_is_retryable_and_log_renamed(bias_repo, tmp_path):
    b, repo, pipe = bias_repo
    cfg = fail_config(tmp_path, "detector = 1", "builtins.MemoryError", "oom.py")
    out = run_bias_step(b, repo, pipe, tmp_path, config_files={"cpBiasIsr": [str(cfg)]})
    assert out.status == "failed" and out.failed == {"cpBiasIsr": 3} and out.retryable
    assert all(f.retryable and f.exception_type == "MemoryError" for f in out.failures)
    assert out.renamed_logs == 3
    logs = b.query_datasets("cpBiasIsr_log", collections=out.run, explain=False)
    retry = b.query_datasets("cpBiasIsr_log_retry", collections=out.run, explain=False)
    assert len(logs) == 3 and len(retry) == 3  # 3 succeeded keep _log; 3 failed moved to _log_retry
    assert {r.dataId["detector"] for r in retry} == {1}
    st = Q.check_step(b, pipe, "step1", PARENT)
    assert st.to_run == {"cpBiasIsr": 3} and st.n_failed == 0
    ok = run_bias_step(b, repo, pipe, tmp_path)
    assert ok.status == "succeeded" and ok.succeeded == {"cpBiasIsr": 3}
    assert Q.check_step(b, pipe, "step1", PARENT).empty


def test_missing_input_is_reported_not_raised(bias_repo, tmp_path):
    b, repo, pipe = bias_repo
    out = run_bias_step(b, repo, pipe, tmp_path, step="step2")  # step1 never ran: no cpBiasIsrExp
    assert out.status == "error" and out.error_kind == "missing_input" and not out.commands
    with pytest.raises(Q.StepCheckError):
        Q.check_step(b, pipe, "step2", PARENT)


def test_memory_patterns():
    assert R.is_memory_failure(["Execution of task 'x' failed. Exception MemoryError: std::bad_alloc"])
    assert R.is_memory_failure(["ValueError: Failure from formatter 'F' ... std::bad_alloc"])
    assert R.is_memory_failure(["RuntimeError: Failed to serialize dataset x"])
    assert not R.is_memory_failure(["Execution failed. Exception RuntimeError: Polygon is not convex"])


def test_transient_flaky_failure_recovers_after_release(bias_repo, tmp_path, monkeypatch):
    b, repo, pipe = bias_repo
    if "FlakyTestPipelineTask" not in open(pipe).read():
        pytest.skip("needs deep-sim's Flaky pipelines")
    from autoproc.sim.deep.flaky import FAIL_DIR_ENV, set_failure

    monkeypatch.setenv(FAIL_DIR_ENV, str(tmp_path / "fail"))
    marker = set_failure(tmp_path / "fail", "cpBiasIsr", "detector = 1")  # RuntimeError: not retryable
    out = run_bias_step(b, repo, pipe, tmp_path)
    assert out.status == "failed" and out.failed == {"cpBiasIsr": 3} and not out.retryable
    marker.unlink()  # the transient cause is gone...
    st = Q.check_step(b, pipe, "step1", PARENT)
    assert st.empty and st.n_failed == 3  # ...but skip-failures keeps them out until released
    assert R.release_failures(b, PARENT, task="cpBiasIsr", data_ids=[{"detector": 1}], pipeline=pipe,
                              step="step1") == 3
    ok = run_bias_step(b, repo, pipe, tmp_path)
    assert ok.status == "succeeded" and ok.succeeded == {"cpBiasIsr": 3}
    done = Q.check_step(b, pipe, "step1", PARENT)
    assert done.empty and done.n_failed == 0 and done.n_succeeded == 6


def test_tag_warps_find_first_and_replace(tmp_path):
    from lsst.daf.butler import CollectionType, DatasetType

    b, _, _ = make_repo(tmp_path, nights=(20240601, 20240602), n_bias=0, flats_per_band=0)
    exps = {n: sorted(r.id for r in b.query_dimension_records(
        "exposure", where=f"instrument = 'DECam' AND exposure.day_obs = {n} AND exposure.observation_type = 'science'", explain=False))
        for n in (20240601, 20240602)}
    types = [DatasetType(t, ["instrument", "exposure"], "StructuredDataDict", universe=b.dimensions)
             for t in C.WARP_DATASET_TYPES]
    for t in types:
        b.registry.registerDatasetType(t)

    def put_night(n, stamp):
        run = f"DEEP/{n}/drp/DEEP-DRP/step3a/{stamp}"
        b.collections.register(run, CollectionType.RUN)
        refs = [b.put({"n": n}, t, {"instrument": "DECam", "exposure": e}, run=run) for t in types for e in exps[n]]
        C.rebuild_chain(b, f"DEEP/{n}/drp", [])
        return refs

    put_night(20240601, "20240701T000000Z")
    put_night(20240602, "20240701T000000Z")
    r = C.tag_warps(b, [20240601, 20240602, 20240603], "allSky")  # 0603 has no drp chain: skipped
    assert r.collection == "DEEP/allSky/coadd/warps" and r.associated == 8 and r.total == 8
    assert C.tag_warps(b, [20240601, 20240602], "allSky").associated == 0  # idempotent
    newer = put_night(20240601, "20240702T000000Z")  # a re-run: find-first picks the newer warps
    r2 = C.tag_warps(b, [20240601, 20240602], "allSky")
    assert r2.removed == 4 and r2.associated == 4
    tagged = {ref.id for ref in b.query_datasets("deepCoadd_directWarp", collections=r.collection, explain=False)}
    assert {x.id for x in newer if x.datasetType.name == "deepCoadd_directWarp"} <= tagged and len(tagged) == 4
    ch = C.coadd_chain(b, "allSky")
    assert ch.parent == "DEEP/allSky/coadd" and ch.chain == ["DEEP/allSky/coadd/warps"]  # skymaps missing


def test_killed_attempt_is_recovered_before_the_next(bias_repo, tmp_path):
    b, repo, pipe = bias_repo
    slow = tmp_path / "slow.py"
    slow.write_text("config.sleep = 1.0\n")
    att = tmp_path / "attempts"

    def stop() -> bool:  # kill the pipetask group once two quanta are done
        logs = list(att.glob("*/step.log"))
        return bool(logs) and logs[0].read_text().count("took ") >= 2

    out = run_bias_step(b, repo, pipe, tmp_path, should_stop=stop, config_files={"cpBiasIsr": [str(slow)]})
    # Stopped (the daemon going down): what the step wrote is registered by the next attempt.
    assert out.killed and out.status == "incomplete" and out.succeeded["cpBiasIsr"] == 0
    assert R.pending_attempts(att, PARENT) == [att / out.run.replace("/", "_")]
    progress: list[str] = []
    nxt = run_bias_step(b, repo, pipe, tmp_path, on_progress=progress.append)
    (rec,) = nxt.evidence["recovered_attempts"]
    assert rec["run"] == out.run and R.pending_attempts(att, PARENT) == []
    done_before = rec["succeeded"]["cpBiasIsr"]
    assert done_before >= 2
    # The engine hears of the kept quanta: this crash does not count against the step.
    assert progress == [f"{done_before} quanta finished by the interrupted {out.run} were kept"]
    assert nxt.status == "succeeded" and nxt.succeeded["cpBiasIsr"] == 6 - done_before
    md = b.query_datasets("cpBiasIsr_metadata", collections=PARENT, find_first=False, explain=False)
    assert len(md) == 6 and len({r.dataId for r in md}) == 6
    assert Q.check_step(b, pipe, "step1", PARENT).empty


def test_an_attempt_that_could_not_register_stays_pending_until_it_does(bias_repo, tmp_path):
    """`autoproc-step register` failing (here: the repository's configuration missing from the
    child's view) leaves the attempt pending with its outputs unregistered; once it can
    register, the recovery keeps every quantum it had finished."""
    b, repo, pipe = bias_repo
    att = tmp_path / "attempts"

    def stop() -> bool:  # stop once two quanta are done: nothing registered yet
        logs = list(att.glob("*/step.log"))
        return bool(logs) and logs[0].read_text().count("took ") >= 2

    slow = tmp_path / "slow.py"
    slow.write_text("config.sleep = 0.5\n")
    out = run_bias_step(b, repo, pipe, tmp_path, should_stop=stop, config_files={"cpBiasIsr": [str(slow)]})
    assert out.killed and out.succeeded["cpBiasIsr"] == 0
    (pending,) = R.pending_attempts(att, PARENT)
    config = Path(repo) / "butler.yaml"
    config.rename(config.with_suffix(".away"))
    try:
        failed = R.recover_attempt(b, pending)
    finally:
        config.with_suffix(".away").rename(config)
    assert failed.returncodes == [3] and failed.evidence["unregistered"] and not failed.recovered
    assert failed.status == "incomplete" and failed.succeeded == {"cpBiasIsr": 0}
    assert R.pending_attempts(att, PARENT) == [pending]  # still owed its registration
    kept = R.recover_attempt(b, pending)
    assert kept.returncodes == [0] and kept.recovered and kept.succeeded["cpBiasIsr"] >= 2
    assert R.pending_attempts(att, PARENT) == []
    assert R.recover_attempt(b, pending).succeeded == kept.succeeded  # final: not registered twice
    nxt = run_bias_step(b, repo, pipe, tmp_path)
    assert nxt.status == "succeeded" and nxt.succeeded["cpBiasIsr"] == 6 - kept.succeeded["cpBiasIsr"]
    md = b.query_datasets("cpBiasIsr_metadata", collections=PARENT, find_first=False, explain=False)
    assert len(md) == 6 and len({r.dataId for r in md}) == 6
