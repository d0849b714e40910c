"""autoproc as a site installs it: a wheel built from this checkout, installed (not
editable) into a fresh virtualenv, run from a directory outside the checkout with no
source tree around. The pinned dependencies already installed here are reused (through
a .pth file), so this needs no network."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from autoproc.sim.desgw.site import SimExposure, make_site
from autoproc.store import Store

REPO = Path(__file__).resolve().parents[1]
MACHINES = ["exposure", "night", "season", "template"]
SHIPPED = [*(f"autoproc/data/statemachines/{m}.yaml" for m in MACHINES),
           "autoproc/data/hooks/mail", "autoproc/data/hooks/slack-webhook", "autoproc/data/hooks/event-log",
           "autoproc/data/systemd/autoproc.service", "autoproc/data/systemd/autoproc-user.service",
           "autoproc/templates/report.html.j2", "autoproc/templates/report.css",
           "autoproc/desgw/templates/exposures.html.j2"]


def build(kind: str, out: Path, source: Path = REPO) -> Path:
    """`pip wheel` for the wheel; setuptools' own build_meta for the sdist (pip makes none)."""
    out.mkdir(parents=True, exist_ok=True)
    if kind == "wheel":
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "--disable-pip-version-check", "-q", "-w", str(out), str(source)]
    else:
        argv = [sys.executable, "-c", "import sys, setuptools.build_meta as b; b.build_sdist(sys.argv[1])", str(out)]
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True, timeout=300)  # noqa: S603
    (built,) = out.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build("wheel", tmp_path_factory.mktemp("dist"))


def test_wheel_and_sdist_carry_the_machines_hooks_and_units(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names, sorted(set(SHIPPED) - names)
    # The chains are found through the wheel's entry points (autoproc.chain).
    entry_points = zipfile.ZipFile(wheel).read("autoproc-0.1.0.dist-info/entry_points.txt").decode()
    assert "[autoproc.chains]\ndeep = autoproc.deep.chain:chain\ndesgw = autoproc.desgw.chain:chain" in entry_points
    modes = {i.filename: i.external_attr >> 16 for i in zipfile.ZipFile(wheel).infolist()}
    assert modes["autoproc/data/hooks/mail"] & 0o111  # hooks stay executable
    sdist = build("sdist", tmp_path / "sdist")
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {f"src/{p}" for p in SHIPPED} <= members, sorted({f"src/{p}" for p in SHIPPED} - members)
    from_sdist = build("wheel", tmp_path / "from-sdist", source=sdist)  # as pip does from PyPI
    assert set(SHIPPED) <= set(zipfile.ZipFile(from_sdist).namelist())


def installed_venv(wheel: Path, where: Path) -> Path:
    """A fresh virtualenv that already has a Rubin stack (ours, through a path entry: it does
    not run the editable install's .pth), into which the wheel is installed as a site
    installs it into its own environment: `pip install`, no constraints, no index."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)  # noqa: S603
    (purelib,) = (venv / "lib").glob("python3.*/site-packages")
    fresh = {p.name for p in purelib.glob("*.dist-info")}  # pip (and setuptools on 3.11)
    (purelib / "autoproc-test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index",  # noqa: S603
                    "--disable-pip-version-check", "-q", str(wheel)], check=True, timeout=300)
    # The stack that was there wins: pip installed autoproc and nothing else.
    added = sorted(p.name for p in purelib.glob("*.dist-info") if p.name not in fresh)
    assert added == ["autoproc-0.1.0.dist-info"], added
    return venv


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    venv = installed_venv(wheel, tmp_path)
    work = tmp_path / "site-dir"  # not the checkout, no source tree above it
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "LANG": "C.UTF-8"}

    def autoproc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "autoproc"), *args], cwd=work, env=env,  # noqa: S603
                              capture_output=True, text=True, timeout=timeout)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import autoproc; print(autoproc.__file__)"],  # noqa: S603
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not this checkout's
    version = autoproc("--version")
    assert version.returncode == 0 and version.stdout.startswith("autoproc 0.1.0 (Python "), version
    assert "lsst-pipe-base" in version.stdout and "parsl" in version.stdout
    assert "Type=notify" in autoproc("install-unit", "--print").stdout
    assert autoproc("install-hooks", str(work / "hooks")).returncode == 0 and os.access(work / "hooks" / "mail", os.X_OK)

    # A DESGW exposure without templates: DAGMaker says so, and it ends in `no_templates`.
    sim = make_site(tmp_path / "sim", [SimExposure(941204, "20190814", "i")],
                    {"exposures": {941204: {"no_templates": True}}}, season=33)
    config = work / "autoproc.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(work / "state"), "poll_seconds": 0.2,
        "desgw": {"gw_workflow": str(sim.gw_workflow), "exp_root": str(sim.exp_root),
                  "forcephoto_root": str(sim.forcephoto_root), "postproc_dir": str(sim.postproc),
                  "jobsub_program": str(sim.jobsub), "poll_seconds": 0.3,
                  "postproc_python": str(venv / "bin" / "python")}}))
    checked = autoproc("-c", str(config), "config", "check")
    assert checked.returncode == 0, checked.stderr
    assert f"4 machines: {', '.join(MACHINES)}" in checked.stdout  # the two chains' machines
    commands = autoproc("--help").stdout
    assert "  deep " in commands and "  desgw " in commands, commands
    assert autoproc("-c", str(config), "desgw", "season", "2206", "--trigger-mjd", "58709.437", "--bands", "i",
                    "--reason", "install test").returncode == 0
    assert autoproc("-c", str(config), "desgw", "add-exposure", "2206", "941204").returncode == 0
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(venv / "bin" / "autoproc"), "-c", str(config), "daemon"],  # noqa: S603
                              cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        end = time.monotonic() + 120
        while True:
            store = Store(work / "state" / "autoproc.db", readonly=True)
            try:
                state = store.subject("exposure", "2206.941204").state
            finally:
                store.close()
            if state == "no_templates" or time.monotonic() > end or daemon.poll() is not None:
                break
            time.sleep(0.2)
        assert state == "no_templates", (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=30) == 0
