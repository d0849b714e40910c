"""`autoproc demo`: the daemon on a simulated DEEP night pair and a DESGW season.

Everything runs for real (the daemon process, watchers, SQLite, Parsl, the Butler and
`pipetask`) except what cannot exist here, which `autoproc.sim` stands in for: DECam raws
streamed into a directory over time (the second night lacks its r-band dome flats, so it
borrows the first night's), the grid and its /pnfs tree, DAGMaker, and post-processing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from autoproc.config import Config, load_config
from autoproc.sim.deep.scenario import deep_settings
from autoproc.sim.desgw.site import SimSite

MARKER = ".autoproc-demo"
NIGHTS: tuple[tuple[str, int, list[str]], ...] = (("20240601", 1000, []), ("20240602", 2000, ["r"]))  # (night, first expnum, bands without flats)
TEMPLATE = "allSky"
SEASON = 2206
NITE = "20190814"
# DESGW exposures: three that go through, one with no templates (a person must look),
# one with more forced-photometry files than CCDs allow (held for a person).
EXPOSURES = {941201: {}, 941202: {"failed": {5: 3}, "stale_fails": 2}, 941203: {}, 941204: {"no_templates": True},
             941205: {"forcefiles_extra": 3}}
SETTLED = {
    "night": {"done", "failed"},
    "template": {"done", "failed"},
    "exposure": {"done", "no_templates", "needs_person", "stalled", "failed"},
}


class DemoError(Exception):
    pass


@dataclass
class Demo:
    """The demo's directory and the processes it started."""

    root: Path
    config_path: Path
    children: list[subprocess.Popen] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def start(self, argv: list[str], log: str) -> subprocess.Popen:
        with open(self.root / log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603 - our own argv
                                    start_new_session=True)
        self.children.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def prepare(root: Path) -> Demo:
    """A fresh demo directory (an old demo's is removed; anything else is refused)."""
    root = root.resolve()
    if root.exists():
        if not (root / MARKER).exists():
            raise DemoError(f"{root} exists and is not a demo directory; choose another --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("created by `autoproc demo`; removed by the next one\n")
    return Demo(root, root / "autoproc.yaml")


def write_config(demo: Demo, site) -> None:
    root = demo.root
    (root / "raws").mkdir()
    (root / "lists").mkdir()
    config = {
        "root": str(root / "state"),
        "retry": {"backoff_seconds": 1.0},
        "limits": {"dagmaker": 5},
        "executor": {"max_workers": 8},
        "watch": [
            {"name": "raws", "path": str(root / "raws"), "kind": "raw", "patterns": ["*.fits", "*.fits.fz"],
             "mode": "inotify", "quiet_seconds": 1.0},
            {"name": "lists", "path": str(root / "lists"), "kind": "desgw_exposure_list", "patterns": ["*.list"],
             "mode": "inotify", "quiet_seconds": 0.5},
        ],
        "deep": {
            # the simulator's instrument class, mock pipelines and their bps clusters
            **deep_settings(),
            "repo": str(root / "repo"),
            # pipetask: a bps submission costs 25-40 s of start-up per step on 2 cores; the
            # tests run bps, the demo shows the whole chain in minutes.
            "mode": "pipetask",
            "ingest_quiet_seconds": 2.0,
            "templates": {TEMPLATE: [n for n, _, _ in NIGHTS]},
        },
        "desgw": {
            "gw_workflow": str(site.gw_workflow), "exp_root": str(site.exp_root),
            "forcephoto_root": str(site.forcephoto_root), "postproc_dir": str(site.postproc),
            "jobsub_program": str(site.jobsub), "poll_seconds": 1.0, "stable_sweeps": 2,
            "postproc_python": sys.executable,
        },
        "deadlines": {"exposure.ccd_check": 90, "exposure.forcefile_check": 60},
        "report": {"min_interval_seconds": 5},
    }
    demo.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _machines(config: Config):
    from autoproc.machines import load_configured

    return load_configured(config)


def settled(store) -> bool:
    """Every subject has reached a state where it waits for nobody but a person."""
    subjects = store.subjects()
    kinds = {s.kind for s in subjects}
    if not {"night", "template", "exposure", "season"} <= kinds:
        return False
    for s in subjects:
        if s.kind in SETTLED and s.state not in SETTLED[s.kind] and not s.held:
            return False
    seasons = [s for s in subjects if s.kind == "season"]
    return all(s.state == "waiting" and s.data.get("postproc_runs") for s in seasons)


def set_up(root: Path, *, quiet: bool = False) -> tuple[Demo, SimSite]:
    """The demo directory, the simulated DESGW site, the configuration, the DEEP repo and the
    season; nothing runs yet."""
    from autoproc.deep import script as deep
    from autoproc.desgw import script as desgw
    from autoproc.sim.desgw.site import SimExposure, make_site
    from autoproc.store import Store

    demo = prepare(root)
    scenario = {"seconds_per_batch": 1.0, "batch_size": 20, "postproc_step_sleep": 0.5,
                "exposures": {e: b for e, b in EXPOSURES.items() if b}}
    site = make_site(demo.root / "desgw", [SimExposure(e, NITE, "i") for e in EXPOSURES], scenario, season=33)
    write_config(demo, site)
    config = demo.config
    machines = _machines(config)
    store = Store(config.db)
    try:
        for line in deep.init(config, store, machines):
            if not quiet:
                print(f"deep init: {line}")
        desgw.create_season(store, machines, config, SEASON, reason="demo: S190814bv follow-up",
                            operator="demo", settings=desgw.season_settings(
                                trigger_mjd=58709.437, propid="2019B-0372", ligoid="S190814bv",
                                triggerid="G298048", bands=["i"]))
    finally:
        store.close()
    return demo, site


def start_daemon(demo: Demo) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("autoproc"))
    return demo.start([exe, "-c", str(demo.config_path), "daemon"], "daemon.log")


def start_data(demo: Demo, site: SimSite) -> None:
    """The simulators: the grid, the two nights' raws streaming in, the season's list file."""
    demo.start(site.grid_argv(once=False), "grid.log")
    for night, start, missing in NIGHTS:
        argv = [sys.executable, "-m", "autoproc.sim.deep.night", "--out", str(demo.root / "raws"),
                "--night", night, "--start-expnum", str(start), "--n-bias", "3", "--flats", "2",
                "--science", "VR:3", "--science", "r:2", "--interval", "0.1"]
        for band in missing:
            argv += ["--missing-flat-band", band]
        demo.start(argv, f"night-{night}.log")
    (demo.root / "lists" / f"S{SEASON}_night1.list").write_text("\n".join(map(str, EXPOSURES)) + "\n")


def snapshot(config: Config) -> dict:
    """What `show` draws: status plus every subject (the demo has a handful)."""
    from autoproc.script import inspect
    from autoproc.store import Store

    store = Store(config.db, readonly=True)
    try:
        return inspect.status(store, limit=50) | {"subjects": [
            {"kind": s.kind, "key": s.key, "state": s.state, "held": s.held, "since": s.entered,
             "version": s.version} for s in store.subjects()], "settled": settled(store)}
    finally:
        store.close()


def run(root: Path, *, timeout: float = 420.0, show: Callable[[dict], None] | None = None) -> dict:
    """Set everything up, run the daemon until the subjects settle (or `timeout`), write the
    report. Returns a summary: states, the report's path, the elapsed time."""
    from autoproc.script import report
    from autoproc.store import Store

    t0 = time.monotonic()
    demo, site = set_up(root)
    config = demo.config
    try:
        daemon = start_daemon(demo)
        start_data(demo, site)
        deadline = time.monotonic() + timeout
        finished = False
        while time.monotonic() < deadline and not finished:
            if config.db.exists():
                view = snapshot(config)
                finished = view["settled"]
                if show is not None:
                    show(view)
            if daemon.poll() is not None:
                raise DemoError(f"the daemon exited ({daemon.returncode}); see {demo.root}/daemon.log")
            time.sleep(1.0)
    finally:
        demo.stop_all()
    page = report.report(config, _machines(config))
    store = Store(config.db, readonly=True)
    try:
        states = [(s.kind, s.key, s.state, s.held) for s in store.subjects()]
    finally:
        store.close()
    return {"finished": finished, "seconds": time.monotonic() - t0, "states": states, "report": page,
            "config": demo.config_path, "root": demo.root}
