"""Steps through the real `bps submit` + Parsl plugin (slow): an end-to-end attempt whose
exit code is 0 although a quantum failed, a job that dies after writing its outputs, and a kill
of `bps submit` mid-run followed by recovery and a new attempt with nothing lost and nothing
duplicated."""

from __future__ import annotations

import glob
import os

import pytest

pytest.importorskip("lsst.ctrl.bps.parsl")

from steps_support import NIGHT, bias_pipeline, bps_site, make_repo, submit_template  # noqa: E402

from autoproc.deep import collections as C  # noqa: E402
from autoproc.deep import quanta as Q  # noqa: E402
from autoproc.deep import runner as R  # noqa: E402

PARENT = f"DEEP/{NIGHT}/bias"
pytestmark = [pytest.mark.slow, pytest.mark.middleware]


@pytest.fixture
def setup(tmp_path):
    b, repo, _ = make_repo(tmp_path, n_bias=2)
    C.tag_raws(b, NIGHT, "bias")
    site, extra_env = bps_site(tmp_path)
    env = {**os.environ, **extra_env}
    kw = dict(mode="bps", env=env, submit_template=submit_template(tmp_path),
              fixed_inputs=C.DEFAULT_NAMES.fixed_inputs("bias", NIGHT),
              submit_extra={"site": {"local": {"class": site, "cores": 2}}})
    yield b, str(repo), bias_pipeline(tmp_path), kw
    b.close()


def _flaky_available(pipe) -> bool:
    return "FlakyTestPipelineTask" in open(pipe).read()


def test_bps_end_to_end_failed_quantum_exit_0(setup, tmp_path):
    b, repo, pipe, kw = setup
    if not _flaky_available(pipe):
        pytest.skip("needs deep-sim's Flaky pipelines")
    from autoproc.sim.deep.flaky import FAIL_DIR_ENV, set_failure

    fail_dir = tmp_path / "fail"
    marker = set_failure(fail_dir, "cpBiasIsr", "detector = 3", "builtins.MemoryError")
    kw["env"][FAIL_DIR_ENV] = str(fail_dir)
    out = R.run_step(b, repo, pipe, "step1", PARENT, tmp_path / "att", request_memory=4096, **kw)
    assert out.returncodes[0] == 0, out.evidence.get("log_tail")  # bps says fine...
    assert out.status == "failed" and out.final_job_ok is True  # ...the Butler says otherwise
    assert out.succeeded == {"cpBiasIsr": 2} and out.failed == {"cpBiasIsr": 2}
    assert all(f.retryable and f.data_id["detector"] == 3 for f in out.failures) and out.renamed_logs == 2
    assert os.path.exists(out.evidence["provenance_qg"])
    sub = open(os.path.join(out.attempt_dir, "submit.yaml")).read()
    assert "requestMemory: 4096" in sub and "--mock-storage-classes" in sub
    st = Q.check_step(b, pipe, "step1", PARENT)
    assert st.to_run == {"cpBiasIsr": 2}  # the memory failures are work again
    marker.unlink()
    again = R.run_step(b, repo, pipe, "step1", PARENT, tmp_path / "att", env=kw["env"])  # pipetask
    assert again.status == "succeeded" and again.succeeded == {"cpBiasIsr": 2}
    assert Q.check_step(b, pipe, "step1", PARENT).empty


def test_bps_job_dead_after_outputs_leaves_no_orphan(setup, tmp_path):
    """A job killed between its outputs and its metadata: the final job ingests the outputs, so
    they must be pruned by the ids bps gave them (its updated copy of the graph), or the next
    attempt's outputs come on top of them."""
    b, repo, pipe, kw = setup
    if not _flaky_available(pipe):
        pytest.skip("needs deep-sim's Flaky pipelines")
    from autoproc.sim.deep.flaky import DIE_AFTER_OUTPUTS, FAIL_DIR_ENV, set_failure

    switch = set_failure(tmp_path / "fail", "cpBiasIsr", "detector = 3", DIE_AFTER_OUTPUTS)
    kw["env"][FAIL_DIR_ENV] = str(tmp_path / "fail")
    out = R.run_step(b, repo, pipe, "step1", PARENT, tmp_path / "att", **kw)
    assert out.final_job_ok is True and out.status == "incomplete"
    assert out.succeeded == {"cpBiasIsr": 2} and out.blocked == {"cpBiasIsr": 2}
    assert out.evidence["pruned_unfinished_outputs"] >= 2  # each dead quantum's cpBiasIsrExp at least
    exps = b.query_datasets("cpBiasIsrExp", collections=PARENT, find_first=False, explain=False)
    assert sorted(r.dataId["detector"] for r in exps) == [1, 1]
    switch.unlink()
    again = R.run_step(b, repo, pipe, "step1", PARENT, tmp_path / "att", env=kw["env"])
    assert again.status == "succeeded" and again.succeeded == {"cpBiasIsr": 2}
    exps = b.query_datasets("cpBiasIsrExp", collections=PARENT, find_first=False, explain=False)
    assert sorted(r.dataId["detector"] for r in exps) == [1, 1, 3, 3]  # none twice


def test_kill_bps_then_recover_and_new_attempt(setup, tmp_path):
    b, repo, pipe, kw = setup
    att = tmp_path / "att"
    started = []

    def stop() -> bool:  # kill the bps group once one job has finished its quantum
        done = [f for f in glob.glob(str(att / "*/submit/logs/**/*.stderr"), recursive=True)
                if "quanta successfully" in open(f).read()]
        return len(done) >= 1

    out = R.run_step(b, repo, pipe, "step1", PARENT, att, should_stop=stop, on_start=started.append, **kw)
    assert started and started[0].pgid > 0
    assert out.killed and out.status == "incomplete" and out.returncodes[0] != 0
    assert out.succeeded == {"cpBiasIsr": 0}  # nothing registered: the final job never ran
    # the daemon (restarted or not) recovers the attempt before the next one
    rec = R.recover_attempt(b, out.attempt_dir, env=kw["env"])
    assert rec.recovered and rec.run == out.run
    n_done = rec.succeeded["cpBiasIsr"]
    assert 1 <= n_done <= 4
    st = Q.check_step(b, pipe, "step1", PARENT)
    assert st.succeeded == {"cpBiasIsr": n_done} and st.to_run == {"cpBiasIsr": 4 - n_done}
    if st.to_run["cpBiasIsr"]:
        nxt = R.run_step(b, repo, pipe, "step1", PARENT, att, env=kw["env"])  # pipetask, the cheap path
        assert nxt.status == "succeeded" and nxt.succeeded == {"cpBiasIsr": 4 - n_done}
    assert Q.check_step(b, pipe, "step1", PARENT).empty
    md = b.query_datasets("cpBiasIsr_metadata", collections=PARENT, find_first=False, explain=False)
    assert len(md) == 4 and len({r.dataId for r in md}) == 4  # none lost, none twice
    out_ds = b.query_datasets("cpBiasIsrExp", collections=PARENT, find_first=False, explain=False)
    assert len(out_ds) == 4
    # recovering twice changes nothing
    assert R.recover_attempt(b, out.attempt_dir, env=kw["env"]).succeeded == {"cpBiasIsr": n_done}
