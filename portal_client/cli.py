"""`portal`: the command line of the portal, for terminals and scripts.

Every command takes --json for machine-readable output on stdout; progress and messages go
to stderr. Errors are one line on stderr, never a traceback (PORTAL_DEBUG=1 shows one), and
the exit code says what kind of failure it was:

    0 done · 1 the portal refused (bad input, conflict) · 2 bad usage or a missing file ·
    3 not signed in or not allowed · 4 not found · 5 portal unreachable or failing ·
    6 a followed deployment failed, was rejected, cancelled or rolled back · 130 interrupted
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import re
import shlex
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from portal_client import config
from portal_client.client import FAILED_STATUSES, Client, final
from portal_client.errors import EXIT_USAGE, InvalidUsage, NotFound, NotSignedIn, PortalClientError
from portal_client.progress import BarProgress, err
from portal_client.samples import to_json

out = Console(soft_wrap=True)

if not out.is_terminal:
    out.width = 1000  # piped into grep or a file: never cut a column short

EPILOG = (
    "Exit codes: 0 done, 1 refused by the portal, 2 bad usage or missing file, 3 not signed in or not allowed, "
    "4 not found, 5 portal unreachable, 6 followed deployment did not go live, 130 interrupted."
)


# ---------------------------------------------------------------- plumbing


def emit(data: Any, human) -> None:
    """Print `data` as JSON with --json, or call `human(data)` for people."""
    if click.get_current_context().find_root().obj.get("json"):
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def table(rows: list[dict], columns: list[tuple[str, str]], *, empty: str) -> None:
    if not rows:
        err.print(empty, highlight=False)
        return
    grid = Table(box=None, pad_edge=False, header_style="bold")
    for title, _ in columns:
        grid.add_column(title)
    for row in rows:
        grid.add_row(*[_cell(row, key) for _, key in columns])
    out.print(grid)


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or value == "":
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if key.endswith("_at") and isinstance(value, str):
        return value[:16].replace("T", " ")
    return str(value)


def markdown(text: str) -> None:
    """Print a model card or a description as Markdown (headings, lists, emphasis, code)."""
    # Links show their address where the terminal cannot make them clickable (or it is a file).
    document = Markdown(text.strip(), hyperlinks=out.is_terminal)
    out.print(document, width=min(out.width, 100))


def client_from(ctx: click.Context) -> Client:
    obj = ctx.find_root().obj
    if "client" not in obj:
        obj["client"] = Client(url=obj.get("url"))
    return obj["client"]


def json_option(func):
    """--json on every command (also accepted before the command: `portal --json models list`)."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")
    @functools.wraps(func)
    def wrapper(*args, as_json: bool = False, **kwargs):
        current = click.get_current_context()
        current.find_root().obj["command"] = current.command  # for errors in its own words
        if as_json:
            current.find_root().obj["json"] = True
        return func(*args, **kwargs)

    return wrapper


def read_text(path: str, what: str) -> str:
    """A file's text (or stdin's, for -), with an error a person can act on."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except FileNotFoundError:
        raise InvalidUsage(f"No such file for {what}: {path}") from None
    except OSError as exc:
        raise InvalidUsage(f"Cannot read {what} from {path}: {exc.strerror}") from None


def read_json_file(path: str | None, what: str) -> Any:
    if path is None:
        return None
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidUsage(f"{what} in {path} is not valid JSON: {exc}") from None


class PortalGroup(click.Group):
    """Turns every failure into one line on stderr and an exit code."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `portal` or `portal models` alone: show help
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" See '{exc.ctx.command_path} --help'." if exc.ctx is not None else ""
            self._fail(exc, exc.format_message() + hint, exc.exit_code)
        except click.ClickException as exc:
            self._fail(exc, exc.format_message(), exc.exit_code)
        except click.Abort:
            err.print("Interrupted.", highlight=False)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PortalClientError as exc:
            self._fail(exc, in_cli_words(exc, ctx.obj.get("command") if ctx.obj else None), exc.exit_code)
        except KeyboardInterrupt:
            err.print("Interrupted.", highlight=False)
            sys.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except OSError as exc:
            self._fail(exc, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001 - a command line answers every failure with one line
            self._fail(exc, f"Unexpected error: {type(exc).__name__}: {exc}. Set PORTAL_DEBUG=1 for details.", 1)

    @staticmethod
    def _fail(exc: BaseException, message: str, code: int):
        if os.environ.get("PORTAL_DEBUG"):
            raise exc
        err.print(f"portal: error: {message}", highlight=False, markup=False)
        sys.exit(code)


def _option_names(command: click.Command) -> dict[str, str]:
    """What each of a command's parameters is called on the command line, by its Python name.

    A parameter is named after the API field it fills (`--env` fills `environment`, `--rate`
    `rate_per_second`), so the portal's field names translate to the options a person typed.
    """
    names: dict[str, str] = {}
    for param in command.params:
        if not param.name or param.name == "as_json":
            continue
        if isinstance(param, click.Option):
            names[param.name] = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        else:
            names[param.name] = param.human_readable_name  # an argument: NAME
    return names


def in_cli_words(exc: PortalClientError, command: click.Command | None) -> str:
    """The error's message with the API's (or the Python client's) field names replaced by
    the command's options: `flavor=` and `'flavor'` become `--flavor`, `Invalid input:
    rate_per_second: ...` becomes `Invalid input: --rate: ...`, and a name with an underscore
    (`target_in_flight`) is replaced wherever it stands. A message about one field that does
    not name it gets the option in front."""
    message = exc.message
    if command is None:
        return message
    names = _option_names(command)
    for field, option in names.items():
        name = re.escape(field)
        message = re.sub(rf"(?<![\w-]){name}=\s*", option + " ", message)
        message = re.sub(rf"'{name}'", option, message)
        message = re.sub(rf"(^|: |; ){name}(?=(\.\w+)*: )", lambda m, o=option: m.group(1) + o, message)
        if "_" in field:  # `target_in_flight` is no English word: wherever it stands, it is the field
            message = re.sub(rf"(?<![\w./-]){name}(?![\w/])", option, message)
    errors = exc.body.get("errors") if isinstance(exc.body, dict) else None
    if isinstance(errors, dict) and len(errors) == 1:
        (field,) = errors
        option = names.get(field)
        if option and option not in message:
            message = f"{option}: {message}"
    return message


# ---------------------------------------------------------------- the commands


@click.group(cls=PortalGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="PORTAL_URL", help="The portal's address (default: the one you logged in to).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")
@click.version_option("1", prog_name="portal")
@click.pass_context
def main(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """Register models, deploy them and call them, from a terminal or a script.

    Sign in once with `portal login`; the token is kept in ~/.config/portal/config.json
    (mode 0600). PORTAL_TOKEN and PORTAL_URL override it.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(url=url, json=as_json)


@main.command()
@click.option("--url", help="The portal's address, e.g. http://127.0.0.1:8000 (kept for the next commands).")
@click.option("--username", "-u", help="Your portal username (asked if not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of asking.")
@click.option("--token-stdin", is_flag=True, help="Store a token you already have (read from stdin) instead.")
@click.option("--days", type=click.IntRange(1, 730), help="How long the new token lasts (the portal's default: 90).")
@json_option
@click.pass_context
def login(
    ctx, url: str | None, username: str | None, password_stdin: bool, token_stdin: bool, days: int | None
) -> None:
    """Sign in and keep a token for the next commands."""
    if url:
        ctx.find_root().obj["url"] = url
    client = client_from(ctx)
    if token_stdin:
        client.token = sys.stdin.readline().strip()
        if not client.token:
            raise InvalidUsage("No token on stdin.")
        created = {"user": client.me()["username"], "name": "(given)", "expires_at": None}
    else:
        username = username or click.prompt("Username", err=True)
        password = sys.stdin.readline().rstrip("\n") if password_stdin else getpass.getpass("Password: ")
        created = client.login(username, password, days=days)
    path = config.save(url=client.url, token=client.token)
    result = {
        "url": client.url,
        "user": created["user"],
        "token_name": created["name"],
        "expires_at": created.get("expires_at"),
        "config": str(path),
    }
    emit(
        result,
        lambda r: err.print(
            f"Signed in to {r['url']} as {r['user']}. Token kept in {r['config']}"
            + (f" (expires {r['expires_at'][:10]})." if r["expires_at"] else "."),
            highlight=False,
        ),
    )


@main.command()
@json_option
@click.pass_context
def logout(ctx) -> None:
    """Revoke the stored token and forget it."""
    client = client_from(ctx)
    revoked = False
    if client.token and client.token_source == str(config.config_path()):
        prefix = "_".join(client.token.split("_")[:2])  # ptl_<8>_<secret> → ptl_<8>
        try:
            for token in client.tokens():
                if token["prefix"] == prefix and token.get("state") == "active":
                    client.revoke_token(token["id"])
                    revoked = True
        except PortalClientError:
            pass  # still forget it locally
    config.save(url=client.url, token=None)
    emit({"revoked": revoked}, lambda r: err.print("Signed out." + (" The token was revoked." if revoked else "")))


@main.command()
@json_option
@click.pass_context
def whoami(ctx) -> None:
    """Who the token belongs to, and your teams."""
    me = client_from(ctx).me()
    teams = ", ".join(f"{t['name']} ({t['role']})" for t in me.get("teams", [])) or "no teams"
    emit(me, lambda m: out.print(f"{m['username']} on {client_from(ctx).url} · {teams}", highlight=False))


# ---------------------------------------------------------------- models and versions


@main.group()
def models() -> None:
    """Registered models."""


@models.command("list")
@click.option("--search", "-s", default="", help="Part of the name or description.")
@click.option("--team", default="", help="Only this team's models.")
@click.option("--limit", type=click.IntRange(1), help="At most this many.")
@json_option
@click.pass_context
def models_list(ctx, search: str, team: str, limit: int | None) -> None:
    """List the models you can see."""
    rows = client_from(ctx).models(search=search, team=team, limit=limit)
    emit(
        rows,
        lambda r: table(
            r,
            [
                ("NAME", "name"),
                ("TEAM", "team"),
                ("LATEST", "latest_version"),
                ("VERSIONS", "version_count"),
                ("CREATED", "created_at"),
            ],
            empty="No models you can see. Create one with `portal models create`.",
        ),
    )


@models.command("show")
@click.argument("name")
@json_option
@click.pass_context
def models_show(ctx, name: str) -> None:
    """A model and its versions."""
    model = client_from(ctx).model(name)

    def human(m):
        out.print(f"[bold]{m['name']}[/] · team {m['team']} · {m['version_count']} versions", highlight=False)
        if m.get("description", "").strip():
            markdown(m["description"])
        table(
            m["versions"],
            [
                ("VERSION", "version"),
                ("FLAVOR", "flavor"),
                ("TASK", "task"),
                ("SIZE", "size"),
                ("SHA256", "sha256"),
                ("CREATED", "created_at"),
            ],
            empty="No versions yet.",
        )

    emit(model, human)


@models.command("create")
@click.argument("name")
@click.option("--team", required=True, help="The team that owns it.")
@click.option("--description", default="", help="Markdown.")
@json_option
@click.pass_context
def models_create(ctx, name: str, team: str, description: str) -> None:
    """Register a new model (then register versions of it)."""
    model = client_from(ctx).create_model(name, team=team, description=description)
    emit(model, lambda m: err.print(f"Created model {m['name']} for team {m['team']}.", highlight=False))


@main.group()
def versions() -> None:
    """Versions of a model: register, list, show, download."""


@versions.command("list")
@click.argument("model")
@json_option
@click.pass_context
def versions_list(ctx, model: str) -> None:
    """A model's versions, newest first."""
    rows = client_from(ctx).versions(model)
    emit(
        rows,
        lambda r: table(
            r,
            [("VERSION", "version"), ("FLAVOR", "flavor"), ("SIZE", "size"), ("CREATED", "created_at")],
            empty="No versions yet.",
        ),
    )


@versions.command("show")
@click.argument("model")
@click.argument("version")
@json_option
@click.pass_context
def versions_show(ctx, model: str, version: str) -> None:
    """One version: schemas, metrics, lineage and changes."""
    data = client_from(ctx).version(model, version)

    def human(v):
        out.print(
            f"[bold]{v['model']} {v['version']}[/] · {v['flavor']} · {v['size']} bytes · sha256 {v['sha256']}",
            highlight=False,
        )
        out.print(f"input:  {json.dumps(v['input_schema'])}", highlight=False)
        out.print(f"output: {json.dumps(v['output_schema'])}", highlight=False)
        if v.get("metrics"):
            out.print("metrics: " + ", ".join(f"{k}={val:g}" for k, val in v["metrics"].items()), highlight=False)
        for change in v.get("changes") or []:
            out.print(
                f"{'BREAKING ' if change['breaking'] else ''}{change['side']} {change['path']}: {change['message']}",
                highlight=False,
            )

    emit(data, human)


@versions.command("register")
@click.argument("model")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--version", "-v", "version", required=True, help="MAJOR.MINOR.PATCH, higher than the latest.")
@click.option(
    "--flavor",
    "-f",
    type=click.Choice(["sklearn", "onnx", "pyfunc"]),
    help="How to load FILE (default: from its extension).",
)
@click.option("--sample-input", required=True, help='JSON file (or - for stdin): {"instances": [...]} or a list.')
@click.option("--input-schema", help="JSON Schema file of one instance (default: inferred from the sample).")
@click.option("--output-schema", help="JSON Schema file of one prediction (default: inferred).")
@click.option("--metrics", help='JSON file of evaluation metrics, e.g. {"accuracy": 0.93}.')
@click.option("--parameters", help="JSON file of training parameters (lineage).")
@click.option("--description", default="", help="Markdown model card; @FILE reads it from a file.")
@click.option("--git-commit", default="", help="The commit the model was trained from.")
@click.option("--data-ref", default="", help="Where the training data came from.")
@click.option(
    "--task",
    type=click.Choice(["classification", "regression"]),
    help="What live quality is measured as (default: inferred from the outputs).",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV, Parquet or JSON of inputs live traffic is compared with for drift (default: the sample).",
)
@click.option("--chunk-size", type=click.IntRange(64 * 1024), help="Upload part size in bytes (default: portal's).")
@click.option("--parallel", type=click.IntRange(1, 32), default=4, show_default=True, help="Parts sent at once.")
@json_option
@click.pass_context
def versions_register(
    ctx,
    model: str,
    file: Path,
    version: str,
    flavor: str | None,
    sample_input: str,
    input_schema: str | None,
    output_schema: str | None,
    metrics: str | None,
    parameters: str | None,
    description: str,
    git_commit: str,
    data_ref: str,
    task: str | None,
    reference: Path | None,
    chunk_size: int | None,
    parallel: int,
) -> None:
    """Upload FILE (resumably) and register it as a version of MODEL.

    If the upload is interrupted, run the same command again: it resumes where it stopped.
    """
    if not file.is_file():
        raise InvalidUsage(f"No such file: {file}")
    if reference is not None and not reference.is_file():
        raise InvalidUsage(f"No such file: {reference}")
    if description.startswith("@"):
        description = read_text(description[1:], "the description")
    sample = read_json_file(sample_input, "the sample input")
    quiet = bool(ctx.find_root().obj.get("json"))
    registered = client_from(ctx).register_version(
        model,
        file,
        version=version,
        flavor=flavor,
        sample_input=sample,
        input_schema=read_json_file(input_schema, "the input schema"),
        output_schema=read_json_file(output_schema, "the output schema"),
        metrics=read_json_file(metrics, "the metrics"),
        parameters=read_json_file(parameters, "the parameters"),
        description=description,
        git_commit=git_commit,
        data_ref=data_ref,
        task=task or "",
        reference=reference,
        progress=BarProgress(quiet=quiet),
        chunk_size=chunk_size,
        parallel=parallel,
    )
    emit(
        registered,
        lambda v: err.print(
            f"Registered {v['model']} {v['version']} ({v['flavor']}, sha256 {v['sha256'][:12]}…). "
            f"Deploy it with: portal deploy SERVICE {v['version']} --env development",
            highlight=False,
        ),
    )


@versions.command("reference")
@click.argument("model")
@click.argument("version")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def versions_reference(ctx, model: str, version: str, file: Path) -> None:
    """Set the data live inputs of a version are compared with for drift (e.g. its validation
    set): CSV with a column per input field, Parquet, or JSON."""
    profile = client_from(ctx).set_reference(model, version, file)

    def human(p):
        err.print(f"Reference of {model} {version}: {p['rows']} rows of {p['filename']}.", highlight=False)
        if p["too_small"]:
            err.print("That is too few rows to judge drift: send more if you have them.", highlight=False)
        for f in p["features"]:
            what = (
                f"{f['min']:g} to {f['max']:g}"
                if f["kind"] == "number" and f.get("min") is not None
                else ", ".join(f.get("categories", [])[:6])
            )
            out.print(f"  {f['name']:<24} {f['kind']:<9} {what}", highlight=False, markup=False)

    emit(profile, human)


@versions.command("download")
@click.argument("model")
@click.argument("version")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("."),
    help="File or directory (saved there as MODEL-VERSION.SUFFIX).",
)
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
@json_option
@click.pass_context
def versions_download(ctx, model: str, version: str, output: Path, force: bool) -> None:
    """Download a version's artifact (its sha256 is checked)."""
    quiet = bool(ctx.find_root().obj.get("json"))
    path = client_from(ctx).download(model, version, output, progress=BarProgress(quiet=quiet), overwrite=force)
    emit({"path": str(path)}, lambda r: err.print(f"Saved {r['path']}.", highlight=False))


@main.group()
def uploads() -> None:
    """Resumable uploads that are not registered yet."""


@uploads.command("list")
@json_option
@click.pass_context
def uploads_list(ctx) -> None:
    """Your unfinished and unregistered uploads, and until when each is kept (a day after its
    last part; two hours after a refused registration)."""
    rows = client_from(ctx).request("GET", "/api/v1/uploads", what="list uploads").get("results", [])
    emit(
        rows,
        lambda r: table(
            r,
            [
                ("ID", "id"),
                ("FILE", "filename"),
                ("OFFSET", "offset"),
                ("SIZE", "size"),
                ("STATUS", "status"),
                ("KEPT UNTIL", "expires_at"),
            ],
            empty="No uploads waiting.",
        ),
    )


@uploads.command("push")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--chunk-size", type=click.IntRange(64 * 1024), help="Part size in bytes (default: portal's).")
@click.option("--parallel", type=click.IntRange(1, 32), default=4, show_default=True, help="Parts sent at once.")
@json_option
@click.pass_context
def uploads_push(ctx, file: Path, chunk_size: int | None, parallel: int) -> None:
    """Upload FILE without registering it; prints the upload id to register later."""
    quiet = bool(ctx.find_root().obj.get("json"))
    upload = client_from(ctx).upload(file, chunk_size=chunk_size, progress=BarProgress(quiet=quiet), parallel=parallel)
    emit(upload, lambda u: out.print(u["id"], highlight=False))


@uploads.command("abort")
@click.argument("upload_id")
@json_option
@click.pass_context
def uploads_abort(ctx, upload_id: str) -> None:
    """Drop an upload and its bytes."""
    client_from(ctx).request("DELETE", f"/api/v1/uploads/{upload_id}", what=f"abort upload {upload_id}")
    emit({"aborted": upload_id}, lambda r: err.print(f"Aborted upload {upload_id}."))


# ---------------------------------------------------------------- services and deployments


@main.group()
def services() -> None:
    """Services: the stable names consumers call."""


@services.command("list")
@click.option("--search", "-q", default="", help="Words in the name, the team or the description.")
@click.option("--team", default="", help="Only this team's services.")
@click.option("--env", "environment", default="", help="Only services live in this environment.")
@json_option
@click.pass_context
def services_list(ctx, search: str, team: str, environment: str) -> None:
    """The catalog: every service, where it is live, and whether you may call it."""
    rows = client_from(ctx).services(search=search, team=team, environment=environment)

    def human(r):
        shown = [
            {
                **s,
                "apis": [
                    f"{a['environment']}/v{a['major']}" + (" (deprecated)" if a["deprecated"] else "")
                    for a in s.get("live", [])
                ],
                "access": "may call" if s.get("may_call") else ("requested" if s.get("pending_request") else ""),
            }
            for s in r
        ]
        table(
            shown,
            [
                ("NAME", "name"),
                ("TEAM", "team"),
                ("LIVE", "apis"),
                ("ACCESS", "access"),
                ("DESCRIPTION", "description"),
            ],
            empty="No service matches." if search or team or environment else "No services yet.",
        )

    emit(rows, human)


def _runnable(example: str) -> str:
    """The catalog's curl line reads the token from $PORTAL_TOKEN; where the token in use is
    not there (`portal login` kept it), the line fetches it as `portal deploy`'s does."""
    client = client_from(click.get_current_context())
    if client.token_source == "PORTAL_TOKEN":
        return example
    return example.replace("$PORTAL_TOKEN", f"$({portal_command()} print-token)")


def _catalog_entry(s: dict) -> None:
    out.print(f"[bold]{s['name']}[/] · team {s['team']}", highlight=False)
    if s.get("description"):
        out.print(s["description"], highlight=False, markup=False)
    if not s.get("live"):
        err.print("Not live anywhere yet.", highlight=False)
    for api in s.get("live", []):
        note = ""
        if api["deprecated"]:
            sunset = f", sunset {api['sunset'][:10]}" if api.get("sunset") else ""
            note = (
                f" (deprecated{sunset}" + (f": {api['deprecation_note']}" if api.get("deprecation_note") else "") + ")"
            )
        out.print(f"{api['environment']} /v{api['major']} {api['version']}{note}", highlight=False, markup=False)
        out.print(_runnable(api["example"]), highlight=False, markup=False)
    if s.get("may_call"):
        err.print("You may call it.", highlight=False)
    elif s.get("pending_request"):
        err.print(f"Your access request #{s['pending_request']} is pending.", highlight=False)
    else:
        err.print(f"To call it, ask its team: portal access request {s['name']} --reason '...'", highlight=False)


@services.command("show")
@click.argument("name")
@json_option
@click.pass_context
def services_show(ctx, name: str) -> None:
    """A service and what is live where (its catalog entry, if you may not see its model)."""
    client = client_from(ctx)
    try:
        service = client.service(name)
    except NotFound:
        entry = client.catalog_entry(name)
        emit(entry, _catalog_entry)
        return

    def human(s):
        out.print(f"[bold]{s['name']}[/] · team {s['team']} · model {s['model']}", highlight=False)
        table(
            s.get("live", []),
            [
                ("ENVIRONMENT", "environment"),
                ("MAJOR", "major"),
                ("VERSION", "version"),
                ("DEPLOYMENT", "deployment"),
                ("ENDPOINT", "endpoint"),
            ],
            empty="Nothing live yet.",
        )
        for d in s.get("deprecations", []):
            sunset = f", sunset {d['sunset'][:10]}" if d.get("sunset") else ""
            out.print(
                f"v{d['major']} is deprecated{sunset}" + (f": {d['note']}" if d.get("note") else ""),
                highlight=False,
                markup=False,
            )

    emit(service, human)


@services.command("create")
@click.argument("name")
@click.option("--team", required=True, help="The team that owns it (you must be its owner or maintainer).")
@click.option("--model", required=True, help="The registered model whose versions it serves.")
@click.option("--description", default="", help="What it answers, for the catalog; @FILE reads it from a file.")
@json_option
@click.pass_context
def services_create(ctx, name: str, team: str, model: str, description: str) -> None:
    """Create a service: the stable name consumers call (then deploy versions to it)."""
    if description.startswith("@"):
        description = read_text(description[1:], "the description")
    service = client_from(ctx).create_service(name, team=team, model=model, description=description)
    emit(
        service,
        lambda s: err.print(
            f"Created service {s['name']} for team {s['team']}, serving model {s['model']}. "
            f"Deploy a version with: portal deploy {s['name']} VERSION --env development",
            highlight=False,
        ),
    )


@services.command("performance")
@click.argument("name")
@click.option("--env", "environment", required=True, help="The environment, e.g. production.")
@click.option("--days", type=click.Choice(["1", "7", "30", "90"]), default="7", show_default=True, help="The window.")
@json_option
@click.pass_context
def services_performance(ctx, name: str, environment: str, days: str) -> None:
    """Live quality per version beside the metrics recorded at registration, volume, the
    latest drift per feature, and the alert rules with their states."""
    client = client_from(ctx)
    overview = client.performance(name, environment, days=int(days))
    drift = client.drift(name, environment, hours=24)
    rules = client.alert_rules(name, environment)
    result = {**overview, "drift": drift, "alert_rules": rules}

    def human(r):
        out.print(f"[bold]{name}[/] in {environment}, last {days} day(s)", highlight=False)
        for version in r["versions"]:
            out.print(f"  {version}: {sum(r['volume'].get(version, [])):,} logged predictions", highlight=False)
        if not r["quality"]:
            err.print(f"No ground truth for {name} in {environment} in the last {days} day(s).", highlight=False)
        for q in r["quality"]:
            out.print(
                f"[bold]{q['version']}[/] · {q['task'] or 'task unknown'} · {q['labelled']} labelled", highlight=False
            )
            for metric, value in q["metrics"].items():
                registered = q["registered"].get(metric)
                was = f"   (registered {registered:.3f})" if registered is not None else ""
                out.print(f"  {metric:<16} {value:.3f}{was}", highlight=False, markup=False)
        latest: dict[tuple[str, str], dict] = {}
        for score in r["drift"]:
            latest[(score["version"], score["feature"])] = score  # sorted by hour: the last one wins
        if latest:
            out.print("[bold]Drift[/], the latest hour scored per feature (PSI; 0.25 and more is significant)")
            table(
                [
                    {**s, "psi": "—" if s["psi"] is None else f"{s['psi']:.3f}", "hour": s["hour"][11:16]}
                    for s in latest.values()
                ],
                [
                    ("VERSION", "version"),
                    ("FEATURE", "feature"),
                    ("HOUR", "hour"),
                    ("INSTANCES", "count"),
                    ("PSI", "psi"),
                    ("MISSING", "missing_rate"),
                    ("OUT OF RANGE", "out_of_range_rate"),
                ],
                empty="",
            )
        if r["alert_rules"]:
            out.print("[bold]Alert rules[/]")
            table(
                r["alert_rules"],
                [("ID", "id"), ("RULE", "condition"), ("STATE", "state"), ("VALUE", "value"), ("DETAIL", "detail")],
                empty="",
            )

    emit(result, human)


@main.group()
def alerts() -> None:
    """Alert rules of a service: when to tell its team that something is off."""


@alerts.command("list")
@click.argument("service")
@click.option("--env", "environment", help="Only this environment.")
@json_option
@click.pass_context
def alerts_list(ctx, service: str, environment: str | None) -> None:
    """The rules and their states, then the latest times they fired and cleared."""
    client = client_from(ctx)
    result = {
        "rules": client.alert_rules(service, environment),
        "events": client.alerts(service, environment, limit=20),
    }

    def human(r):
        table(
            r["rules"],
            [("ID", "id"), ("ENV", "environment"), ("RULE", "condition"), ("STATE", "state"), ("VALUE", "value")],
            empty=f"No alert rules on {service}: portal alerts add {service} --env ENV --metric M --threshold X",
        )
        for e in r["events"]:
            out.print(f"{e['created_at'][:19]}  {e['state']:<8} {e['message']}", highlight=False, markup=False)

    emit(result, human)


@alerts.command("add")
@click.argument("service")
@click.option("--env", "environment", required=True, help="The environment watched.")
@click.option(
    "--metric",
    required=True,
    type=click.Choice(
        [
            "accuracy",
            "precision_macro",
            "recall_macro",
            "f1_macro",
            "r2",
            "mae",
            "rmse",
            "drift_psi",
            "missing_rate",
            "out_of_range_rate",
            "error_rate",
            "latency_p95_ms",
        ]
    ),
    help="Quality metrics fire below the threshold (mae and rmse above); the others above.",
)
@click.option("--threshold", required=True, type=float)
@click.option("--window", "window_minutes", type=click.IntRange(1), default=60, show_default=True, help="Minutes.")
@click.option("--min-samples", type=click.IntRange(1), default=50, show_default=True, help="Needed to judge.")
@json_option
@click.pass_context
def alerts_add(
    ctx, service: str, environment: str, metric: str, threshold: float, window_minutes: int, min_samples: int
) -> None:
    """Add a rule: portal alerts add iris --env production --metric accuracy --threshold 0.8"""
    rule = client_from(ctx).add_alert_rule(
        service, environment, metric=metric, threshold=threshold, window_minutes=window_minutes, min_samples=min_samples
    )
    emit(rule, lambda r: err.print(f"Alert rule #{r['id']} added: {r['condition']}.", highlight=False))


@alerts.command("delete")
@click.argument("rule_id", type=click.IntRange(1))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def alerts_delete(ctx, rule_id: int, yes: bool) -> None:
    """Delete an alert rule (by the ID `portal alerts list` shows)."""
    if not yes:
        click.confirm(f"Delete alert rule #{rule_id}?", abort=True, err=True)
    client_from(ctx).delete_alert_rule(rule_id)
    err.print(f"Alert rule #{rule_id} deleted.")


@services.command("deprecate")
@click.argument("service")
@click.argument("major", type=click.IntRange(0))
@click.option("--sunset", help="The day it stops being served, YYYY-MM-DD (sent as the Sunset header).")
@click.option("--note", default="", help="What callers should do, e.g. 'Move to /v2'.")
@json_option
@click.pass_context
def services_deprecate(ctx, service: str, major: int, sunset: str | None, note: str) -> None:
    """Deprecate a major version: its callers get Deprecation and Sunset headers."""
    result = client_from(ctx).deprecate(service, major, sunset=sunset, note=note)
    emit(
        result,
        lambda d: err.print(
            f"{service} v{major} is deprecated" + (f", sunset {d['sunset'][:10]}." if d.get("sunset") else "."),
            highlight=False,
        ),
    )


@services.command("undeprecate")
@click.argument("service")
@click.argument("major", type=click.IntRange(0))
@json_option
@click.pass_context
def services_undeprecate(ctx, service: str, major: int) -> None:
    """Take back a deprecation."""
    client_from(ctx).undeprecate(service, major)
    emit({"undeprecated": major}, lambda r: err.print(f"{service} v{major} is no longer deprecated."))


@main.command()
@click.argument("service")
@click.argument("version")
@click.option("--env", "environment", required=True, help="development, staging, production, ...")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True)
@click.option("--reason", default="", help="Why (shown to approvers).")
@click.option(
    "--target-in-flight",
    type=click.IntRange(1),
    help="Autoscale: requests in flight per replica to aim for (turns autoscaling on).",
)
@click.option("--min-replicas", type=click.IntRange(0), help="Autoscale: the fewest replicas (1; 0 where allowed).")
@click.option("--max-replicas", type=click.IntRange(1), help="Autoscale: the most replicas (the environment's cap).")
@click.option(
    "--scale-down-after",
    "scale_down_after_seconds",
    type=click.IntRange(5),
    help="Autoscale: cool-down in seconds (60).",
)
@click.option(
    "--canary",
    "canary_steps",
    metavar="STEPS",
    help="Canary: percents of traffic to step through, e.g. 5,25,50 (100 comes last); judged at each step.",
)
@click.option("--bake", metavar="DURATION", help="Canary: how long each step runs, e.g. 30s, 2m, 1h (default 5m).")
@click.option("--sticky", is_flag=True, default=None, help="Canary: one caller sees one version.")
@click.option(
    "--shadow",
    "shadow_percent",
    type=click.IntRange(1, 100),
    metavar="PERCENT",
    help="Shadow test: copy this percent of live requests to the version; promote it yourself.",
)
@click.option("--follow", is_flag=True, help="Show events live until it is live or ends.")
@json_option
@click.pass_context
def deploy(
    ctx,
    service: str,
    version: str,
    environment: str,
    replicas: int,
    reason: str,
    target_in_flight: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    scale_down_after_seconds: int | None,
    canary_steps: str | None,
    bake: str | None,
    sticky: bool | None,
    shadow_percent: int | None,
    follow: bool,
) -> None:
    """Deploy VERSION of SERVICE's model to an environment.

    By default the new version replaces the live one at once, after its smoke test
    (blue/green). --canary tries it on growing shares of the traffic first, rolled back on its
    own if it does worse than the live one; --shadow sends it copies of live requests (callers
    keep the live version's answers) until you promote or abort it:
    portal deployments promote|abort|pause|resume ID.
    """
    strategy = _strategy(canary_steps, bake, sticky, shadow_percent)
    client = client_from(ctx)
    deployment = client.deploy(
        service,
        version,
        environment=environment,
        replicas=replicas,
        reason=reason,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_in_flight=target_in_flight,
        scale_down_after_seconds=scale_down_after_seconds,
        **strategy,
    )
    if not ctx.find_root().obj.get("json"):
        err.print(
            f"Deployment {deployment['id']}: {service} {version} to {environment} is "
            f"{deployment['status'].replace('_', ' ')}.",
            highlight=False,
        )
    if follow:
        follow_deployment(ctx, deployment["id"])
    else:
        emit(
            deployment,
            lambda d: err.print(f"Follow it with: portal deployments show {d['id']} --follow", highlight=False),
        )


DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")


def parse_duration(text: str, option: str) -> int:
    """Seconds from 90, 30s, 2m or 1h."""
    found = DURATION.match(text or "")
    if not found:
        raise InvalidUsage(f"{option} takes a duration like 30s, 2m or 1h, not '{text}'.")
    return int(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2) or "s"]


def parse_steps(text: str) -> list[float]:
    try:
        steps = [float(part) for part in text.replace("%", "").split(",") if part.strip()]
    except ValueError:
        raise InvalidUsage(f"--canary takes percents separated by commas, like 5,25,50, not '{text}'.") from None
    if not steps:
        raise InvalidUsage("--canary takes percents separated by commas, like 5,25,50.")
    return [int(step) if step.is_integer() else step for step in steps]


def _strategy(canary_steps: str | None, bake: str | None, sticky: bool | None, shadow_percent: int | None) -> dict:
    if canary_steps is not None and shadow_percent is not None:
        raise InvalidUsage("Choose --canary or --shadow, not both.")
    if canary_steps is None and (bake is not None or sticky):
        raise InvalidUsage(f"{'--bake' if bake is not None else '--sticky'} goes with --canary STEPS.")
    if canary_steps is not None:
        return {
            "strategy": "canary",
            "steps": parse_steps(canary_steps),
            "bake_seconds": None if bake is None else parse_duration(bake, "--bake"),
            "sticky": sticky,
        }
    if shadow_percent is not None:
        return {"strategy": "shadow", "shadow_percent": shadow_percent}
    return {}


def follow_deployment(ctx, deployment_id: int) -> None:
    client = client_from(ctx)
    as_json = ctx.find_root().obj.get("json")
    deployment: dict = {}
    waiting_said = shadow_said = False
    try:
        with err.status("Following…", spinner="dots") if err.is_terminal and not as_json else nullcontext():
            for deployment, events in client.follow(deployment_id):
                for event in events:
                    if as_json:
                        click.echo(json.dumps({"event": event}))
                    else:
                        stamp = event["created_at"][11:19]
                        style = {"error": "red", "warning": "yellow"}.get(event.get("level", ""), "")
                        err.print(f"{stamp}  {event['message']}", style=style, highlight=False, markup=False)
                if deployment["status"] == "pending_approval" and not waiting_said and not as_json:
                    err.print("Waiting for an approver; Ctrl-C stops following (the request stays).", style="dim")
                    waiting_said = True
                if deployment["status"] == "shadow" and not shadow_said and not as_json:
                    err.print(
                        f"A shadow test runs until someone promotes or aborts it (portal deployments promote "
                        f"{deployment_id}); Ctrl-C stops following.",
                        style="dim",
                    )
                    shadow_said = True
    except KeyboardInterrupt:
        err.print(f"Stopped following. The deployment goes on: portal deployments show {deployment_id} --follow")
        sys.exit(130)
    if as_json:
        click.echo(json.dumps({"deployment": {k: v for k, v in deployment.items() if k != "events"}}))
    if deployment["status"] in FAILED_STATUSES:
        final(deployment)
    if deployment["status"] == "live" and not as_json:
        err.print(f"Live: {deployment['endpoint']}", style="green", highlight=False)
        out.print(curl_line(client, deployment), highlight=False, markup=False)


@main.command("print-token")
@click.pass_context
def print_token(ctx) -> None:
    """Print the token in use, for other tools: curl -H "Authorization: Bearer $(portal print-token)" ..."""
    client = client_from(ctx)
    if not client.token:
        raise NotSignedIn("Not signed in. Run `portal login`, or set PORTAL_TOKEN.")
    click.echo(client.token)


def portal_command() -> str:
    """How a shell runs the `portal` that is running now, whether or not it is on PATH."""
    program = Path(sys.argv[0])
    if program.name.startswith("portal") and program.is_file():  # the installed script
        return shlex.quote(str(program.absolute()))
    found = shutil.which("portal")
    if found:
        return shlex.quote(str(Path(found).absolute()))
    return f"{shlex.quote(sys.executable)} -m portal_client"  # python -m portal_client


def _warn_without_invoke(client: Client) -> None:
    """The gateway takes only tokens with the invoke scope: say so before the line fails."""
    if not client.token:
        return
    prefix = "_".join(client.token.split("_")[:2])  # ptl_<8>_<secret> → ptl_<8>
    try:
        scopes = next((t["scopes"] for t in client.tokens() if t["prefix"] == prefix), None)
    except PortalClientError:
        return  # a token without the read scope: nothing to tell
    if scopes is not None and "invoke" not in scopes:
        err.print(
            f"Your token {prefix}… has the scopes {', '.join(scopes)}; the gateway needs one with invoke. "
            "Create one (portal tokens create NAME --scope invoke) and use it as PORTAL_TOKEN.",
            style="yellow",
            highlight=False,
        )


def curl_line(client: Client, deployment: dict) -> str:
    try:
        service = client.service(deployment["service"])
        sample = client.version(service["model"], deployment["version"]).get("sample_input") or []
    except PortalClientError:
        sample = []
    body = to_json({"instances": sample[:1]})
    # Never the secret itself on screen (terminals are logged and shared): a reference to it,
    # through this very command by its full path, which works where `portal` is not on PATH.
    token = "$PORTAL_TOKEN" if client.token_source == "PORTAL_TOKEN" else f"$({portal_command()} print-token)"
    _warn_without_invoke(client)
    return (
        f'curl -sS -X POST {shlex.quote(deployment["endpoint"])} -H "Authorization: Bearer {token}" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


@main.group()
def deployments() -> None:
    """Deployments: show, follow, approve, reject, cancel, roll back; pause, resume, promote or abort a canary."""


@deployments.command("list")
@click.argument("service")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@json_option
@click.pass_context
def deployments_list(ctx, service: str, limit: int) -> None:
    """A service's deployments, newest first."""
    rows = client_from(ctx).deployments(service, limit=limit)
    emit(
        rows,
        lambda r: table(
            r,
            [
                ("ID", "id"),
                ("VERSION", "version"),
                ("ENV", "environment"),
                ("STATUS", "status"),
                ("BY", "requested_by"),
                ("CREATED", "created_at"),
            ],
            empty="No deployments yet.",
        ),
    )


@deployments.command("show")
@click.argument("deployment_id", type=int)
@click.option("--follow", is_flag=True, help="Show events live until it is live or ends.")
@json_option
@click.pass_context
def deployments_show(ctx, deployment_id: int, follow: bool) -> None:
    """A deployment, its instances and its events."""
    if follow:
        follow_deployment(ctx, deployment_id)
        return
    deployment = client_from(ctx).deployment(deployment_id)

    def human(d):
        out.print(
            f"[bold]Deployment {d['id']}[/]: {d['service']} {d['version']} in {d['environment']} · "
            f"{d['status'].replace('_', ' ')} · {d['replicas']} replica(s)",
            highlight=False,
        )
        if d.get("target_in_flight"):
            cold = d.get("last_cold_start_seconds")
            out.print(
                f"autoscaled: {d['min_replicas']} to {d['max_replicas']} replicas, {d['target_in_flight']} in flight "
                f"each, down after {d['scale_down_after_seconds']} s"
                + (f"; last cold start {cold:.1f} s" if cold is not None else ""),
                highlight=False,
            )
        for line in _trial_lines(d):
            out.print(line, highlight=False, markup=False)
        if d.get("failure_reason"):
            out.print(f"reason: {d['failure_reason']}", style="red", highlight=False)
        if d["status"] == "live":
            out.print(f"endpoint: {d['endpoint']}", highlight=False)
        table(
            d.get("instances", []),
            [("INSTANCE", "name"), ("STATE", "state"), ("RESTARTS", "restarts")],
            empty="No instances.",
        )
        for event in d.get("events", []):
            out.print(
                f"{event['created_at'][:19].replace('T', ' ')}  {event['message']}", highlight=False, markup=False
            )

    emit(deployment, human)


def _decision(action: str, help_text: str, *, needs_comment: bool = False):
    @deployments.command(action, help=help_text)
    @click.argument("deployment_id", type=int)
    @click.option("--comment", "-m", default="", required=needs_comment, help="Why (kept in the audit log).")
    @json_option
    @click.pass_context
    def command(ctx, deployment_id: int, comment: str) -> None:
        result = client_from(ctx).decide(deployment_id, action, comment=comment)
        status = str(result.get("status", action)).replace("_", " ")
        emit(result, lambda d: err.print(f"Deployment {deployment_id} is now {status}.", highlight=False))

    return command


_decision("approve", "Approve a deployment someone else requested.")
_decision("reject", "Reject a deployment (a comment is required).", needs_comment=True)
_decision("cancel", "Cancel a deployment that has not started.")
_decision("rollback", "Roll a live deployment back to the previously live version.")


def _trial_lines(d: dict) -> list[str]:
    """How a canary or shadow stands: its share, its step, and the last comparison."""
    if d.get("strategy") == "canary":
        steps = " → ".join(f"{s:g} %" for s in d.get("steps", []))
        lines = [f"canary: {steps}, each step {d.get('bake_seconds')} s" + (", sticky" if d.get("sticky") else "")]
        if d["status"] == "canary":
            lines.append(
                f"now: step {d['step_index'] + 1} of {len(d.get('steps', []))}, {d['percent']:g} % of requests"
                + (" (paused)" if d.get("paused") else "")
            )
    elif d.get("strategy") == "shadow":
        lines = [f"shadow: {d.get('shadow_percent')} % of requests copied" + (" (paused)" if d.get("paused") else "")]
    else:
        return []
    analysis = d.get("analysis") or {}
    for side in ("candidate", "stable"):
        numbers = analysis.get(side)
        if numbers:
            agreement = (
                f", agreement {numbers['agreement'] * 100:.1f} %" if numbers.get("agreement") is not None else ""
            )
            lines.append(
                f"{side} {numbers['version']}: {numbers['requests']} requests, {numbers['errors']} errors "
                f"({numbers['error_rate'] * 100:.1f} %), p50 {_ms(numbers.get('p50_ms'))}, "
                f"p95 {_ms(numbers.get('p95_ms'))}" + agreement + _live_quality(analysis.get("quality_metric"), numbers)
            )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _live_quality(metric: str | None, numbers: dict) -> str:
    """A side's live quality from ground truth, as `deployments show` prints it."""
    value = numbers.get("quality")
    if not metric or value is None:
        return ""
    shown = f"{value * 100:.1f} %" if metric == "accuracy" else f"{value:.4g}"
    return f", live {metric} {shown} from {numbers.get('labelled', 0)} outcomes"


def _steer(action: str, help_text: str):
    @deployments.command(action, help=help_text)
    @click.argument("deployment_id", type=int)
    @json_option
    @click.pass_context
    def command(ctx, deployment_id: int) -> None:
        result = client_from(ctx).steer(deployment_id, action)
        status = str(result.get("status", action)).replace("_", " ")
        paused = " (paused)" if result.get("paused") else ""
        emit(result, lambda d: err.print(f"Deployment {deployment_id} is now {status}{paused}.", highlight=False))

    return command


_steer("pause", "Hold a canary or shadow at its step: same share, no judging, until resumed.")
_steer("resume", "Resume a paused canary or shadow (its step starts its bake again).")
_steer("promote", "Promote a canary or shadow now: it goes live, the old version drains and stops.")
_steer("abort", "Abort a canary or shadow: back to 0 %, the live version keeps serving.")


@main.command()
@click.argument("deployment_id", type=int)
@click.option("--tail", "-n", type=click.IntRange(1, 5000), default=200, show_default=True, help="Lines per instance.")
@json_option
@click.pass_context
def logs(ctx, deployment_id: int, tail: int) -> None:
    """What a deployment's instances wrote."""
    rows = client_from(ctx).logs(deployment_id, tail=tail)

    def human(items):
        if not items:
            err.print("This deployment has no instances (it is not running).")
        for item in items:
            err.print(f"==> {item['name']} ({item['state']}) <==", style="bold", highlight=False)
            out.print(item["logs"].rstrip("\n") or "(no output yet)", highlight=False, markup=False)

    emit(rows, human)


# ---------------------------------------------------------------- tokens


@main.group()
def access() -> None:
    """Access requests: ask a service's team to let you (or a service account) call it."""


def _access_line(r: dict) -> str:
    who = r["service_account"] or r["requester"]
    line = f"#{r['id']} {who} → {r['service']}: {r['status']}"
    if r.get("decided_by"):
        line += f" by {r['decided_by']}" + (f" ({r['comment']})" if r.get("comment") else "")
    if r.get("expires_at"):
        line += f", until {r['expires_at'][:10]}"
    return line


@access.command("request")
@click.argument("service")
@click.option("--reason", "-r", required=True, help="What will call the service, and why (the team reads it).")
@click.option("--for", "service_account", help="A service account you look after, instead of yourself.")
@click.option("--expires", "expires_at", help="When the access should end: YYYY-MM-DD.")
@click.option("--days", type=click.IntRange(1, 3650), help="Or: for how many days.")
@json_option
@click.pass_context
def access_request(
    ctx, service: str, reason: str, service_account: str | None, expires_at: str | None, days: int | None
):
    """Ask the team that owns SERVICE for the right to call it."""
    if expires_at and days:
        raise InvalidUsage("Give --expires or --days, not both.")
    created = client_from(ctx).request_access(
        service, reason=reason, service_account=service_account, expires=expires_at, days=days
    )
    emit(
        created,
        lambda r: err.print(
            f"Asked for access to {r['service']} (request #{r['id']}); the owners and maintainers of team "
            f"{r['team']} decide. See it with: portal access list",
            highlight=False,
        ),
    )


@access.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "approved", "rejected", "withdrawn", "all"]),
    default="all",
    show_default=True,
    help="Only requests in this state.",
)
@click.option("--service", default="", help="Only requests to this service.")
@click.option("--mine", is_flag=True, help="Only the requests you made.")
@click.option("--to-decide", is_flag=True, help="Only the requests you may decide.")
@json_option
@click.pass_context
def access_list(ctx, status: str, service: str, mine: bool, to_decide: bool) -> None:
    """Access requests you made, and those waiting for you to decide."""
    rows = client_from(ctx).access_requests(
        status="" if status == "all" else status, service=service, mine=mine, to_decide=to_decide
    )
    emit(
        rows,
        lambda r: table(
            [{**x, "for": x["service_account"] or x["requester"]} for x in r],
            [
                ("ID", "id"),
                ("SERVICE", "service"),
                ("FOR", "for"),
                ("ASKED BY", "requester"),
                ("STATUS", "status"),
                ("REASON", "reason"),
                ("UNTIL", "expires_at"),
                ("DECIDED BY", "decided_by"),
                ("COMMENT", "comment"),
            ],
            empty="No access requests.",
        ),
    )


@access.command("approve")
@click.argument("request_id", type=int)
@click.option("--comment", "-m", default="", help="A note for the requester (kept in the audit log).")
@click.option(
    "--expires", "expires_at", help="When the grant ends, YYYY-MM-DD (default: what the requester asked for)."
)
@json_option
@click.pass_context
def access_approve(ctx, request_id: int, comment: str, expires_at: str | None) -> None:
    """Approve a request to call a service of your team: the caller gets a grant."""
    decided = client_from(ctx).decide_access(request_id, "approve", comment=comment, expires=expires_at)
    emit(decided, lambda r: err.print(_access_line(r), highlight=False, markup=False))


@access.command("reject")
@click.argument("request_id", type=int)
@click.option("--comment", "-m", required=True, help="Why (the requester reads it).")
@json_option
@click.pass_context
def access_reject(ctx, request_id: int, comment: str) -> None:
    """Reject a request, saying why."""
    decided = client_from(ctx).decide_access(request_id, "reject", comment=comment)
    emit(decided, lambda r: err.print(_access_line(r), highlight=False, markup=False))


@access.command("withdraw")
@click.argument("request_id", type=int)
@json_option
@click.pass_context
def access_withdraw(ctx, request_id: int) -> None:
    """Withdraw a pending request you made."""
    decided = client_from(ctx).decide_access(request_id, "withdraw")
    emit(decided, lambda r: err.print(_access_line(r), highlight=False, markup=False))


@main.group()
def tokens() -> None:
    """Your API tokens."""


@tokens.command("list")
@json_option
@click.pass_context
def tokens_list(ctx) -> None:
    """Your tokens (never their secrets)."""
    rows = client_from(ctx).tokens()
    emit(
        rows,
        lambda r: table(
            r,
            [
                ("ID", "id"),
                ("NAME", "name"),
                ("PREFIX", "prefix"),
                ("SCOPES", "scopes"),
                ("STATE", "state"),
                ("EXPIRES", "expires_at"),
                ("LAST USED", "last_used_at"),
            ],
            empty="No tokens.",
        ),
    )


@tokens.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(["read", "write", "invoke"]),
    help="Repeat for several (default: all).",
)
@click.option("--days", type=click.IntRange(1), help="Days until it expires (the portal's default: 90).")
@json_option
@click.pass_context
def tokens_create(ctx, name: str, scopes: tuple[str, ...], days: int | None) -> None:
    """Create a token; its secret is printed once, on stdout."""
    created = client_from(ctx).create_token(name, scopes=list(scopes) or None, days=days)

    def human(t):
        err.print(
            f"Token '{t['name']}' ({', '.join(t['scopes'])}), expires {t['expires_at'][:10]}. "
            "Copy it now; it is not shown again:",
            highlight=False,
        )
        click.echo(t["token"])

    emit(created, human)


@tokens.command("revoke")
@click.argument("token_id", type=int)
@json_option
@click.pass_context
def tokens_revoke(ctx, token_id: int) -> None:
    """Revoke a token (it stops working within a second)."""
    client_from(ctx).revoke_token(token_id)
    emit({"revoked": token_id}, lambda r: err.print(f"Revoked token {token_id}."))


# ---------------------------------------------------------------- grants and environments


@main.group()
def grants() -> None:
    """Who may call a service: list, add and revoke grants."""


def _grant_row(g: dict) -> dict:
    limits = []
    if g.get("rate_per_second") is not None:
        limits.append(f"{g['rate_per_second']:g}/s" + (f" burst {g['burst']}" if g.get("burst") is not None else ""))
    if g.get("daily_quota") is not None:
        limits.append(f"{g['daily_quota']}/day")
    return {
        **g,
        "who": f"user {g['user']}" if g.get("user") else f"team {g['team']}",
        "limits": ", ".join(limits),
        "until": (g.get("expires_at") or "")[:10],
    }


_GRANT_COLUMNS = [
    ("ID", "id"),
    ("WHO", "who"),
    ("LIMITS", "limits"),
    ("EXPIRES", "until"),
    ("BY", "created_by"),
    ("CREATED", "created_at"),
]


@grants.command("list")
@click.argument("service")
@json_option
@click.pass_context
def grants_list(ctx, service: str) -> None:
    """Who may call SERVICE, with limits and expiry."""
    rows = client_from(ctx).grants(service)
    emit(
        rows,
        lambda r: table(
            [_grant_row(g) for g in r],
            _GRANT_COLUMNS,
            empty=f"No grants: nobody may call {service} yet. Add one with `portal grants add {service} --user NAME`.",
        ),
    )


@grants.command("add")
@click.argument("service")
@click.option("--user", help="A user or service account who may call it.")
@click.option("--team", help="Or: a team whose members may call it.")
@click.option("--expires", "expires_at", help="When the grant is removed: YYYY-MM-DD or an ISO date and time.")
@click.option("--rate", "rate_per_second", type=click.FloatRange(0, min_open=True), help="Requests per second.")
@click.option("--burst", type=click.IntRange(1), help="Requests at once above the rate (default: the rate).")
@click.option("--daily-quota", type=click.IntRange(1), help="Requests per UTC day.")
@json_option
@click.pass_context
def grants_add(
    ctx,
    service: str,
    user: str | None,
    team: str | None,
    expires_at: str | None,
    rate_per_second: float | None,
    burst: int | None,
    daily_quota: int | None,
) -> None:
    """Let a user, service account or team call SERVICE (owners and maintainers of its team)."""
    if (user is None) == (team is None):
        raise InvalidUsage("Give exactly one of --user and --team.")
    grant = client_from(ctx).add_grant(
        service,
        user=user,
        team=team,
        expires_at=expires_at,
        rate_per_second=rate_per_second,
        burst=burst,
        daily_quota=daily_quota,
    )

    def human(g):
        row = _grant_row(g)
        extra = (f" within {row['limits']}" if row["limits"] else "") + (
            f" until {row['until']}" if row["until"] else ""
        )
        err.print(f"Grant {g['id']}: {row['who']} may call {service}{extra}.", highlight=False)

    emit(grant, human)


@grants.command("revoke")
@click.argument("service")
@click.argument("grant_id", type=click.IntRange(1))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def grants_revoke(ctx, service: str, grant_id: int, yes: bool) -> None:
    """Take back grant GRANT_ID (see `portal grants list SERVICE`); the gateways refuse its calls at once."""
    if not yes:
        click.confirm(f"Revoke grant {grant_id} of {service}? Its holder's calls stop at once", abort=True, err=True)
    client_from(ctx).revoke_grant(service, grant_id)
    emit({"revoked": grant_id}, lambda r: err.print(f"Revoked grant {grant_id} of {service}.", highlight=False))


@main.group()
def environments() -> None:
    """Environments: where services are deployed, and their rules."""


@environments.command("list")
@json_option
@click.pass_context
def environments_list(ctx) -> None:
    """The environments, whether a deployment there waits for an approver, and what runs it."""
    rows = client_from(ctx).environments()
    shown = [
        {**e, "approval": "required" if e.get("requires_approval") else "not needed", "cap": e.get("max_replicas")}
        for e in rows
    ]
    emit(
        rows,
        lambda r: table(
            shown,
            [
                ("NAME", "name"),
                ("APPROVAL", "approval"),
                ("RUNTIME", "runtime"),
                ("MAX REPLICAS", "cap"),
                ("DESCRIPTION", "description"),
            ],
            empty="No environments. A portal admin creates them.",
        ),
    )


# ---------------------------------------------------------------- serving


@main.group()
def feedback() -> None:
    """Ground truth: what really happened, for predictions the gateway logged."""


@feedback.command("push")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--service", "-s", required=True, help="The service the predictions were made by.")
@json_option
@click.pass_context
def feedback_push(ctx, file: Path, service: str) -> None:
    """Send outcomes from a CSV (prediction_id,actual) or JSON file: portal feedback push y.csv -s iris"""
    result = client_from(ctx).send_feedback_file(service, file)

    def human(r):
        err.print(f"{r['accepted']} outcome(s) kept for {service}.", highlight=False)
        if r["pending"]:
            err.print(f"{len(r['pending'])} of them are recent predictions not in the log yet; they join once there.")
        if r["unknown"]:
            shown = ", ".join(r["unknown"][:5]) + (" …" if len(r["unknown"]) > 5 else "")
            err.print(f"{len(r['unknown'])} id(s) are not predictions of {service}, not kept: {shown}", markup=False)

    emit(result, human)
    if result["unknown"] and not result["accepted"]:
        ctx.exit(1)


@main.command()
@click.argument("environment")
@click.argument("service")
@click.argument("major", type=click.IntRange(0))
@click.option(
    "--data",
    "-d",
    "data",
    required=True,
    help='JSON file (or - for stdin): {"instances": [...]} or a list of instances.',
)
@json_option
@click.pass_context
def predict(ctx, environment: str, service: str, major: int, data: str) -> None:
    """Call a live service: portal predict production iris 2 --data x.json"""
    body = read_json_file(data, "the instances")
    answer = client_from(ctx).predict(environment, service, major, body)
    emit(answer, lambda a: click.echo(json.dumps(a, indent=2)))


if __name__ == "__main__":
    main()
