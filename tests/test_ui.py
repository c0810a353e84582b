"""``tether ui`` (issue 21): a real dashboard process, real local runs and a real
pipeline, looked at through Debian's headless Chromium.

Every check waits on a condition with a generous timeout (Playwright's ``expect``),
never on a fixed sleep: the machine may be running a second copy of this file.
Screenshots of each page go to ``tests/artifacts/ui/`` (or ``$TETHER_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cli_support import CLI, TETHER
from .ui_support import TIMEOUT_MS, dashboard, launch_browser, screenshot, wait_for_file

GREEN = "rgb(21, 128, 61)"  # the SUCCEEDED colour of the stylesheet
BLUE = "rgb(37, 99, 235)"  # RUNNING


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def ui_cli(tmp_path: Path) -> Iterator[CLI]:
    """The CLI with its own home, cache store and slots, cancelling what it left going."""
    runner = CLI(tmp_path)
    runner.env["TETHER_CACHE_STORE"] = str(tmp_path / "cache.sqlite")
    runner.env["TETHER_SLOTS_DIR"] = str(tmp_path / "slots")
    yield runner
    for run_dir in runner.run_dirs():
        if not (run_dir / "exit.json").exists() and (run_dir / "handle.json").exists():
            runner("cancel", run_dir / "handle.json")


def submit(cli: CLI, name: str, command: str, *extra: str) -> str:
    """Start a detached local run; its run id."""
    job = cli.write(f"{name}.yml", json.dumps({"name": name, "command": command}))
    proc = cli("run", "--detach", "--json", job, *extra)
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["run_id"])


def state_of(cli: CLI, run_id: str) -> str:
    proc = cli("status", "--json", cli.home / "runs" / run_id / "handle.json")
    return str(json.loads(proc.stdout)["state"])


def expect() -> Any:
    from playwright.sync_api import expect

    return expect


def test_the_runs_list_shows_every_run_and_follows_them_live(ui_cli: CLI, page: Any) -> None:
    """Runs in two runs folders, with state, backend, exit code; filters; a run started
    later appears, a deleted one disappears and a half-written record is a note, all
    without reloading."""
    done = submit(ui_cli, "done", "echo ok")
    failed = submit(ui_cli, "broken", "echo bad >&2; exit 3")
    other = ui_cli.tmp / "other-runs"
    other.mkdir()
    config = ui_cli.write("local-elsewhere.yml", f"type: local\nruns_dir: {other}\n")
    elsewhere = submit(ui_cli, "elsewhere", "true", "--backend-config", str(config))
    for run_id, folder in ((done, ui_cli.home / "runs"), (failed, ui_cli.home / "runs")):
        wait_for_file(folder / run_id / "exit.json")
    wait_for_file(other / elsewhere / "exit.json")
    with dashboard(ui_cli, ui_cli.home / "runs", other) as ui:
        page.goto(ui.url)
        rows = page.locator("#runs-body tr")
        expect()(page.locator("#live")).to_have_text("live")
        expect()(rows).to_have_count(3)
        row = page.locator(f'tr[data-run="{failed}"]')
        expect()(row).to_have_attribute("data-state", "FAILED")
        expect()(row.locator("td").nth(3)).to_have_text("local")
        expect()(row.locator("td").nth(6)).to_have_text("3")
        expect()(page.locator(f'tr[data-run="{elsewhere}"]')).to_have_attribute(
            "data-state", "SUCCEEDED"
        )
        assert "token=" not in page.url  # traded for a cookie, out of the address bar

        gate = ui_cli.tmp / "gate"
        late = submit(ui_cli, "late", f"while [ ! -e {gate} ]; do sleep 0.05; done")
        expect()(page.locator(f'tr[data-run="{late}"]')).to_have_attribute("data-state", "RUNNING")
        half = ui_cli.home / "runs" / "half-written"
        half.mkdir()
        (half / "handle.json").write_text('{"backend": "loc')
        broken = page.locator('tr[data-run="half-written"]')
        expect()(broken).to_have_attribute("data-state", "UNREADABLE")
        expect()(broken.locator(".note")).to_contain_text("corrupt or truncated")
        shutil.rmtree(ui_cli.home / "runs" / done)
        expect()(page.locator(f'tr[data-run="{done}"]')).to_have_count(0)
        screenshot(page, "runs")
        gate.touch()
        expect()(page.locator(f'tr[data-run="{late}"]')).to_have_attribute(
            "data-state", "SUCCEEDED"
        )

        page.select_option("select[name=state]", "FAILED")
        expect()(page).to_have_url(re.compile(r"state=FAILED"))
        expect()(rows).to_have_count(1)
        expect()(rows.first).to_have_attribute("data-run", failed)


def test_a_running_runs_log_streams_live_and_its_state_follows(ui_cli: CLI, page: Any) -> None:
    gate = ui_cli.tmp / "gate"
    command = (
        f"echo first; echo warming up >&2; while [ ! -e {gate} ]; do sleep 0.05; done; "
        "echo second; echo third"
    )
    run_id = submit(ui_cli, "ticker", command)
    with dashboard(ui_cli) as ui:
        page.goto(ui.url)
        page.click(f'a[href="/runs/{run_id}"]')
        expect()(page).to_have_url(f"{ui.base}/runs/{run_id}")
        expect()(page.locator("#stdout")).to_have_text("first\n")
        expect()(page.locator("#stderr")).to_have_text("warming up\n")
        expect()(page.locator("#status .badge")).to_have_text("RUNNING")
        screenshot(page, "run")
        gate.touch()  # the run goes on: the page must show it without a reload
        expect()(page.locator("#stdout")).to_have_text("first\nsecond\nthird\n")
        expect()(page.locator("#status .badge")).to_have_text("SUCCEEDED")
        expect()(page.locator("#live")).to_have_text("complete")
        expect()(page.locator("#status")).to_contain_text("exit code")


def test_cancel_needs_the_token_and_the_dashboards_own_origin(ui_cli: CLI, page: Any) -> None:
    run_id = submit(ui_cli, "sleeper", "sleep 300")
    with dashboard(ui_cli) as ui:
        cancel = f"/runs/{run_id}/cancel"
        status, body = ui.request(cancel, method="POST")
        assert status == 403 and "token" in json.loads(body)["message"]
        status, body = ui.request(
            cancel,
            method="POST",
            headers={"X-Tether-Token": ui.token, "Origin": "http://evil.test"},
        )
        assert status == 403 and "another origin" in json.loads(body)["message"]
        assert ui.request(cancel, headers={"X-Tether-Token": ui.token})[0] == 405  # POST only

        # A page elsewhere, even one that knew the token, cannot cancel the run.
        page.route(
            "http://evil.test/**",
            lambda route: route.fulfill(body="<p>elsewhere</p>", content_type="text/html"),
        )
        page.goto("http://evil.test/")
        page.evaluate(
            """async ([url, token]) => {
                const body = new URLSearchParams({token});
                try { await fetch(url, {method: "POST", mode: "no-cors", body}); } catch (e) {}
                try { await fetch(url, {method: "POST", headers: {"X-Tether-Token": token}}); }
                catch (e) {}
            }""",
            [ui.base + cancel, ui.token],
        )
        page.goto(f"{ui.url}")
        # The dashboard's own page without the token (its cookie alone) is refused too.
        refused = page.evaluate(
            "async (url) => (await fetch(url, {method: 'POST'})).status", cancel
        )
        assert refused == 403
        assert state_of(ui_cli, run_id) == "RUNNING"

        page.goto(f"{ui.base}/runs/{run_id}")
        expect()(page.locator("#status .badge")).to_have_text("RUNNING")
        page.click("button[data-action=cancel]")
        expect()(page.locator("#flash")).to_have_text(f"cancelled {run_id}")
        expect()(page.locator("#status .badge")).to_have_text("CANCELLED")
        assert state_of(ui_cli, run_id) == "CANCELLED"


def _gated_pipeline(cli: CLI) -> tuple[Path, Path]:
    gates = cli.tmp / "gates"
    gates.mkdir()

    def wait(name: str) -> str:
        return f"while [ ! -e {gates / name} ]; do sleep 0.05; done"

    steps = [
        {"name": "fetch", "job": {"command": f"{wait('fetch')}; echo fetched"}},
        {"name": "simulate", "depends_on": ["fetch"], "job": {"command": wait("simulate")}},
        {"name": "plot", "depends_on": ["fetch"], "job": {"command": "echo plotted"}},
        {"name": "report", "depends_on": ["simulate", "plot"], "job": {"command": "echo ok"}},
    ]
    spec = {"name": "gated", "backend": {"type": "local"}, "steps": steps}
    return cli.write("gated.yml", json.dumps(spec)), gates


def test_the_pipeline_picture_colours_steps_as_they_finish(ui_cli: CLI, page: Any) -> None:
    """A real ``tether pipeline run``: the steps change colour live, a click on a step
    opens its run, and "Cancel step" cancels the step's run."""
    pipeline, gates = _gated_pipeline(ui_cli)
    state = ui_cli.tmp / "gated.state.jsonl"
    runner = subprocess.Popen(
        [TETHER, "pipeline", "run", str(pipeline)],
        cwd=ui_cli.tmp,
        env=ui_cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with dashboard(ui_cli, "--pipeline", state) as ui:
            page.goto(ui.url)
            page.click("nav >> text=Pipelines")
            expect()(page.locator("#pipelines-body tr")).to_contain_text("RUNNING")
            screenshot(page, "pipelines")
            page.click("text=gated")
            expect()(page.locator('a.step[data-step="fetch"] rect')).to_have_css("fill", BLUE)
            expect()(page.locator("#pipeline")).to_contain_text("running now")
            expect()(page.locator('a.step[data-step="report"]')).to_have_attribute(
                "data-state", "PENDING"
            )
            (gates / "fetch").touch()
            expect()(page.locator('a.step[data-step="fetch"] rect')).to_have_css("fill", GREEN)
            expect()(page.locator('a.step[data-step="plot"]')).to_have_attribute(
                "data-state", "SUCCEEDED"
            )
            expect()(page.locator('a.step[data-step="simulate"]')).to_have_attribute(
                "data-state", "RUNNING"
            )
            assert page.locator("svg.dag path.edge").count() == 4  # the DAG's edges
            screenshot(page, "pipeline")

            page.click('a.step[data-step="fetch"]')
            expect()(page).to_have_url(re.compile(r"/runs/fetch-"))
            expect()(page.locator("#stdout")).to_have_text("fetched\n")
            page.go_back()

            page.click('tr[data-step="simulate"] button[data-action=cancel]')
            expect()(page.locator("#flash")).to_contain_text("cancelled simulate-")
            expect()(page.locator('a.step[data-step="simulate"]')).not_to_have_attribute(
                "data-state", "RUNNING"
            )
            # Fail-fast: the cancelled run fails its step, and the step after it is skipped.
            expect()(page.locator('a.step[data-step="simulate"]')).to_have_attribute(
                "data-state", "FAILED"
            )
            expect()(page.locator('a.step[data-step="report"]')).to_have_attribute(
                "data-state", "SKIPPED"
            )
            # A step's run opens from the state file's record too (whatever its runs folder).
            page.goto(f"{ui.base}/pipelines/0/steps/fetch/runs/0")
            expect()(page.locator("#stdout")).to_have_text("fetched\n")
            expect()(page.locator("#status .badge")).to_have_text("SUCCEEDED")
        assert runner.wait(timeout=60) == 1  # the pipeline did not succeed: a step was cancelled
    finally:
        if runner.poll() is None:
            (gates / "simulate").touch()
            runner.wait(timeout=60)


def test_the_cache_page_lists_entries_with_hits_and_sizes(ui_cli: CLI, page: Any) -> None:
    store = ui_cli.tmp / "store.sqlite"
    job = ui_cli.write(
        "cached.yml",
        json.dumps({"name": "cached", "command": "echo result > out.txt", "outputs": ["out.txt"]}),
    )
    for _ in range(2):  # the second run is a hit
        proc = ui_cli("run", "--cache-store", store, job)
        assert proc.returncode == 0, proc.stderr
    with dashboard(ui_cli, "--cache-store", store) as ui:
        page.goto(ui.url)
        page.click("nav >> text=Cache")
        row = page.locator("#cache-body tr")
        expect()(row).to_have_count(1)
        expect()(row.locator("td").nth(1)).to_have_text("cached")
        expect()(row.locator("td").nth(5)).to_have_text("1")
        expect()(row.locator("td").nth(4)).to_have_text(re.compile(r"^\d+ B$"))
        screenshot(page, "cache")


def test_pages_need_the_token_and_the_loopback_host(ui_cli: CLI, page: Any) -> None:
    with dashboard(ui_cli) as ui:
        assert ui.url.startswith("http://127.0.0.1:")
        assert ui.request("/")[0] == 403
        assert ui.request("/events/runs")[0] == 403
        assert ui.request("/?token=wrong")[0] == 403
        # A DNS name rebound to 127.0.0.1 cannot read the pages, even with the token.
        assert ui.request("/", headers={"Host": "evil.test", "X-Tether-Token": ui.token})[0] == 403
        assert ui.request("/", headers={"X-Tether-Token": ui.token})[0] == 200
        response = page.goto(ui.base + "/")
        assert response is not None and response.status == 403
        expect()(page.locator("body")).to_contain_text("token")
        # Listening on the loopback address only (/proc/net/tcp: 0100007F is 127.0.0.1).
        port = f"{ui.port:04X}"
        listening = [
            line.split()[1]
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"
        ]
        assert listening == [f"0100007F:{port}"]


def test_a_runs_page_never_shows_a_secret_value(ui_cli: CLI) -> None:
    """Secret env values (from ``${VAR}``) are not in the saved record, so not on the
    page; plain values whose names look like credentials are masked too."""
    job = ui_cli.write(
        "secretive.yml",
        "name: secretive\ncommand: 'true'\n"
        "env: {API_TOKEN: '${MY_SECRET}', SESSION_TOKEN: plain-but-private, COLOUR: teal}\n"
        "backend: {type: local, env_vars: {DB_PASSWORD: hunter3, REGION: north}}\n",
    )
    ui_cli.env["MY_SECRET"] = "hunter2"
    proc = ui_cli("run", "--detach", "--json", job)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    with dashboard(ui_cli) as ui:
        status, body = ui.request(f"/runs/{run_id}", headers={"X-Tether-Token": ui.token})
    assert status == 200, body
    for secret in ("hunter2", "plain-but-private", "hunter3"):
        assert secret not in body
    assert "teal" in body and "north" in body  # the page shows the job and the config
    assert "API_TOKEN" in body and "SESSION_TOKEN" in body  # names, not values


def test_no_address_but_loopback_can_be_asked_for(ui_cli: CLI) -> None:
    proc = ui_cli("ui", "--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2
    assert "unrecognized arguments: --host" in proc.stderr


def test_a_port_in_use_is_a_one_line_error_naming_the_fix(ui_cli: CLI) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ui_cli("ui", "--port", str(port))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"tether: error: Cannot listen on 127.0.0.1:{port}: Address already in use; "
        "give another --port (0 picks a free one)."
    ]


def test_without_the_extra_tether_ui_says_what_to_install(ui_cli: CLI) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "from tether.cli import main\n"
        "sys.exit(main(['ui', '--port', '0']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **ui_cli.env},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "tether: error: tether ui needs extra dependencies (starlette is missing): "
        "pip install 'tether[ui]'"
    ]
