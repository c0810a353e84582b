"""SlurmConfig: rompy's fields and rules, the sbatch options and batch script a run gets.

Nothing here talks to the cluster: validation, option building and the script
are pure. The cluster's own tests are in test_slurm.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

import tether
from tether import ConfigError, Job, SlurmConfig
from tether.backends.slurm._script import Member, limits, render, sbatch_options
from tether.backends.slurm.config import slurm_memory, time_seconds, time_text

# rompy's example (docs: "Custom Run Backend"), without its second name for the queue.
ROMPY_SLURM_YML = """\
# slurm_backend.yml
type: slurm
queue: "gpu"
nodes: 2
time_limit: "2:00:00"
timeout: 7200
"""


def test_rompy_example_loads_with_queue_as_the_partition(tmp_path: Path) -> None:
    path = tmp_path / "slurm_backend.yml"
    path.write_text(ROMPY_SLURM_YML)
    config = tether.load_config(path)
    assert isinstance(config, SlurmConfig)
    assert (config.partition, config.nodes, config.time_limit, config.timeout) == (
        "gpu",
        2,
        "2:00:00",
        7200,
    )
    # Saved and reloaded under its own name.
    assert SlurmConfig.from_record(config.to_record()).partition == "gpu"


def test_queue_and_partition_naming_two_partitions_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "both.yml"
    path.write_text(ROMPY_SLURM_YML + 'partition: "compute"\n')
    with pytest.raises(ConfigError, match=r"same Slurm setting .*keep one") as info:
        tether.load_config(path)
    assert "queue 'gpu' and partition 'compute'" in str(info.value)
    assert SlurmConfig(queue="debug", partition="debug").partition == "debug"


@pytest.mark.parametrize(("nodes", "ok"), [(1, True), (100, True), (0, False), (101, False)])
def test_nodes_are_1_to_100(nodes: int, ok: bool) -> None:
    if ok:
        assert SlurmConfig(nodes=nodes).nodes == nodes
    else:
        with pytest.raises(ValidationError, match="nodes"):
            SlurmConfig(nodes=nodes)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1:00:00", 3600), ("2-00:00:00", 172800), ("0:01:30", 90), ("10:00:00", 36000)],
)
def test_time_limits_are_d_hh_mm_ss(text: str, seconds: int) -> None:
    assert time_seconds(SlurmConfig(time_limit=text).time_limit or "") == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("90", r"time_limit '90' is not '\[D-\]HH:MM:SS'"),
        ("1:75:00", "is not"),
        ("tomorrow", "is not"),
        ("0:00:30", "under a minute"),
    ],
)
def test_bad_time_limits_say_the_form(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SlurmConfig(time_limit=text)


@pytest.mark.parametrize(("mem", "normal"), [("4G", "4G"), ("500m", "500M"), ("1024", "1024")])
def test_mem_is_a_slurm_size(mem: str, normal: str) -> None:
    assert SlurmConfig(mem=mem).mem == normal


@pytest.mark.parametrize("mem", ["4 GB", "lots", "-1G", "4Gi"])
def test_bad_mem_is_rejected_with_the_form(mem: str) -> None:
    with pytest.raises(ValidationError, match=r"not a Slurm size: a number with K, M, G or T"):
        SlurmConfig(mem=mem)


@pytest.mark.parametrize("field", ["partition", "account", "qos", "constraint"])
def test_names_with_spaces_or_newlines_are_refused(field: str) -> None:
    with pytest.raises(ValidationError, match="is not a Slurm name") as info:
        SlurmConfig(**{field: "debug\n#SBATCH --uid=0"})
    assert field in str(info.value)


def test_extra_sbatch_lines_must_be_options() -> None:
    config = SlurmConfig(extra_sbatch=["#SBATCH --mail-type=END", "--exclusive", "-N 2"])
    assert config.extra_sbatch == ["--mail-type=END", "--exclusive", "-N 2"]
    for line in ["mail-type=END", "echo hi", "--ok\nrm -rf /", ""]:
        with pytest.raises(ValidationError, match="is not an sbatch option"):
            SlurmConfig(extra_sbatch=[line])


@pytest.mark.parametrize("line", ["--output=/tmp/x", "-J name", "--array=0-3", "--time=1:00"])
def test_extra_sbatch_cannot_set_what_tether_sets(line: str) -> None:
    with pytest.raises(ValidationError, match="which tether sets itself"):
        SlurmConfig(extra_sbatch=[line])


def test_poll_interval_max_below_the_interval_is_an_error() -> None:
    with pytest.raises(ValidationError, match=r"poll_interval_max .* is below poll_interval"):
        SlurmConfig(poll_interval=5, poll_interval_max=2)


def test_schema_lists_the_fields_and_examples_validate() -> None:
    schema = SlurmConfig.model_json_schema()
    for field in ("partition", "nodes", "ntasks", "cpus_per_task", "mem", "gpus"):
        assert field in schema["properties"]
    for example in schema["examples"]:
        SlurmConfig.model_validate(example)


def test_cache_key_ignores_where_and_how_long_not_what() -> None:
    one = SlurmConfig(partition="a", account="x", time_limit="1:00:00", mem="4G")
    other = SlurmConfig(partition="b", account="y", time_limit="2:00:00", mem="4G")
    assert one.cache_fields() == other.cache_fields()
    assert one.cache_fields() != SlurmConfig(mem="8G").cache_fields()


# -- options and script --------------------------------------------------------------


def test_time_limit_is_derived_from_the_timeout_past_the_supervisor() -> None:
    config = SlurmConfig(timeout=600, cancel_grace=10)
    timeout, limit = limits(config, Job(command="true"))
    assert timeout == 600 and limit == "00:12:00"  # 600 + 10 + 60 s, whole minutes
    timeout, limit = limits(config, Job(command="true", resources={"walltime": "0:02:00"}))
    assert timeout == 120 and limit == "00:04:00"
    assert time_text(86400 + 70) == "1-00:02:00"


def test_an_explicit_short_time_limit_brings_the_supervisor_deadline_forward() -> None:
    config = SlurmConfig(timeout=7200, time_limit="0:10:00", cancel_grace=10)
    timeout, limit = limits(config, Job(command="true"))
    assert limit == "0:10:00" and timeout == 600 - 10 - 5


def test_options_come_from_the_config_with_the_job_resources_winning() -> None:
    config = SlurmConfig(
        partition="debug",
        nodes=2,
        ntasks=4,
        cpus_per_task=2,
        mem="4G",
        gpus=1,
        account="ocean",
        qos="high",
        constraint="skylake",
        exclusive=True,
        extra_sbatch=['--comment="two words"'],
    )
    options = sbatch_options(config, Job(command="true"), "01:00:00")
    assert options == [
        "--time=01:00:00",
        "--nodes=2",
        "--no-requeue",
        "--partition=debug",
        "--ntasks=4",
        "--cpus-per-task=2",
        "--mem=4G",
        "--gpus=1",
        "--account=ocean",
        "--qos=high",
        "--constraint=skylake",
        "--exclusive",
        "--comment=two words",
    ]
    job = Job(command="true", resources={"cpus": 8, "memory": "512m", "gpus": 0})
    options = sbatch_options(config, job, "01:00:00")
    assert "--cpus-per-task=8" in options and "--mem=512M" in options
    assert not any(o.startswith("--gpus") for o in options)
    assert slurm_memory("1g") == "1024M" and slurm_memory("100") == "1M"


def test_the_script_execs_the_supervisor_with_the_run_folder(tmp_path: Path) -> None:
    config = SlurmConfig(python="/opt/py/bin/python3", cancel_grace=3)
    member = Member("r-1", tmp_path / "r 1", tmp_path / "r 1", ["/bin/sh", "-c", "echo 'hi'"])
    script = render(config, [member], 60.0, ["--time=00:02:00"])
    assert script.startswith("#!/bin/bash\n")
    last = script.strip().splitlines()[-1]
    assert last.endswith(" 3<<<g")  # the supervisor's gate opens at once
    argv = shlex.split(last.removeprefix("exec ").removesuffix(" 3<<<g"))
    assert argv[0] == "/opt/py/bin/python3" and argv[3].endswith("fallback.py")
    assert argv[4:9] == [str(member.run_dir), str(member.cwd), "60.0", "3.0", "1"]
    assert argv[9:] == member.argv


def test_an_array_script_has_one_case_per_member(tmp_path: Path) -> None:
    members = [Member(f"a_{i}", tmp_path / f"a_{i}", tmp_path, ["true"]) for i in range(3)]
    script = render(SlurmConfig(), members, 60.0, [])
    assert 'case "$SLURM_ARRAY_TASK_ID" in' in script
    for index, member in enumerate(members):
        assert f"  {index})" in script and str(member.run_dir) in script
    assert script.rstrip().endswith("exit 2")


def test_secret_env_values_never_reach_the_script_or_the_record(tmp_path: Path) -> None:
    config = SlurmConfig(env_vars={"TOKEN": SecretStr("s3cr3t-x")})
    member = Member("r", tmp_path, tmp_path, ["true"])
    assert "s3cr3t-x" not in render(config, [member], 60.0, [])
    assert "s3cr3t-x" not in json.dumps(config.to_record())


def test_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    verdict = SlurmConfig.availability()
    assert not verdict and verdict.reason.startswith("sbatch not found on PATH")
