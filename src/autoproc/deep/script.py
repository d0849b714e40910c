"""`autoproc deep init`: the one-time DEEP repository set-up (docs/DEEP.md#repository-setup),
idempotent, plus a subject for every configured template coadd."""

from __future__ import annotations

from autoproc.config import Config
from autoproc.machines import StateMachine
from autoproc.store import Store


def init(config: Config, store: Store, machines: dict[str, StateMachine], *, operator: str = "autoproc"
         ) -> list[str]:
    """Create the repo (SQLite or the configured registry URL), register the instrument and
    the skymap, ingest defects, fakes and refcats as configured (`deep.repo.init_repo`),
    then make sure each `deep.templates` entry has its `template` subject (so it shows in
    `autoproc status` before its first night is past DRP). Returns one line per step."""
    from autoproc.deep.repo import RepoSetup, init_repo
    from autoproc.deep.stages import repo_path

    cfg = config.deep
    messages = init_repo(RepoSetup(
        root=repo_path(config), registry_db=cfg.registry_db,
        registry_namespace=cfg.registry_namespace, instrument_class=cfg.instrument_class,
        skymap_name=cfg.skymap, fields=list(cfg.fields), bpm_dir=cfg.bpm_dir, fakes_table=cfg.fakes_table,
        refcat_command=cfg.refcat_command))
    template = machines.get("template")
    for name in sorted(cfg.templates):
        if template is None:
            messages.append(f"template {name}: no `template` machine loaded; subject not created")
            continue
        subject, created = store.ensure_subject("template", name, template.spec.initial, actor=operator,
                                                reason="configured in deep.templates")
        messages.append(f"template {name}: {'created' if created else 'exists'} ({subject.state})")
    return messages
