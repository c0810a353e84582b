"""rompy's CLI flows with ``tether`` in its place, plus ``ls`` and ``run --detach``.

Driven through the real console script, with real config files (see test_cli.py).
"""

from __future__ import annotations

import json
import subprocess
import time

import yaml

from .cli_support import CLI

# rompy's documented local_backend.yml, verbatim but for the command.
LOCAL_BACKEND = """\
type: local
timeout: 7200
env_vars:
  OMP_NUM_THREADS: "4"
  MODEL_DEBUG: "true"
command: "echo threads=$OMP_NUM_THREADS debug=$MODEL_DEBUG"
shell: true
capture_output: true
"""


def _errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines of a failed command; each is one ``tether: error:`` line."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("tether: error: ") for line in lines), lines
    assert "Traceback" not in proc.stderr
    return lines


def test_run_with_backend_config_as_in_rompy(cli: CLI) -> None:
    job = cli.write("model_config.yml", "name: model\n")  # the command comes from the config
    config = cli.write("local_backend.yml", LOCAL_BACKEND)
    proc = cli("run", job, "--backend-config", config)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "threads=4 debug=true\n"
    assert "SUCCEEDED" in proc.stderr


def test_create_templates_validate_as_written(cli: CLI) -> None:
    for backend in ("local", "dummy"):
        for extra in ([], ["--with-examples"]):
            out = cli.tmp / f"{backend}{len(extra)}.yml"
            proc = cli("backends", "create", "--backend-type", backend, *extra, "--output", out)
            assert proc.returncode == 0, proc.stderr
            text = out.read_text()
            assert text.startswith(f"# tether backend config: {backend}")
            assert yaml.safe_load(text)["type"] == backend
            proc = cli("backends", "validate", out, "--backend-type", backend)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == f"{out}: valid {backend} config\n"
    # With examples, the template carries rompy's example values; without, the defaults.
    local = yaml.safe_load((cli.tmp / "local1.yml").read_text())
    assert local["timeout"] == 7200 and local["env_vars"]["OMP_NUM_THREADS"] == "4"
    assert yaml.safe_load((cli.tmp / "local0.yml").read_text())["timeout"] == 3600


def test_create_to_stdout_and_refuses_to_overwrite(cli: CLI) -> None:
    proc = cli("backends", "create", "--backend-type", "dummy", "--with-examples")
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["duration"] == 2.0
    target = cli.write("exists.yml", "keep me\n")
    (line,) = _errors(cli("backends", "create", "--backend-type", "local", "-o", target))
    assert "already exists" in line and "--force" in line
    assert target.read_text() == "keep me\n"
    proc = cli("backends", "create", "--backend-type", "local", "-o", target, "--force")
    assert proc.returncode == 0 and "type: local" in target.read_text()


def test_create_unknown_type_lists_known_ones(cli: CLI) -> None:
    (line,) = _errors(cli("backends", "create", "--backend-type", "lcoal"))
    assert "'lcoal'" in line and "local" in line and "dummy" in line


def test_validate_reports_every_problem_one_line_each(cli: CLI) -> None:
    bad = cli.write("bad.yml", "type: local\ntimeout: 30\nworking_dir: /no/such/dir\ncomand: x\n")
    lines = _errors(cli("backends", "validate", bad))
    assert len(lines) == 3
    assert f"{bad}:2: timeout: Input should be greater than or equal to 60" in lines[0]
    assert "working_dir" in lines[1] and "does not exist" in lines[1] and ":3:" in lines[1]
    assert "comand: unknown field" in lines[2] and ":4:" in lines[2]
    proc = cli("backends", "validate", bad, "--json")
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["valid"] is False and len(report["errors"]) == 3


def test_validate_type_from_option_or_mismatch(cli: CLI) -> None:
    untyped = cli.write("untyped.yml", "duration: 1\n")
    proc = cli("backends", "validate", untyped, "--backend-type", "dummy")
    assert proc.returncode == 0 and "valid dummy config" in proc.stdout
    (line,) = _errors(cli("backends", "validate", untyped))
    assert "'type'" in line
    (line,) = _errors(cli("backends", "validate", untyped, "--backend-type", "local"))
    assert "duration: unknown field" in line
    typed = cli.write("typed.yml", "type: dummy\n")
    (line,) = _errors(cli("backends", "validate", typed, "--backend-type", "local"))
    assert "'dummy' config, not 'local'" in line


def test_validate_postprocessor_configs_with_processor_type(cli: CLI) -> None:
    """rompy's ``backends validate F --processor-type noop``: F holds a postprocessor's
    options, checked against the options it takes."""
    noop = cli.write("noop.yml", "type: noop\nvalidate_outputs: true\n")
    proc = cli("backends", "validate", noop, "--processor-type", "noop")
    assert proc.returncode == 0, proc.stderr
    assert "valid noop postprocessor config" in proc.stdout
    archive = cli.write("archive.yml", "archive_format: tar.gz\nsource: folder\n")
    proc = cli("backends", "validate", archive, "--processor-type", "archive", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["options"]["source"] == "folder"
    bad = cli.write("bad.yml", "archive_format: zip\nbogus: 1\n")
    (line,) = _errors(cli("backends", "validate", bad, "--processor-type", "archive"))
    assert "takes no option 'bogus'; it takes: archive_format" in line
    untyped = cli.write("untyped.yml", "x: 1\n")
    (line,) = _errors(cli("backends", "validate", untyped, "--processor-type", "nope"))
    assert "Unknown postprocessor 'nope'; known ones: archive, noop" in line
    (line,) = _errors(cli("backends", "validate", noop, "--processor-type", "archive"))
    assert "type 'noop' does not match --processor-type 'archive'" in line


def test_validate_json_never_shows_resolved_secrets(cli: CLI) -> None:
    config = cli.write(
        "secret.yml", "type: local\nenv_vars:\n  TOKEN: ${API_TOKEN}\n  PLAIN: visible\n"
    )
    cli.env["API_TOKEN"] = "tok-3f9a1c"
    proc = cli("backends", "validate", config, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["config"]["env_vars"] == {"PLAIN": "visible"}
    assert report["config"]["secret_env_vars"] == ["TOKEN"]
    assert "tok-3f9a1c" not in proc.stdout + proc.stderr
    del cli.env["API_TOKEN"]
    (line,) = _errors(cli("backends", "validate", config))
    assert f"{config}:3: env_vars.TOKEN: environment variable 'API_TOKEN' is not set" in line


def test_secret_reference_reaches_the_run_but_not_the_handle(cli: CLI) -> None:
    cli.env["API_TOKEN"] = "tok-77e2b0"
    job = cli.write("job.yml", "name: s\ncommand: 'echo got=$TOKEN'\n")
    config = cli.write("cfg.yml", "type: local\nenv_vars:\n  TOKEN: ${API_TOKEN}\n")
    handle = cli.tmp / "h.json"
    proc = cli("run", job, "--backend-config", config, "--handle", handle)
    assert proc.returncode == 0 and proc.stdout == "got=tok-77e2b0\n"
    assert "tok-77e2b0" not in handle.read_text() and "TOKEN" in handle.read_text()


def test_schema_json_and_yaml(cli: CLI) -> None:
    proc = cli("backends", "schema", "--backend-type", "local", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    timeout = schema["properties"]["timeout"]
    assert (timeout["minimum"], timeout["maximum"]) == (60, 86400)
    assert timeout["description"] and schema["examples"]
    proc = cli("backends", "schema", "--backend-type", "dummy", "--format", "yaml")
    assert yaml.safe_load(proc.stdout)["properties"]["type"]["const"] == "dummy"


def test_backends_list_text_and_json(cli: CLI) -> None:
    proc = cli("backends", "list")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "USABLE", "CAPABILITIES"]
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["local"][1] == "yes" and "detached" in by_name["local"][2]
    listed = json.loads(cli("backends", "list", "--available", "--json").stdout)
    local = next(item for item in listed if item["name"] == "local")
    assert local["usable"] is True and "reattach" in local["capabilities"]
    assert local["config_class"] == "tether.backends.local.config.LocalConfig"


def test_detach_then_status_logs_wait_and_ls(cli: CLI) -> None:
    job = cli.write("job.yml", "name: detached\ncommand: 'echo one; sleep 1.5; echo two'\n")
    started = time.monotonic()
    proc = cli("run", job, "--detach", "--json")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 10
    info = json.loads(proc.stdout)
    handle = info["handle"]
    assert info["state"] in ("PENDING", "RUNNING") and handle.endswith("/handle.json")

    listed = json.loads(cli("ls", "--json").stdout)
    assert [row["run_id"] for row in listed] == [info["run_id"]]
    assert listed[0]["state"] == "RUNNING" and listed[0]["backend"] == "local"

    proc = cli("logs", "-f", handle)
    assert (proc.returncode, proc.stdout) == (0, "one\ntwo\n")
    lines = [json.loads(line) for line in cli("logs", handle, "--json").stdout.splitlines()]
    assert [(item["stream"], item["line"]) for item in lines] == [
        ("stdout", "one"),
        ("stdout", "two"),
    ]
    proc = cli("wait", handle)
    assert proc.returncode == 0 and "SUCCEEDED" in proc.stdout

    second = cli.tmp / "second.json"
    assert cli("run", job, "--detach", "--handle", second).returncode == 0
    assert cli("cancel", second, "--json").returncode == 0
    proc = cli("ls")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:4] == ["RUN", "ID", "BACKEND", "STATE"]
    assert [row.split()[2] for row in rows] == ["SUCCEEDED", "CANCELLED"]


def test_ls_of_a_missing_folder_and_an_unreadable_handle(cli: CLI) -> None:
    (line,) = _errors(cli("ls", cli.tmp / "nowhere"))
    assert "does not exist" in line
    runs = cli.tmp / "runs"
    (runs / "broken-run").mkdir(parents=True)
    (runs / "broken-run" / "handle.json").write_text("{not json")
    proc = cli("ls", runs, "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["state"] == "?" and "corrupt" in row["error"].lower()
    proc = cli("ls")  # nothing run yet under TETHER_HOME
    assert proc.returncode == 0 and proc.stdout == "" and "no runs" in proc.stderr
