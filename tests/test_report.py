"""The HTML report, from a store filled through the Store API, loaded in headless Chromium.

Chromium is Debian's `chromium` (`make test` installs it when missing). The page is read
back as Chromium's DOM (`--dump-dom`, after any script would have run), and a screenshot
is kept in test-artifacts/report.png.
"""

from __future__ import annotations

import html.parser
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from autoproc.config import parse_config
from autoproc.machines import load_machines
from autoproc.script.report import report
from autoproc.store import Store
from conftest import child_env, wait_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
XSS_KEY = "<script>alert(1)</script>"
XSS_REASON = "<script>document.title='pwned'</script> & more"
XSS_FILE = "/data/raw/<img src=x onerror=\"document.title='pwned2'\">.fits"
CHIPS = [c for c in range(1, 63) if c not in (2, 31, 61)]

# Small stand-ins for the DEEP and DESGW machines (the real ones live in statemachines/);
# the widgets plugin supplies the action names, which never run here.
MACHINES = {
    "night": {"initial": "ingesting", "states": {
        "ingesting": {"action": "build"}, "bias": {"action": "build"}, "flat": {"action": "build"},
        "drp": {"action": "build"}, "diff": {"action": "build"}, "done": {"terminal": True},
        "failed": {"terminal": True, "attention": True}},
        "transitions": [{"trigger": t, "source": a, "dest": b} for t, a, b in [
            ("ingested", "ingesting", "bias"), ("biased", "bias", "flat"), ("flatted", "flat", "drp"),
            ("reduced", "drp", "diff"), ("differenced", "diff", "done")]]
        + [{"trigger": "fail", "source": ["ingesting", "bias", "flat", "drp", "diff"], "dest": "failed"}]},
    "template": {"initial": "waiting", "states": {
        "waiting": {"auto": ["go"]}, "building": {"action": "build"}, "done": {"terminal": True},
        "failed": {"terminal": True, "attention": True}},
        "transitions": [{"trigger": "go", "source": "waiting", "dest": "building"},
                        {"trigger": "built", "source": "building", "dest": "done"},
                        {"trigger": "fail", "source": "building", "dest": "failed"}]},
    "exposure": {"initial": "new", "states": {
        "new": {"action": "build"}, "dagmaker": {"action": "build"}, "ccd_check": {"action": "check"},
        "forcefile_check": {"action": "check"}, "ready": {}, "done": {"terminal": True},
        "no_templates": {"terminal": True, "attention": True}, "failed": {"terminal": True, "attention": True}},
        "transitions": [{"trigger": t, "source": a, "dest": b} for t, a, b in [
            ("found", "new", "dagmaker"), ("made", "dagmaker", "ccd_check"), ("no_templates", "dagmaker",
            "no_templates"), ("ccds_ok", "ccd_check", "forcefile_check"), ("forcefiles_ok", "forcefile_check",
            "ready"), ("finish", "ready", "done")]]
        + [{"trigger": "fail", "source": ["new", "dagmaker", "ccd_check", "forcefile_check"], "dest": "failed"}]},
    "season": {"initial": "waiting", "states": {
        "waiting": {"auto": ["postprocess"]}, "postprocessing": {"action": "build"},
        "failed": {"terminal": True, "attention": True}},
        "transitions": [{"trigger": "postprocess", "source": "waiting", "dest": "postprocessing"},
                        {"trigger": "postprocessed", "source": "postprocessing", "dest": "waiting"},
                        {"trigger": "fail", "source": "postprocessing", "dest": "failed"}]},
}


def walk(store: Store, kind: str, key: str, triggers_states: list[tuple[str, str]], *, data=None,
         reason: str = "", actor: str = "daemon"):
    subject, _ = store.ensure_subject(kind, key, MACHINES[kind]["initial"], actor="daemon", reason="new file")
    for i, (trigger, state) in enumerate(triggers_states):
        last = i == len(triggers_states) - 1
        subject = store.transition(subject, state, trigger=trigger, actor=actor if last else "daemon",
                                   reason=reason if last else f"{trigger} ok", data=data if last else None)
    if data and not triggers_states:
        subject = store.update(subject, data=data)
    return subject


def attempt(store: Store, subject, stage: str, work: Path, *, status: str, took: float, exit_status=None,
            result=None, try_number: int = 1) -> None:
    log = work / subject.kind / f"{subject.id}-{stage}-{try_number}" / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{stage} try {try_number}\n")
    a = store.add_attempt(subject, stage, step=stage, try_number=try_number)
    now = time.time()
    store.update_attempt(a, status=status, started=now - took, ended=now, log=str(log), cwd=str(log.parent),
                         exit_status=exit_status, result=result or {"reason": f"{stage} {status}"})


def ccd_table(fails: dict[int, str], unfinished: set[int] = frozenset()) -> dict[str, str]:
    return {f"{c:02d}": fails.get(c, "never_started" if c in unfinished else "done") for c in CHIPS}


@pytest.fixture
def populated(tmp_path):
    machines_dir = tmp_path / "machines"
    machines_dir.mkdir()
    for kind, spec in MACHINES.items():
        (machines_dir / f"{kind}.yaml").write_text(yaml.safe_dump({"kind": kind, "plugins": ["widgets"], **spec},
                                                                         sort_keys=False))
    config = parse_config({"root": str(tmp_path / "root"), "machines_dir": str(machines_dir)})
    store = Store(config.db)
    work = config.work_dir
    n1 = walk(store, "night", "20240601", [("ingested", "bias"), ("biased", "flat"), ("flatted", "drp"),
                                           ("reduced", "diff"), ("differenced", "done")],
              data={"raws": 120, "visits": 30})
    for stage in ("ingesting", "bias", "flat", "drp", "diff"):
        attempt(store, n1, stage, work, status="succeeded", took=95.0)
    n2 = walk(store, "night", "20240602", [("ingested", "bias"), ("biased", "flat"), ("flatted", "drp")],
              data={"raws": 118})
    attempt(store, n2, "drp", work, status="failed", took=610.0, exit_status=137,
            result={"kind": "retry", "reason": "out of memory"})
    attempt(store, n2, "drp", work, status="running", took=42.0, try_number=2)
    walk(store, "night", "20240603", [("ingested", "bias"), ("biased", "flat"), ("fail", "failed")],
         reason="no flat in band r within 14 nights",
         data={"raws": {"ingested": 118, "skipped": 2}, "missing_calibs": {"bias": False, "flat": ["r"]}})
    walk(store, "night", XSS_KEY, [("ingested", "bias")], reason=XSS_REASON)
    n5 = walk(store, "night", "20240604", [("ingested", "bias")], reason="rerun: bias frames replaced",
              actor="dana")
    store.update(n5, held="waiting for the new bias frames", trigger="hold", actor="dana", reason="hold it")
    walk(store, "template", "allSky", [("go", "building"), ("built", "done")],
         data={"members": ["20240601", "20240602"]})
    walk(store, "season", "1234", [("postprocess", "postprocessing"), ("postprocessed", "waiting")],
         data={"listed": [100001, 100002, 100003, 100004], "postprocessed": [100001],
               "postproc_runs": [{"skipto": 1}]})
    full = ccd_table({5: "RUN05", 17: "RUN11"})
    walk(store, "exposure", "1234.100001", [("found", "dagmaker"), ("made", "ccd_check"),
                                           ("ccds_ok", "forcefile_check"), ("forcefiles_ok", "ready"),
                                           ("finish", "done")],
         data={"season": 1234, "expnum": 100001, "band": "i", "nite": "20240601", "ccd_table": full,
               "ccds": {"chips": 59, "complete": 57, "failed": 2}, "forcefiles": {"count": 114, "expected": 114}})
    polling = walk(store, "exposure", "1234.100002", [("found", "dagmaker"), ("made", "ccd_check")],
                   data={"season": 1234, "expnum": 100002, "band": "r", "nite": "20240601"})
    attempt(store, polling, "ccd_check", work, status="waiting", took=3.0,
            result={"kind": "outcome", "reason": "40 of 59 complete",
                    "evidence": {"table": ccd_table({9: "RUN05"}, unfinished=set(range(40, 63)))}})
    walk(store, "exposure", "1234.100003", [("found", "dagmaker"), ("no_templates", "no_templates")],
         data={"season": 1234, "expnum": 100003, "band": "z", "nite": "20240602"},
         reason="DAGMaker: no template images overlap")
    walk(store, "exposure", "1234.100004", [], data={"season": 1234, "expnum": 100004})
    store.record_file(path=XSS_FILE, root="/data/raw", kind="raw", size=10, mtime=0.0, status="bad",
                      reason="not FITS: <b>bold</b> claim")
    store.add_problem("hook:mail", "exit 3: </td></tr></table><script>document.title='pwned3'</script>")
    store.heartbeat("7 done, 2 running", started=time.time() - 3600)
    store.close()
    return config, load_machines(machines_dir)


class Dom(html.parser.HTMLParser):
    """Chromium's serialised DOM as a flat list of elements with their text and context."""

    VOID = {"meta", "br", "img", "input", "hr", "link", "area", "base", "col", "embed", "source", "wbr"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self.stack: list[dict] = []
        self.text_parts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": "", "row": None, "table": None}
        for parent in reversed(self.stack):
            if el["row"] is None and parent["tag"] == "tr":
                el["row"] = parent["attrs"].get("data-key")
            if el["table"] is None and parent["tag"] == "table":
                el["table"] = parent["attrs"].get("id")
        self.elements.append(el)
        if tag not in self.VOID:
            self.stack.append(el)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        self.text_parts.append(data)
        for el in self.stack:
            el["text"] += data

    def find(self, tag: str, **attrs) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag
                and all(a in e["attrs"].get(k.replace("_", "-"), "").split() if k == "class"
                        else e["attrs"].get(k.replace("_", "-")) == a for k, a in attrs.items())]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is missing: `make test-tools` installs Debian's chromium")
    return path


def browse(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",  # noqa: S603
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--no-first-run", f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=60)


def test_report_in_chromium(populated, tmp_path):
    config, machines = populated
    out = report(config, machines, tmp_path / "out")
    assert out == tmp_path / "out" / "index.html"
    res = browse(out, tmp_path / "profile", "--dump-dom")
    assert res.returncode == 0 and "</html>" in res.stdout, res.stderr[-2000:]
    dom = Dom(res.stdout)

    # Nothing injected ran, and everything injected is there as text.
    assert dom.find("title")[0]["text"] == "autoproc report"  # document.title (the others are SVG tooltips)
    assert not dom.find("script") and not dom.find("img")
    assert not [e for e in dom.find("b") if e["text"] == "bold"]
    text = "".join(dom.text_parts)
    for shown in (XSS_KEY, "<script>document.title='pwned'</script> & more", XSS_FILE, "<b>bold</b>",
                  "<script>document.title='pwned3'</script>"):
        assert shown in text, shown

    # Nights x stages: colours by where each night is.
    def cell(table: str, key: str, stage: str) -> dict:
        found = [e for e in dom.find("td", data_stage=stage) if e["table"] == table and e["row"] == key]
        assert len(found) == 1, (table, key, stage)
        return found[0]

    grid = dom.find("table", id="grid-night")[0]
    keys = [e["attrs"]["data-key"] for e in dom.find("tr") if e["table"] == "grid-night" and "data-key" in e["attrs"]]
    assert keys == [XSS_KEY, "20240604", "20240603", "20240602", "20240601"]  # newest (greatest) keys first
    assert grid and "failed" in cell("grid-night", "20240603", "flat")["attrs"]["class"]
    assert "passed" in cell("grid-night", "20240603", "bias")["attrs"]["class"]
    assert "pending" in cell("grid-night", "20240603", "drp")["attrs"]["class"]
    drp = cell("grid-night", "20240602", "drp")
    assert "current" in drp["attrs"]["class"] and "×2" in drp["text"]
    assert "held" in cell("grid-night", "20240604", "bias")["attrs"]["class"]
    assert all("passed" in cell("grid-night", "20240601", s)["attrs"]["class"] for s in ("bias", "diff"))
    assert "raws: 118 ingested, 2 skipped; missing calibs: flat r" in next(
        e["text"] for e in dom.find("tr", data_key="20240603"))
    assert "20240601, 20240602" in next(e["text"] for e in dom.find("tr", data_key="allSky"))

    # Seasons x exposures: the CCD heat map.
    ccds = [e for e in dom.find("td", **{"class": "ccd"}) if e["table"] == "heatmap-1234"]
    row1 = [e for e in ccds if e["row"] == "1234.100001"]
    assert len(row1) == 59
    assert sum("c-done" in e["attrs"]["class"] for e in row1) == 57
    fails = {e["attrs"]["data-chip"]: e["text"] for e in row1 if "c-fail" in e["attrs"]["class"]}
    assert fails == {"05": "05", "17": "11"}
    row2 = [e for e in ccds if e["row"] == "1234.100002"]  # still polling: the last poll's table
    assert sum("c-done" in e["attrs"]["class"] for e in row2) == 36
    assert sum("c-never_started" in e["attrs"]["class"] for e in row2) == 22
    complete = next(e for e in dom.find("td", **{"class": "completeness"}) if e["row"] == "1234.100001")
    assert "57/59" in complete["text"]
    assert [e for e in ccds if e["row"] == "1234.100004"] == [] or all(
        "c-missing" in e["attrs"]["class"] for e in ccds if e["row"] == "1234.100004")

    # Attempts link to their logs; the operator's changes stand out; diagrams are drawn.
    links = [e["attrs"]["href"] for e in dom.find("a") if e["table"] == "attempts-table"]
    assert len(links) == 8 and all((out.parent / unquote(h)).is_file() for h in links)
    operator_rows = [e for e in dom.find("tr", **{"class": "operator"})]
    assert len(operator_rows) == 2 and all("dana" in e["text"] for e in operator_rows)
    assert {e["attrs"]["data-state"] for e in dom.find("g", **{"class": "state"})} >= {"flat", "ccd_check"}
    assert "needs a person" in text and "no flat in band r within 14 nights" in text

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    res = browse(out, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2200",
                 "--hide-scrollbars")
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]


def test_report_command_and_the_daemon_keep_it_fresh(write_config, daemon_factory, tmp_path):
    config, path = write_config(report={"min_interval_seconds": 0.2})
    store = Store(config.db)
    store.ensure_subject("widget", "w<1>", "new", actor="test")
    store.close()
    res = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "report", "--out",  # noqa: S603
                          str(tmp_path / "rep")], capture_output=True, text=True, timeout=60, env=child_env())
    assert res.returncode == 0, res.stderr
    page = Path(res.stdout.strip())
    assert page == tmp_path / "rep" / "index.html" and "w&lt;1&gt;" in page.read_text()
    # The daemon writes <root>/report/index.html, and again after changes.
    d = daemon_factory(path).start()
    daemon_page = config.root / "report" / "index.html"
    wait_for(daemon_page.exists, what="the daemon's report")
    store = Store(config.db)
    store.ensure_subject("widget", "second", "new", actor="test")
    store.close()
    wait_for(lambda: "second" in daemon_page.read_text(), timeout=10, what="the report rewritten")
    d.stop()
