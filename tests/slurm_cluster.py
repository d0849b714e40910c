"""A real single-node Slurm cluster for the tests (a pytest plugin, loaded by conftest).

`slurm_cluster` (session scope) starts `munged`, `slurmctld` and `slurmd` as children of the
test process, with every file (slurm.conf, a fresh munge key, sockets, state, logs) in a
temp dir and free ports on 127.0.0.1, and waits until `sinfo` shows the node idle. Clients
find it only through `SLURM_CONF`, which the fixture sets for the session: no test talks to a
cluster it did not start. At the end every job is cancelled, the queue is waited empty, and
only then are the daemons stopped (jobs outlive killed daemons).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sinfo", "squeue", "scancel", "scontrol", "sbatch")
PARTITION = "debug"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _program(name: str) -> str:
    for d in (os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/bin", "/sbin"]):
        if d and os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    pytest.fail(f"{name} not found: `make test` installs Debian's slurm-wlm, slurmctld, slurmd, "
                "slurm-client and munge (see the Makefile's TEST_TOOLS)")


SLURM_CONF = """\
ClusterName=autoproc-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket.2
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldTimeout=300
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
DefMemPerCPU=1000
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=20000 State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""
# OverSubscribe: the one node stands in for a cluster, so the daemon's HTEX block and a step's
# bps block (both --exclusive, Parsl's default) can run on it at the same time.


@dataclass
class SlurmCluster:
    """The running test cluster: its files, its node, and helpers that only talk to it."""

    dir: Path
    conf: Path
    node: str
    partition: str = PARTITION
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> str:
        """A Slurm client command against this cluster; its stdout."""
        res = subprocess.run([_program(argv[0]), *argv[1:]], env=self.env(), capture_output=True,  # noqa: S603
                             text=True, timeout=30)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows and has not finished (squeue: no accounting here)."""
        out = self.run("squeue", "-h", "-a", "-o", "%i|%T|%j|%k|%r|%N")
        keys = ("id", "state", "name", "comment", "reason", "nodes")
        return [dict(zip(keys, line.split("|", 5), strict=True)) for line in out.splitlines() if line.strip()]

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%t").strip()

    def cancel_all(self, timeout: float = 60.0) -> None:
        """Cancel every job and wait for an empty queue."""
        self.run("scancel", "--full", "--user", _user_name(), check=False)
        end = time.monotonic() + timeout
        while self.jobs():
            if time.monotonic() > end:
                raise RuntimeError(f"jobs still queued after scancel: {self.jobs()}")
            time.sleep(0.2)

    def resume_node(self) -> None:
        self.run("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)

    def start_daemon(self, name: str) -> None:
        """Start (or restart) one of the three daemons as a child of the test process."""
        log = open(self.dir / f"{name}.out", "a")  # noqa: SIM115 - the child holds it
        argv = {
            "munged": [_program("munged"), "-F", "--force", f"--socket={self.dir}/munge/munge.socket.2",
                       f"--key-file={self.dir}/munge/munge.key", f"--pid-file={self.dir}/munge/munged.pid",
                       f"--log-file={self.dir}/munge/munged.log", f"--seed-file={self.dir}/munge/munged.seed"],
            "slurmctld": [_program("slurmctld"), "-D", "-f", str(self.conf)],
            "slurmd": [_program("slurmd"), "-D", "-f", str(self.conf)],
        }[name]
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                            env=self.env(), start_new_session=True)
        log.close()

    def stop_daemon(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait_idle(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        state = ""
        while time.monotonic() < end:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}: see {self.dir}/{name}.out")
            state = self.node_state() if "slurmctld" in self.procs else ""
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"node {self.node} not idle after {timeout} s (sinfo: {state!r}); logs in {self.dir}")


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def start_cluster(root: Path) -> SlurmCluster:
    """Write the files and start the three daemons; returns once the node is idle."""
    for name in SLURM_PROGRAMS:
        _program(name)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munge's socket directory must be reachable by job users
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    (root / "munge").chmod(0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, user=_user_name(), ctld_port=_free_port(), d_port=_free_port(),
                                      dir=root, cpus=os.cpu_count() or 2, partition=PARTITION))
    cluster = SlurmCluster(dir=root, conf=conf, node=host)
    cluster.start_daemon("munged")
    sock = root / "munge" / "munge.socket.2"
    end = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > end or cluster.procs["munged"].poll() is not None:
            stop_cluster(cluster)
            raise RuntimeError(f"munged did not start: see {root}/munged.out")
        time.sleep(0.05)
    cluster.start_daemon("slurmctld")
    cluster.start_daemon("slurmd")
    try:
        cluster.wait_idle()
    except Exception:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel every job, wait for an empty queue, then stop the daemons (all at once)."""
    try:
        if "slurmctld" not in cluster.procs:
            cluster.start_daemon("slurmctld")  # a test left it stopped: it is needed to cancel
            time.sleep(1.0)
        cluster.resume_node()
        cluster.cancel_all()
    finally:
        for proc in cluster.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name in list(cluster.procs):
            cluster.stop_daemon(name)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The session's own Slurm cluster; SLURM_CONF points at it for the whole session."""
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        stop_cluster(cluster)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster, cleaned after each test: no job of one test runs into the next, and a
    node a test drained is resumed."""
    yield slurm_cluster
    if "slurmctld" not in slurm_cluster.procs:
        slurm_cluster.start_daemon("slurmctld")
    slurm_cluster.resume_node()
    slurm_cluster.cancel_all()
    slurm_cluster.wait_idle()
