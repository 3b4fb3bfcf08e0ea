"""A quiet start: make run prints a few progress lines, keeps the tools' output in a log
file and prints it only when a step fails; the worker's superuser warning is explained in
the banner instead of printed. (The install step itself is too slow for a test; `make run`
was checked by hand.)"""

from __future__ import annotations

import os
import sys

import pytest

from scripts import quiet
from scripts.run import ROOT_WARNING_FILTER, banner, worker_env
from tests.support import start_worker, stop

CHATTY = "import sys; print('Collecting numpy'); print('  Downloading numpy.whl (16 MB)'); sys.exit({code})"


def test_a_step_that_works_prints_its_title_only_and_keeps_the_output(tmp_path, capsys):
    log = tmp_path / "var" / "install.log"
    quiet.step("Installing dependencies…", [[sys.executable, "-c", CHATTY.format(code=0)]], log=log)
    printed = capsys.readouterr().out
    assert printed.strip().endswith("Installing dependencies…") and len(printed.splitlines()) == 1
    assert "Downloading numpy.whl" in log.read_text()


def test_a_step_that_fails_prints_what_the_command_said_and_where_the_log_is(tmp_path, capsys):
    log = tmp_path / "install.log"
    quiet.step("Creating the virtual environment…", [[sys.executable, "-c", "print('earlier, fine')"]], log=log)
    with pytest.raises(quiet.StepFailed) as failed:
        quiet.step(
            "Installing dependencies…",
            [[sys.executable, "-c", "print('step one ok')"], [sys.executable, "-c", CHATTY.format(code=3)]],
            log=log,
        )
    printed = capsys.readouterr().out
    assert "Downloading numpy.whl" in printed  # the failing command's whole output
    assert "earlier, fine" not in printed and "step one ok" not in printed  # not what worked
    assert failed.value.returncode == 3
    assert str(failed.value) == f"Installing dependencies failed (exit code 3); the whole output is in {log}"
    assert "earlier, fine" in log.read_text() and "Collecting numpy" in log.read_text()


ENV = {"GATEWAY_URL": "http://127.0.0.1:8001"}


def test_the_banner_explains_a_worker_running_as_root():
    as_root = banner("http://127.0.0.1:8000", ENV, as_root=True, sandboxed=True)
    assert "The worker runs as root because you started make run as root" in as_root
    assert "model code never runs in it" in as_root and "sandboxed" in as_root
    assert as_root.rstrip().endswith("Press Ctrl-C to stop everything.")
    # Without a sandbox it does not claim one.
    bare = banner("http://127.0.0.1:8000", ENV, as_root=True, sandboxed=False)
    assert "runs as root" in bare and "never runs in it" not in bare and "install bubblewrap" in bare
    assert "root" not in banner("http://127.0.0.1:8000", ENV, as_root=False, sandboxed=True)


def test_the_worker_started_as_root_does_not_warn_about_it(redis_url, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("Celery warns about superuser privileges only to a worker running as root (CI runs as root)")
    # make run's worker leaves out each task's routine lines, unless asked for them.
    assert worker_env({}, as_root=False) == {"WORKER_TASK_LOGS": "0"}
    assert worker_env({"WORKER_TASK_LOGS": "1"}, as_root=False) == {"WORKER_TASK_LOGS": "1"}
    env = worker_env({"PYTHONWARNINGS": "default"}, as_root=True)
    assert env["PYTHONWARNINGS"] == f"default,{ROOT_WARNING_FILTER}"
    warned = start_worker(redis_url, tmp_path / "plain.log", name="plain")
    stop(warned)
    assert "superuser privileges" in (tmp_path / "plain.log").read_text()  # what make run used to print
    quiet_worker = start_worker(redis_url, tmp_path / "quiet.log", name="quiet", env=env)
    stop(quiet_worker)
    assert "superuser privileges" not in (tmp_path / "quiet.log").read_text()
