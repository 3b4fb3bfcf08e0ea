"""A quiet start: a few progress lines instead of pip's and setuptools' chatter, with every
command's full output kept in a log file under var/ and printed only when it fails.

Plain standard library: the Makefile runs it with the system Python to create the
virtualenv, before anything is installed.

    python3 -m scripts.quiet install [--python python3] [--venv .venv]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"\033[1m[portal]\033[0m {message}", flush=True)


def var_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("PORTAL_VAR_DIR") or ROOT / "var")


class StepFailed(Exception):
    def __init__(self, title: str, returncode: int, log: Path):
        super().__init__(f"{title.rstrip('…. ')} failed (exit code {returncode}); the whole output is in {log}")
        self.returncode = returncode


def step(
    title: str,
    commands: Sequence[Sequence[str]],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> None:
    """Print `title`, run `commands` one after the other with their output appended to `log`,
    and print nothing else unless one fails: then its whole output, and StepFailed."""
    say(title)
    log.parent.mkdir(parents=True, exist_ok=True)
    for command in commands:
        with log.open("ab") as out:
            out.write(f"\n$ {' '.join(command)}    # {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            out.flush()
            start = out.tell()
            result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            with log.open("rb") as kept:
                kept.seek(start)
                sys.stdout.write(kept.read().decode(errors="replace"))
            sys.stdout.flush()
            raise StepFailed(title, result.returncode, log)


def install(*, python: str, venv: Path, log: Path) -> None:
    """What `make` does on the first run and when requirements change."""
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    if not (venv / "bin" / "python").exists():
        step("Creating the virtual environment…", [[python, "-m", "venv", str(venv)]], log=log)
    step(
        "Installing dependencies (the first run takes about a minute)…",
        [[*pip, "--upgrade", "pip"], [*pip, "-r", "requirements.txt"], [*pip, "--no-deps", "-e", "."]],
        log=log,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.quiet")
    parser.add_argument("what", choices=["install"])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    args = parser.parse_args(argv)
    log = var_dir() / "install.log"
    try:
        install(python=args.python, venv=args.venv, log=log)
    except StepFailed as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
