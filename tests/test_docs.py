"""Every command, snippet and cross-reference in README.md and docs/*.md.

What is checked, block by block (a fenced block is known by its info string):

- ``sh`` blocks: every line is a command of a known program, or the test fails.
  - ``mpesa-sync …``: parsed by the real CLI (click resolves the subcommand
    and every option and converts every value; the commands' bodies are
    swapped for a recorder). The ones that are safe on a test database
    (migrate, verify, reconcile, alerts without ``ack``, settings show,
    status, prune, migrations-dir) are then run for real on a migrated
    database holding the docs' example bar, and must exit 0 or 1 with
    nothing on stderr that says "error". A ``$(mpesa-sync …)`` inside
    another command is parsed too.
  - ``yoyo …``: run against a test database, the docs' URL swapped for it
    and ``$(mpesa-sync migrations-dir)`` for the folder it prints.
  - ``psql …``: run against a migrated test database.
  - ``curl …``: the URL's path must be a route of the relay's HTTP app (not
    requested).
  - ``export VAR=…``: VAR is read by the package; a ``$(…)`` value is run,
    and an encryption key it prints must be accepted.
  - ``make T``: T is a Makefile target. ``pip install P``: P is this project
    (nothing is installed).
- any block (``crontab``, ``ini``, ``nagios`` …): every ``mpesa-sync …``
  command in it is parsed as above.
- inline `` `mpesa-sync …` `` synopses in prose: the subcommand words resolve
  and every ``--option`` exists on that command.
- ``sql`` blocks: run on a migrated test database holding the example bar,
  each in a transaction that is rolled back (so: they run; their output is
  not compared); of a ``sql pg_cron`` block, the command it schedules.
- ``json verify`` / ``reconcile`` / ``relay-line`` / ``reset`` / ``status`` /
  ``prune``: the keys, nested included, equal those of real output; ``text``
  blocks with a NOTIFY: the payload's keys equal those of a real
  notification on that channel.
- ``yaml`` blocks and the metrics tables: the metric names are the ones
  ``verify --prometheus-file`` writes (operating.md) and the relay serves at
  /metrics (relay.md).
- ``python`` blocks: every name imported from mpesa_sync exists, and calls
  to it use only keyword arguments its signature has (not run).
- ``js payment-options``: word for word in the bundled page's script; other
  ``js`` blocks are not checked.
- a block whose label is a path (``ini docs/systemd/…``): that file, word
  for word.
- relative links resolve to files (and headings, for ``#anchors``), and every
  ``mpesa_sync.name`` the prose cites is an object of sql/schema.sql or a
  module of the package.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest

from mpesa_sync import alerts, cli, migrations
from mpesa_sync.crypto import KEY_ENV, CredentialCipher
from mpesa_sync.relay.app import STATIC_DIR, RelayApp
from mpesa_sync.relay.events import LogState, Reset, StatusEvent
from mpesa_sync.relay.listener import Relay
from mpesa_sync.relay.metrics import RelayMetrics
from mpesa_sync.verification import VerifyReport, write_prometheus
from tests.support.cli import run_cli
from tests.support.database import Database

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLE_BAR = uuid.UUID("3f0c8a52-6f0e-4c1e-9a57-2b8d1c0e7a11")
EXAMPLE_URL = "postgresql+psycopg://postgres@db.example:5432/postgres?schema=mpesa_sync_yoyo"
PROGRAMS = {"mpesa-sync", "yoyo", "psql", "curl", "export", "make", "pip"}
RUN_ON_A_TEST_DATABASE = {
    "migrate",
    "verify",
    "reconcile",
    "alerts",
    "settings show",
    "status",
    "prune",
    "migrations-dir",
}
MIGRATIONS_DIR = "$(mpesa-sync migrations-dir)"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    label: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        start = None
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                if start is None:
                    start, info = number, line.lstrip()[3:].split()
                else:
                    indent = len(lines[start - 1]) - len(lines[start - 1].lstrip())
                    body = "\n".join(text[indent:] for text in lines[start : number - 1])
                    lang, label = [*info, "", ""][:2]
                    found.append(Block(page, start, lang, label, body))
                    start = None
        assert start is None, f"{page}: unclosed code block at line {start}"
    return found


BLOCKS = blocks()


def of(lang: str, label: str | None = None) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang and (label is None or b.label == label)]


def prose(page: Path) -> str:
    """A page without its fenced blocks."""
    return re.sub(r"^\s*```.*?^\s*```", "", page.read_text(), flags=re.S | re.M)


def command_lines(block: Block) -> list[str]:
    """The commands of a shell or crontab block: comments dropped, continuations joined."""
    text = block.text.replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if block.lang == "crontab":
        lines = [line.split(None, 5)[5] for line in lines]
    return lines


def words(line: str) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, the command's words up to a redirection)."""
    tokens = shlex.split(line, comments=True)
    env = {}
    while tokens and re.fullmatch(r"[A-Z_]+=.*", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    for i, token in enumerate(tokens):
        if re.fullmatch(r"\d?>>?|\|", token) or token.startswith((">", "2>")):
            tokens = tokens[:i]
            break
    return env, tokens


def mpesa_sync_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """Every `mpesa-sync …` command in any code block: (where, env, argv after the name)."""
    found = []
    for block in BLOCKS:
        if block.lang in ("sh", "crontab"):
            for line in command_lines(block):
                env, argv = words(line)
                if argv and argv[0] == "mpesa-sync":
                    found.append((str(block), env, argv[1:]))
                for inner in re.findall(r"\$\(mpesa-sync ([^)]*)\)", line):
                    found.append((str(block), {}, shlex.split(inner)))
        else:
            for line in block.text.splitlines():
                match = re.search(r"(?:^|[\s=/])mpesa-sync (.+)$", line)
                if match:
                    found.append((str(block), {}, words(match.group(1))[1]))
    return found


COMMANDS = mpesa_sync_commands()


# -- mpesa-sync, parsed --------------------------------------------------------------


def command_tree() -> Iterator[tuple[str, click.Command]]:
    def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}".strip())

    yield from walk(cli.cli, "")


@pytest.fixture
def inert_cli(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The real CLI with every command's body swapped for a recorder of its path."""
    invoked: list[str] = []
    for path, command in command_tree():
        monkeypatch.setattr(command, "callback", lambda *_, _p=path, **__: invoked.append(_p))
    monkeypatch.setenv("MPESA_SYNC_DSN", "postgresql://docs@127.0.0.1:1/docs")
    return invoked


def parse(argv: list[str], invoked: list[str]) -> str:
    """The command path the real parser resolves ``argv`` to; fails on any usage error."""
    invoked.clear()
    try:
        cli.cli.main(args=list(argv), prog_name="mpesa-sync", standalone_mode=False)
    except click.ClickException as exc:
        pytest.fail(f"mpesa-sync {shlex.join(argv)}: {exc.format_message()}")
    return invoked[-1]


@pytest.mark.no_database
@pytest.mark.parametrize(("where", "env", "argv"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_mpesa_sync_command_parses(
    inert_cli: list[str], where: str, env: dict[str, str], argv: list[str]
) -> None:
    path = parse(argv, inert_cli)
    assert path, f"{where}: resolved to no command"


SYNOPSES = [
    (str(page.relative_to(ROOT)), span)
    for page in PAGES
    for span in re.findall(r"`mpesa-sync ([^`]+)`", prose(page))
]


@pytest.mark.no_database
@pytest.mark.parametrize(("page", "synopsis"), SYNOPSES, ids=[s[1] for s in SYNOPSES])
def test_every_synopsis_names_a_command_and_its_options(page: str, synopsis: str) -> None:
    commands = dict(command_tree())
    path = ""
    for word in synopsis.split():
        if f"{path} {word}".strip() in commands:
            path = f"{path} {word}".strip()
    chain = [commands[" ".join(path.split()[:n])] for n in range(len(path.split()) + 1)]
    options = {opt for command in chain for param in command.params for opt in param.opts}
    options |= {
        opt for command in chain for param in command.params for opt in param.secondary_opts
    }
    options |= {"--help", "-h"}
    named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", synopsis))
    assert named <= options, f"{page}: `mpesa-sync {synopsis}` names {sorted(named - options)}"
    assert path or synopsis.startswith("-"), f"{page}: `mpesa-sync {synopsis}` names no command"


# -- mpesa-sync, run -------------------------------------------------------------------


def runnable() -> list[tuple[str, dict[str, str], list[str]]]:
    chosen = []
    for where, env, argv in COMMANDS:
        words_ = [w for w in argv if not w.startswith("-")]
        name = " ".join(words_[:2]) if words_[:1] == ["settings"] else (words_[:1] or [""])[0]
        if name in RUN_ON_A_TEST_DATABASE and "ack" not in argv:
            chosen.append((where, env, argv))
    return chosen


RUNNABLE = runnable()


@pytest.fixture
def docs_db(db: Database) -> Database:
    """A migrated database with the docs' example bar, one credential row, and drift."""
    db.add_bar("the docs' bar", id=EXAMPLE_BAR)
    db.add_credentials(EXAMPLE_BAR, active=True)
    db.force_enabled(db.add_bar("drifted"), True)
    return db


def test_the_commands_safe_on_a_test_database_run(docs_db: Database, tmp_path: Path) -> None:
    assert len(RUNNABLE) >= 10
    for where, env, argv in RUNNABLE:
        args = list(argv)
        for i, word in enumerate(args[:-1]):
            if word == "--dsn":
                args[i + 1] = docs_db.dsn
            if word == "--prometheus-file":
                args[i + 1] = str(tmp_path / "metrics.prom")
        if args == ["migrations-dir"]:
            continue  # takes no database (test_yoyo_lines_run uses what it prints)
        result = run_cli(*args, env={**env, "MPESA_SYNC_DSN": docs_db.dsn})
        assert result.code in (0, 1), f"{where}: mpesa-sync {shlex.join(argv)}: {result.stderr}"
        assert "error" not in result.stderr.lower(), f"{where}: {result.stderr}"
        assert result.stdout or "--prometheus-file" in args, where
    assert (tmp_path / "metrics.prom").exists()


# -- the other programs ----------------------------------------------------------------


def shell_lines() -> list[tuple[str, dict[str, str], list[str]]]:
    return [(str(b), *words(line)) for b in of("sh") for line in command_lines(b)]


def raw_lines() -> list[str]:
    return [line for b in of("sh") for line in command_lines(b)]


def words_of_export(line: str) -> tuple[str, str, str]:
    """``export NAME=VALUE  # comment`` as (NAME, "=", VALUE)."""
    assignment = line.removeprefix("export ").split("  #", 1)[0].strip()
    return assignment.partition("=")


@pytest.mark.no_database
def test_every_shell_line_is_a_command_this_test_knows() -> None:
    unknown = [(where, argv[:1]) for where, _, argv in shell_lines() if argv[0] not in PROGRAMS]
    assert unknown == []


@pytest.mark.no_database
def test_make_pip_and_export_lines() -> None:
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    package_source = "".join(p.read_text() for p in (ROOT / "mpesa_sync").rglob("*.py"))
    seen = set()
    for where, _, argv in shell_lines():
        program, args = argv[0], argv[1:]
        if program == "make":
            assert set(args) <= targets, where
        elif program == "pip":
            assert args[0] == "install", where
            names = [a for a in args[1:] if not a.startswith("-")]
            assert names == ["mpesa-sync"], where
        elif program == "export":
            # shlex does not know $( ... ): read the assignment from the line itself
            assigned = args[0].split("=", 1)[0]
            exports = [text for text in raw_lines() if text.startswith(f"export {assigned}=")]
            assert exports, where
            for line in exports:
                name, _, value = words_of_export(line)
                assert f'"{name}"' in package_source, f"{where}: the package never reads {name}"
                command = re.fullmatch(r"\$\((.*)\)", value)
                if command:
                    printed = subprocess.run(
                        shlex.split(command.group(1)), capture_output=True, text=True, check=True
                    ).stdout.strip()
                    if name == KEY_ENV:
                        CredentialCipher.from_env({KEY_ENV: printed})
        else:
            continue
        seen.add(program)
    assert seen == {"make", "pip", "export"}


@pytest.mark.no_database
def test_curl_urls_are_routes_of_the_relay() -> None:
    app = RelayApp(Relay(""), "")
    urls = [a for _, _, argv in shell_lines() if argv[0] == "curl" for a in argv if "://" in a]
    assert len(urls) >= 3
    for url in urls:
        path = "/" + url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
        assert app.match(path), url


def test_yoyo_lines_run(host_db: Database, tmp_path: Path) -> None:
    lines = [argv for _, _, argv in shell_lines() if argv[0] == "yoyo"]
    assert [argv[1] for argv in lines] == ["apply", "rollback", "break-lock"]
    url = migrations.yoyo_url(host_db.dsn)
    yoyo = str(Path(sys.executable).with_name("yoyo"))
    folder = run_cli("migrations-dir").stdout.strip()
    swap = {"yoyo": yoyo, EXAMPLE_URL: url, MIGRATIONS_DIR: folder}
    # the line before them makes the schema yoyo keeps its tables in
    (create,) = [argv for _, _, argv in shell_lines() if "mpesa_sync_yoyo" in " ".join(argv)
                 and argv[0] == "psql"]  # fmt: skip
    subprocess.run([host_db.dsn if w == "$MPESA_SYNC_DSN" else w for w in create], check=True)
    newest = host_db.scalar  # what the newest migration (0007) changes, and 0006 before it
    v3_core = "SELECT to_regprocedure('mpesa_sync.credentials_changed_v3()') IS NOT NULL"
    anon_usage = "SELECT has_schema_privilege('anon', 'mpesa_sync', 'USAGE')"
    for argv in lines:
        assert argv[1] == "break-lock" or MIGRATIONS_DIR in argv, argv  # never a guessed folder
        command = [swap.get(w, w) for w in argv]
        # Anywhere, not only in a checkout: the folder comes from the package.
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr}"
        if argv[1] == "apply":
            assert newest(v3_core) is True and newest(anon_usage) is False
        elif argv[1] == "rollback":
            assert newest(v3_core) is False and newest(anon_usage) is False  # the newest only


def test_psql_lines_run(db: Database) -> None:
    lines = [argv for _, _, argv in shell_lines() if argv[0] == "psql"]
    assert lines
    env = {**os.environ, "MPESA_SYNC_DSN": db.dsn}
    for argv in lines:
        command = [os.path.expandvars(w) if w.startswith("$") else w for w in argv]
        command = [w.replace("$MPESA_SYNC_DSN", db.dsn) for w in command]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr}"
    assert db.scalar("SELECT to_regproc('public.mpesa_save_settings') IS NOT NULL")


# -- SQL and what real output looks like --------------------------------------------------


def test_sql_blocks_run(docs_db: Database) -> None:
    assert len(of("sql")) >= 3 and of("sql", "pg_cron")
    with docs_db.connect(autocommit=False) as conn:
        for block in of("sql"):
            text = block.text
            if block.label == "pg_cron":  # no pg_cron here: run what it would run
                [text] = re.findall(r"\$\$(.*?)\$\$", text, re.S)
            with conn.transaction(force_rollback=True):
                conn.execute(text)  # type: ignore[arg-type]


def keys(value: Any) -> Any:
    """The shape of a JSON value: its keys, nested, without the values."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list) and value:
        return [keys(value[0])]
    return None


def test_json_examples_have_the_keys_of_real_output(docs_db: Database) -> None:
    docs_db.execute(
        "ALTER TABLE bars ADD CONSTRAINT docs_keep_on CHECK (mpesa_enabled IS NOT FALSE) NOT VALID"
    )
    real = {
        "verify": json.loads(run_cli("verify", "--dsn", docs_db.dsn, "--format", "json").stdout),
        "reconcile": json.loads(
            run_cli("reconcile", "--dsn", docs_db.dsn, "--format", "json").stdout
        ),
    }
    assert real["reconcile"]["failed"], "the example needs a refused bar"
    generation = uuid.uuid4()
    line = StatusEvent.from_row(
        {
            "event_id": 1,
            "bar_id": EXAMPLE_BAR,
            "mpesa_enabled": True,
            "source": "credentials",
            "at": datetime.now(UTC),
        },
        generation,
    )
    real["relay-line"] = json.loads(line.line)
    log = LogState(generation, pruned_through=0, oldest_event_id=1, newest_event_id=1)
    real["reset"] = json.loads(Reset.of("pruned", log).line)
    for name, args in (("status", []), ("prune", ["--older-than", "30d"])):
        result = run_cli(name, "--dsn", docs_db.dsn, "--format", "json", *args)
        real[name] = json.loads(result.stdout)
    for block in of("json"):
        assert block.label in real, f"{block}: label the block with the output it shows"
        assert keys(json.loads(block.text)) == keys(real[block.label]), str(block)


def test_notify_examples_have_the_keys_of_real_payloads(docs_db: Database) -> None:
    examples = [
        re.fullmatch(r"NOTIFY (\w+), '(.*)'", line.strip())
        for block in of("text")
        for line in block.text.splitlines()
        if line.startswith("NOTIFY")
    ]
    assert len(examples) == 2 and all(examples)
    with docs_db.connect() as listener:
        listener.execute("LISTEN mpesa_status")
        listener.execute("LISTEN mpesa_alerts")
        docs_db.execute("UPDATE mpesa_credentials SET is_active = false")
        alerts.raise_alert(docs_db.dsn, "settings_save_failed", EXAMPLE_BAR, {})
        real = {
            n.channel: json.loads(n.payload) for n in listener.notifies(timeout=10, stop_after=2)
        }
    for match in examples:
        assert match is not None
        channel, payload = match.groups()
        assert set(json.loads(payload)) == set(real[channel]), channel


def table_metrics(page: str) -> set[str]:
    return set(re.findall(r"^\| `(mpesa_sync_\w+)`", prose(ROOT / page), re.M))


@pytest.mark.no_database
def test_metric_names_are_the_ones_verify_writes_and_the_relay_serves(tmp_path: Path) -> None:
    write_prometheus(VerifyReport(checked=1, drifted_total=0), tmp_path / "m.prom")
    written = set(re.findall(r"^(mpesa_sync_\w+) ", (tmp_path / "m.prom").read_text(), re.M))
    assert table_metrics("docs/operating.md") == written
    served_text = RelayMetrics(Relay("")).render().decode()
    served = set(re.findall(r"^# TYPE (mpesa_sync_\w+) ", served_text, re.M))
    assert table_metrics("docs/relay.md") == served
    for block in of("yaml"):
        for name in re.findall(r"mpesa_sync_\w+", block.text):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in written or base in served, f"{block}: {name}"


@pytest.mark.no_database
def test_the_page_script_snippet_is_the_bundled_pages_own() -> None:
    [block] = of("js", "payment-options")
    script = (STATIC_DIR / "page.js").read_text()
    assert "function followPaymentOptions(" in block.text
    assert block.text in script


@pytest.mark.no_database
def test_blocks_that_show_a_shipped_file_show_it_word_for_word() -> None:
    shown = [b for b in BLOCKS if "/" in b.label]
    assert {b.label for b in shown} == {
        str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "systemd").rglob("*") if p.is_file()
    }
    for block in shown:
        assert block.text == (ROOT / block.label).read_text().rstrip("\n"), str(block)


@pytest.mark.no_database
def test_python_examples_use_real_names_and_keywords() -> None:
    assert of("python")
    for block in of("python"):
        tree = ast.parse(block.text)
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "mpesa_sync":
                module = importlib.import_module("mpesa_sync")
                imported |= {a.name: getattr(module, a.name) for a in node.names}
        assert imported, str(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in imported:
                parameters = inspect.signature(imported[node.func.id]).parameters  # type: ignore[attr-defined]
                assert {k.arg for k in node.keywords} <= set(parameters), str(block)


# -- links and names -----------------------------------------------------------------------


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.no_database
def test_relative_links_and_anchors_resolve() -> None:
    checked = 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", prose(file), re.M)
                assert anchor in {slug(h) for h in headings}, f"{page.name}: {target}"
            checked += 1
    assert checked > 10


@pytest.mark.no_database
def test_cited_database_objects_and_modules_exist() -> None:
    schema = (ROOT / "sql/schema.sql").read_text()
    # and what a DBA or `mpesa-sync realtime enable` may add (sql/optional/)
    schema += "".join(p.read_text() for p in sorted((ROOT / "sql/optional").glob("*.sql")))
    cited = {
        name
        for page in PAGES
        for name in re.findall(r"(?<![/\w])mpesa_sync\.(\w+)", page.read_text())
    }
    assert cited
    for name in cited:
        in_schema = f"mpesa_sync.{name}" in schema
        is_module = importlib.util.find_spec(f"mpesa_sync.{name}") is not None
        assert in_schema or is_module, name
