"""Prometheus metrics: what a site's monitoring scrapes (Prometheus text format 0.0.4).

The daemon gathers them in a thread of its own every `metrics.interval_seconds`, from its
own read-only connection to the store and the engine's in-memory counters, and writes them
atomically to `metrics.file` (node_exporter's textfile collector reads `*.prom` files; a
half-written file is never seen) and, with `metrics.listen`, serves the same text at
`/metrics` on a loopback address. Names follow the Prometheus conventions: `autoproc_`
prefix, base units (seconds), `_total` on counters, what varies in labels.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from autoproc.config import Config
from autoproc.store import Store

log = logging.getLogger("autoproc.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Attempt statuses that no longer change: counted, so their totals only grow.
FINISHED = ("succeeded", "failed", "interrupted", "superseded")


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class Text:
    """Families in the exposition format: HELP and TYPE once, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for suffix, labels, value in samples:
            shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{suffix}{{{shown}}} {_number(value)}" if shown
                              else f"{name}{suffix} {_number(value)}")

    def __str__(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(store: Store, engine: Any = None, *, now: float | None = None) -> str:
    """The metrics of `store`, and of the running `engine` (heartbeat, watcher lag, lock waits)."""
    q = store.conn.execute
    out = Text()
    out.family("autoproc_subjects", "gauge", "Subjects by kind and state.",
               (("", {"kind": k, "state": s}, n) for k, s, n in store.counts()))
    out.family("autoproc_subjects_held", "gauge", "Subjects held for a person, by kind.",
               (("", {"kind": k}, n) for k, n in q(
                   "SELECT kind, count(*) FROM subjects WHERE held IS NOT NULL GROUP BY kind ORDER BY kind")))
    rows = q("SELECT s.kind, a.stage, a.status, count(*), sum(a.try > 1) FROM attempts a"
             " JOIN subjects s ON s.id = a.subject_id GROUP BY 1, 2, 3 ORDER BY 1, 2, 3").fetchall()
    out.family("autoproc_attempts_running", "gauge", "Attempts running now, by kind and stage.",
               (("", {"kind": k, "stage": st}, n) for k, st, status, n, _ in rows if status == "running"))
    out.family("autoproc_attempts", "counter", "Finished attempts by kind, stage and how they ended.",
               (("_total", {"kind": k, "stage": st, "status": status}, n) for k, st, status, n, _ in rows
                if status in FINISHED))
    retries: dict[tuple[str, str], int] = {}
    for k, st, _status, _n, again in rows:
        retries[(k, st)] = retries.get((k, st), 0) + (again or 0)
    out.family("autoproc_retries", "counter", "Attempts that were a retry (not a state's first try).",
               (("_total", {"kind": k, "stage": st}, n) for (k, st), n in sorted(retries.items())))
    out.family("autoproc_problems", "counter", "Problems recorded (status shows the recent ones), by source.",
               (("_total", {"source": src}, n) for src, n in q(
                   "SELECT source, count(*) FROM problems GROUP BY source ORDER BY source")))
    out.family("autoproc_intake_files", "gauge", "Files the watchers delivered, by status.",
               (("", {"status": st}, n) for st, n in sorted(store.file_counts().items())))
    if engine is not None:
        lag = engine.watcher_lag.snapshot()
        out.family("autoproc_watcher_lag_seconds", "summary",
                   "From a file's close to the watcher's event, per watched root.",
                   [s for root, (total, count) in sorted(lag.items())
                    for s in (("_sum", {"root": root}, total), ("_count", {"root": root}, count))])
        out.family("autoproc_engine_heartbeat_age_seconds", "gauge",
                   "Seconds since the engine loop last came round (a hung loop grows it).",
                   [("", {}, max(0.0, time.monotonic() - engine.loop_beat))])
        out.family("autoproc_store_write_lock_waits", "counter",
                   "Daemon writes that waited for the state database's write lock.",
                   [("_total", {}, engine.store.lock_waits)])
        out.family("autoproc_store_write_lock_wait_seconds", "counter",
                   "Seconds daemon writes spent waiting for the state database's write lock.",
                   [("_total", {}, engine.store.lock_wait_seconds)])
        out.family("autoproc_daemon_start_time_seconds", "gauge", "When the daemon started (Unix time).",
                   [("", {}, float(engine.started))])
    return str(out)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one rename; the temporary name does not end in .prom, so the textfile
    collector never reads it half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    # Like everything else the daemon writes, not world-readable: node_exporter's user reads it
    # as a member of the daemon's group (which it needs anyway to enter the state directory).
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)


class MetricsWriter:
    """Gathers the metrics every interval in its own thread; writes the file; serves /metrics."""

    def __init__(self, config: Callable[[], Config], engine: Any):
        self._config = config
        self._engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: http.server.ThreadingHTTPServer | None = None
        self.latest = ""

    def start(self) -> MetricsWriter:
        cfg = self._config().metrics
        self.gather()
        if cfg.listen:
            host, _, port = cfg.listen.rpartition(":")
            try:
                self._http = _server(host.strip("[]"), int(port), lambda: self.latest)
            except OSError as err:  # e.g. the port is taken: the file still gets written
                log.error("metrics: cannot listen on %s: %s", cfg.listen, err.strerror or err)
            else:
                threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True).start()
                log.info("metrics at http://%s/metrics", cfg.listen)
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._config().metrics.interval_seconds):
            self.gather()

    def gather(self) -> None:
        config = self._config()
        try:
            store = Store(config.db, readonly=True)
            try:
                self.latest = render(store, self._engine)
            finally:
                store.close()
            write_atomically(Path(config.metrics.file), self.latest)
        except Exception as err:  # noqa: BLE001 - monitoring must never stop the daemon
            log.warning("metrics: cannot gather or write %s: %s", config.metrics.file, err)

    def close(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)


def _server(host: str, port: int, text: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            body = text().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not operator news
            with contextlib.suppress(Exception):
                log.debug(format, *args)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("MetricsServer", (http.server.ThreadingHTTPServer,),
                        {"address_family": family, "daemon_threads": True})
    return server_class((host, port), Handler)
