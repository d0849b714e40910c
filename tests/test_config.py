from pathlib import Path

import pytest
from click.testing import CliRunner

from autoproc.cli import main
from autoproc.config import ConfigError, load_config


def test_defaults_need_no_file(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOPROC_ROOT", str(tmp_path / "r"))
    cfg = load_config(None)
    assert cfg.db == tmp_path / "r" / "autoproc.db"
    assert cfg.work_dir == tmp_path / "r" / "work"
    assert cfg.executor.kind == "threads"


def test_error_names_key_path_and_expectation(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("watch:\n  - {name: raws, path: /data, kind: raw, mode: sometimes}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "watch.0.mode" in text and "'auto', 'inotify' or 'poll'" in text and "sometimes" in text


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("retyr: {max_tries: 2}\n")
    with pytest.raises(ConfigError, match="retyr: Extra inputs are not permitted"):
        load_config(path)


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("root: /x\nwatch: [\n  - a: b\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_duplicate_watch_names(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("watch:\n  - {name: a, path: /x, kind: k}\n  - {name: a, path: /y, kind: k}\n")
    with pytest.raises(ConfigError, match="repeated: a"):
        load_config(path)


def test_config_check_cli(write_config, tmp_path):
    _, path = write_config()
    ok = CliRunner().invoke(main, ["config", "check", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "OK (3 machines: gadget, sloth, widget" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("executor: {kind: rockets}\n")
    res = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert res.exit_code == 2
    assert "executor.kind" in res.output


def test_config_check_reports_bad_machines(write_config, tmp_path):
    machines = tmp_path / "m"
    machines.mkdir()
    (machines / "thing.yaml").write_text(
        "kind: thing\ninitial: a\nstates: {a: {}}\ntransitions: [{trigger: go, source: a, dest: b}]\n")
    _, path = write_config(machines_dir=str(machines))
    res = CliRunner().invoke(main, ["config", "check", str(path)])
    assert res.exit_code == 2
    assert "unknown dest state 'b'" in res.output and str(Path(machines / "thing.yaml")) in res.output


def test_expected_detectors_are_decam_ccds(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("deep:\n  expected_detectors: {object: [1, 2, 63]}\n")
    with pytest.raises(ConfigError, match=r"deep: .*expected_detectors.object: CCDNUM \[63\] not DECam's \(1-62\)"):
        load_config(path)
    path.write_text("deep:\n  expected_detectors: {zero: []}\n")
    with pytest.raises(ConfigError, match="expected_detectors.zero: an empty list"):
        load_config(path)
    path.write_text("deep:\n  expected_detectors: {'*': [1, 3]}\n  incomplete_grace_seconds: 30\n")
    cfg = load_config(path)
    assert cfg.deep.expected_detectors == {"*": [1, 3]} and cfg.deep.incomplete_grace_seconds == 30


@pytest.mark.parametrize(("yaml_text", "where", "says"), [
    ("executor: {kind: htex, provider: {kind: slurm, walltime: '25:61:00'}}", "executor.provider.walltime",
     "[D-]HH:MM:SS"),
    ("executor: {kind: htex, provider: {kind: slurm, walltime: '00:00:00'}}", "executor.provider.walltime",
     "greater than zero"),
    ("executor: {kind: htex, provider: {kind: slurm, partition: 'debug; rm -rf /'}}", "executor.provider.partition",
     "must match"),
    ("executor: {kind: htex, provider: {kind: slurm, min_blocks: 3, max_blocks: 2}}", "executor.provider",
     "min_blocks (3) is more than max_blocks (2)"),
    ("executor: {kind: htex, provider: {kind: slurm, init_blocks: 2}}", "executor.provider",
     "init_blocks (2) is more than max_blocks (1)"),
    ("executor: {kind: htex, provider: {kind: slurm, scheduler_options: ['--mem=4G']}}",
     "executor.provider.scheduler_options", "not one `#SBATCH --option` line"),
    ("executor: {kind: htex, provider: {kind: slurm, scheduler_options: [\"#SBATCH --mem=4G\\nrm -rf /\"]}}",
     "executor.provider.scheduler_options", "not one `#SBATCH --option` line"),
    ("executor: {kind: htex, provider: {kind: slurm, launcher: mpirun}}", "executor.provider.launcher",
     "'single_node' or 'srun'"),
    ("executor: {kind: htex, provider: {kind: local, partition: debug}}", "executor.provider",
     "partition: only for kind slurm"),
    ("executor: {kind: htex, strategy_period: 0}", "executor.strategy_period", "greater than 0"),
    ("executor: {kind: htex, address: 'host name'}", "executor.address", "not a host name or IP"),
    ("executor: {kind: htex, provider: {kind: slurm, mem_per_node: 0}}", "executor.provider.mem_per_node",
     "greater than or equal to 1"),
    ("deep: {bps_site: slurm, slurm: {walltime: 4h}}", "deep.slurm.walltime", "[D-]HH:MM:SS"),
    ("deep: {bps_site: slurm, slurm: {nodes: 0}}", "deep.slurm.nodes", "greater than or equal to 1"),
    ("deep: {bps_site: condor}", "deep.bps_site", "'local' or 'slurm'"),
])
def test_impossible_slurm_settings_are_refused_with_the_key_path(tmp_path, yaml_text, where, says):
    path = tmp_path / "a.yaml"
    path.write_text(yaml_text + "\n")
    result = CliRunner().invoke(main, ["-c", str(path), "config", "check"])
    assert result.exit_code != 0
    line = next((ln for ln in result.output.splitlines() if ln.strip().startswith(where + ":")), None)
    assert line is not None and says in line, result.output


def test_a_complete_slurm_site_is_accepted(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(
        "executor:\n  kind: htex\n  address: 10.1.2.3\n  strategy_period: 1\n  provider:\n    kind: slurm\n"
        "    partition: compute\n    account: astro\n    qos: normal\n    walltime: '1-00:00:00'\n"
        "    nodes_per_block: 2\n    cores_per_node: 32\n    mem_per_node: 120\n    exclusive: false\n"
        "    init_blocks: 1\n    min_blocks: 1\n    max_blocks: 4\n    launcher: srun\n"
        "    worker_init: 'source /opt/autoproc/bin/activate; export SLURM_EXPORT_ENV=ALL'\n"
        "    scheduler_options: ['#SBATCH --constraint=haswell', '#SBATCH --mail-type=FAIL']\n"
        "deep:\n  bps_site: slurm\n  slurm: {partition: compute, nodes: 1, walltime: '04:00:00'}\n")
    cfg = load_config(path)
    assert cfg.uses_slurm and cfg.executor.provider.launcher == "srun" and cfg.deep.slurm.partition == "compute"
