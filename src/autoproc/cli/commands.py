"""Click commands. Each parses its options and calls one function in `autoproc.script`."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

import click

from autoproc import actions
from autoproc.config import Config, load_config
from autoproc.errors import AutoprocError


class Context:
    def __init__(self, config_path: Path | None):
        self.config_path = config_path
        self._config: Config | None = None
        self.log_levels: dict[str, str] = {}
        self.long_log: bool | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def store(self, readonly: bool = False):
        from autoproc.script.client import CLI_BUSY_TIMEOUT_MS
        from autoproc.store import Store

        return Store(self.config.db, create=not readonly, readonly=readonly, busy_timeout_ms=CLI_BUSY_TIMEOUT_MS)

    def machines(self):
        from autoproc.machines import load_configured

        return load_configured(self.config)


pass_ctx = click.make_pass_decorator(Context)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class Group(click.Group):
    """Turns the errors operators can cause into one clear line and exit status 2; and has,
    besides its own commands, each installed chain's group as `autoproc <chain> …`
    (autoproc.chain), loaded when asked for (a chain's commands import this module)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from autoproc.chain import chains

        return sorted({*super().list_commands(ctx), *(c.name for c in chains() if c.cli is not None)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from autoproc.chain import chains

        command = super().get_command(ctx, cmd_name)
        if command is None:
            command = next((c.command() for c in chains() if c.name == cmd_name and c.cli is not None), None)
        return command

    def invoke(self, ctx):
        from autoproc.store import StoreDamaged, StoreMissing, StoreUnsafe, is_damage

        try:
            return super().invoke(ctx)
        except (StoreDamaged, StoreMissing, StoreUnsafe) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_status)
        except AutoprocError as err:
            fail(str(err))
        except Exception as err:
            # A damaged page met mid-query (opening only reads the header): the same message.
            if not is_damage(err) or not isinstance(ctx.obj, Context):
                raise
            damaged = StoreDamaged(ctx.obj.config.db, str(err))
            click.echo(f"error: {damaged}", err=True)
            sys.exit(damaged.exit_status)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from autoproc.script.install import version_text

        click.echo(version_text())
        ctx.exit()


def _log_levels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    from autoproc.logs import LogLevelError, parse_levels

    try:
        return parse_levels(value)
    except LogLevelError as err:
        raise click.BadParameter(str(err)) from None


@click.group(cls=Group)
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), envvar="AUTOPROC_CONFIG",
              help="autoproc.yaml (default: embedded defaults; env AUTOPROC_CONFIG).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print autoproc's version and the middleware versions it runs with.")
@click.option("--log-level", "log_levels", multiple=True, callback=_log_levels, metavar="[NAME=]LEVEL",
              help="Log level of autoproc's own loggers, or of the logger NAME and those below it (e.g. "
              "lsst.daf.butler=DEBUG); repeatable. Over the configuration's `logging`.")
@click.option("--long-log", is_flag=True, default=None, help="Long log lines (thread, file and line too).")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_levels: dict[str, str], long_log: bool | None) -> None:
    """autoproc: drive DEEP and DESGW processing forward as data arrives."""
    ctx.obj = Context(config_path)
    ctx.obj.log_levels, ctx.obj.long_log = log_levels, long_log
    if (log_levels or long_log) and ctx.invoked_subcommand != "daemon":
        # The daemon sets up its logging itself, with the configuration's `logging` under these.
        from autoproc.config import LoggingConfig
        from autoproc.logs import configure

        configure(LoggingConfig(), log_levels, long_log)


@main.command()
@click.option("--no-watch", is_flag=True, help="Do not start the file watchers.")
@pass_ctx
def daemon(obj: Context, no_watch: bool) -> None:
    """Run the daemon in the foreground (systemd runs it like this)."""
    from autoproc.script.daemon import AlreadyRunning, run_daemon

    try:
        sys.exit(run_daemon(obj.config, obj.config_path, watch=not no_watch, log_levels=obj.log_levels,
                            long_log=obj.long_log))
    except AlreadyRunning as err:
        fail(str(err))


def _ago(t: float) -> str:
    return str(datetime.timedelta(seconds=int(time.time() - t)))


def _ask(obj: Context, verb: str, **fields) -> dict:
    """Carry out one request (`autoproc.requests`): through the daemon when it runs, else directly."""
    from autoproc.script.client import carry_out

    return carry_out(obj.config, obj.machines, {"verb": verb, **fields})


def _view(obj: Context, verb: str, **fields):
    return _ask(obj, verb, **fields)["data"]


def _print_json(value) -> None:
    click.echo(json.dumps(value, default=str, indent=1))


@main.command()
@click.option("--kind", help="Only this kind.")
@click.option("--state", help="List the subjects in this state.")
@click.option("--limit", default=50, show_default=True, help="Subjects listed at most.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", "watch_seconds", type=float, default=None, metavar="SECONDS",
              help="Redraw every SECONDS until interrupted.")
@pass_ctx
def status(obj: Context, kind: str | None, state: str | None, limit: int, as_json: bool,
           watch_seconds: float | None) -> None:
    """Subjects by kind and state, what needs a person, and whether the daemon runs."""

    def get() -> dict:
        return _view(obj, "status", kind=kind, state=state, limit=limit)

    if as_json:
        _print_json(get())
        return
    from rich.console import Console
    from rich.live import Live

    from autoproc.cli.render import status_view

    if watch_seconds is None:
        Console().print(status_view(get()))
        return
    with Live(status_view(get()), auto_refresh=False) as live:
        try:
            while True:
                time.sleep(watch_seconds)
                live.update(status_view(get()), refresh=True)
        except KeyboardInterrupt:
            pass


@main.command()
@click.argument("kind")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wide", is_flag=True, help="Every attempt column (argv-length paths and results in full).")
@pass_ctx
def show(obj: Context, kind: str, key: str, as_json: bool, wide: bool) -> None:
    """One subject: state, data, attempts with their logs, recent journal."""
    info = _view(obj, "show", kind=kind, key=key)
    if as_json:
        _print_json(info)
        return
    from rich.console import Console

    from autoproc.cli.render import subject_view

    Console().print(subject_view(info, wide=wide))


@main.command()
@click.argument("kind")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def history(obj: Context, kind: str, key: str, as_json: bool) -> None:
    """Every journaled change of one subject, oldest first."""
    rows = _view(obj, "history", kind=kind, key=key)
    if as_json:
        _print_json(rows)
        return
    from rich.console import Console

    from autoproc.cli.render import journal_table

    Console().print(journal_table(rows, f"history of {kind}/{key}"))


def _override_options(fn):
    fn = click.option("--reason", required=True, help="Why; goes into the journal.")(fn)
    fn = click.option("--operator", help="On whose behalf: a note journaled beside your own user name "
                      "(which the daemon reads from the connection, not from here).")(fn)
    return fn


def _change(obj: Context, verb: str, **fields) -> None:
    for line in _ask(obj, verb, **fields)["lines"]:
        click.echo(line)


@main.command("set")
@click.argument("kind")
@click.argument("key")
@click.argument("state")
@_override_options
@click.option("--force", is_flag=True, help="Allow a state no transition reaches from the current one.")
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@pass_ctx
def set_(obj: Context, kind, key, state, reason, operator, force, dry_run) -> None:
    """Move a subject to STATE (validated against its machine)."""
    _change(obj, "set", kind=kind, key=key, state=state, reason=reason, operator=operator, force=force,
            dry_run=dry_run)


def _subject_override(name: str, help_text: str) -> None:
    """A `KIND KEY --reason [--operator] [--dry-run]` command over `override.<name>`."""

    @main.command(name, help=help_text)
    @click.argument("kind")
    @click.argument("key")
    @_override_options
    @click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
    @pass_ctx
    def command(obj: Context, kind, key, reason, operator, dry_run) -> None:
        _change(obj, name, kind=kind, key=key, reason=reason, operator=operator, dry_run=dry_run)


_subject_override("retry", "Send a failed subject back to the step that failed, with a fresh retry budget.")
_subject_override("hold", "Stop the daemon from starting anything for a subject.")
_subject_override("release", "Let the daemon carry on with a held subject.")


@main.command("rerun-from")
@click.argument("kind")
@click.argument("key")
@click.argument("state")
@_override_options
@click.option("--dry-run", is_flag=True, help="Print the states that would run again and what would be set aside; "
              "change nothing.")
@pass_ctx
def rerun_from(obj: Context, kind, key, state, reason, operator, dry_run) -> None:
    """Reset a subject to an earlier STATE: it and the states after it run again, with what
    their earlier runs left set aside (a DEEP night's RUNs and certifications, a DESGW
    exposure's verdicts and older grid outputs)."""
    _change(obj, "rerun-from", kind=kind, key=key, state=state, reason=reason, operator=operator, dry_run=dry_run)


@main.command()
@click.argument("kind")
@click.argument("key")
@_override_options
@click.option("--data", "data_json", default=None, help="Initial data, as a JSON object.")
@pass_ctx
def add(obj: Context, kind, key, reason, operator, data_json) -> None:
    """Create a subject by hand."""
    try:
        data = json.loads(data_json) if data_json else None
    except json.JSONDecodeError as err:
        fail(f"--data is not JSON: {err}")
    if data is not None and not isinstance(data, dict):
        fail("--data must be a JSON object")
    _change(obj, "add", kind=kind, key=key, reason=reason, operator=operator, data=data)


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("demo-data"), show_default=True,
              help="Where the demo's data, repo, simulators and state go (an older demo there is replaced).")
@click.option("--timeout", type=float, default=420.0, show_default=True, help="Give up after this many seconds.")
def demo(directory: Path, timeout: float) -> None:
    """Run the daemon on a simulated DEEP night pair and DESGW season; write the report."""
    from rich.console import Console
    from rich.live import Live

    from autoproc.cli.render import demo_summary, status_view
    from autoproc.script import demo as demo_script

    console = Console()
    with Live(console=console, auto_refresh=False) as live:
        try:
            summary = demo_script.run(directory, timeout=timeout,
                                      show=lambda info: live.update(status_view(info), refresh=True))
        except demo_script.DemoError as err:
            fail(str(err))
    console.print(demo_summary(summary))
    if not summary["finished"]:
        sys.exit(1)


@main.command()
@click.argument("kind")
@click.option("--json", "as_json", is_flag=True, help="The machine's definition as JSON instead.")
@pass_ctx
def graph(obj: Context, kind: str, as_json: bool) -> None:
    """Print KIND's state machine as a mermaid state diagram."""
    machines = obj.machines()
    if kind not in machines:
        fail(f"unknown kind {kind!r}; known: {', '.join(sorted(machines))}")
    if as_json:
        _print_json(machines[kind].spec.model_dump(mode="json"))
        return
    click.echo(machines[kind].mermaid())


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) generated from the config model."""
    from autoproc.script.reference import reference

    click.echo(reference(), nl=False)


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def config_check(obj: Context, path: Path | None, as_json: bool) -> None:
    """Validate a configuration file (and the machines it names)."""
    path = path or obj.config_path
    cfg = load_config(path)
    obj._config = cfg
    machines = obj.machines()
    from autoproc.intake import check_watch_kinds

    check_watch_kinds(cfg)
    actions.check_environment()
    if as_json:
        _print_json({"config": str(path) if path else None, "machines": sorted(machines),
                     "watch": [w.name for w in cfg.watch], "db": str(cfg.db), "ok": True})
        return
    click.echo(f"{path or '<defaults>'}: OK ({len(machines)} machines: {', '.join(sorted(machines)) or 'none'};"
               f" {len(cfg.watch)} watched roots; state in {cfg.db})")

main.add_command(__import__("autoproc.cli.store", fromlist=["store"]).store)  # last: it uses pass_ctx
main.add_command(__import__("autoproc.cli.files", fromlist=["files"]).files)  # last: it uses pass_ctx


@main.command("report")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for index.html (default: config report.directory, or <root>/report).")
@click.option("--json", "as_json", is_flag=True, help="Print where the page went as JSON.")
@pass_ctx
def report_(obj: Context, out: Path | None, as_json: bool) -> None:
    """Write the static HTML report page (no server needed: open it in a browser)."""
    from autoproc.script.report import report as write

    page = write(obj.config, obj.machines(), out)
    if as_json:
        _print_json({"page": str(page)})
        return
    click.echo(page)


@main.command("install-unit")
@click.option("--user", is_flag=True, help="The user unit (systemctl --user), not the system one.")
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where autoproc.service goes (default: /etc/systemd/system, or "
                   "~/.config/systemd/user with --user).")
@click.option("--force", is_flag=True, help="Replace an existing unit file.")
def install_unit(user: bool, print_only: bool, directory: Path | None, force: bool) -> None:
    """Install (or print) the systemd unit shipped with autoproc."""
    from autoproc.script import install

    if print_only:
        click.echo(install.unit_text(user), nl=False)
        return
    path = install.install_unit(user, directory, force)
    click.echo(f"wrote {path}; then: systemctl {'--user ' if user else ''}daemon-reload")


@main.command("install-hooks")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace hooks of the same name.")
def install_hooks(directory: Path, force: bool) -> None:
    """Copy the example hooks (mail, slack-webhook, event-log) into DIRECTORY."""
    from autoproc.script import install

    for path in install.install_hooks(directory, force):
        click.echo(f"wrote {path}")

