"""Run the autoproc CLI as another OS user: `python as_user.py USER CLAIMED_USER -- ARGS...`.

Started as root, it imports everything the CLI will need, then really becomes USER
(setgroups, setgid, setuid: the uid the daemon reads from the socket is USER's), sets
$USER to CLAIMED_USER (which must not matter), and runs the CLI. The imports come first
because the interpreter lives under /root, which other users cannot enter.
"""

import difflib  # noqa: F401 - click's error messages
import os
import pwd
import sys
from pathlib import Path

import rich.console  # noqa: F401
import rich.live  # noqa: F401
import rich.table  # noqa: F401

import autoproc.cli.render  # noqa: F401
import autoproc.control  # noqa: F401
import autoproc.desgw.cli  # noqa: F401
import autoproc.script.client  # noqa: F401
import autoproc.script.inspect  # noqa: F401
import autoproc.script.report  # noqa: F401
from autoproc.cli import main
from autoproc.machines import load_machines

load_machines(Path(__file__).resolve().parent / "machines")  # imports the machines' plugins and transitions

user, claimed, sep, *args = sys.argv[1:]
assert sep == "--"
pw = pwd.getpwnam(user)
os.setgroups(os.getgrouplist(user, pw.pw_gid))
os.setgid(pw.pw_gid)
os.setuid(pw.pw_uid)
os.environ.update(USER=claimed, LOGNAME=claimed, HOME="/")
os.chdir("/")
main(args, prog_name="autoproc")
