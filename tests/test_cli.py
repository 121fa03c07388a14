"""The CLI as an operator meets it on a fresh host: one line that says what to do, exit 2.

Run as real subprocesses against the test server: a database that does not exist, a role
that does not exist, a database that is not migrated yet.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from daemon.cli import build_parser, main
from daemon.cli.common import database_problem
from daemon.platform.config import Config
from daemon.platform.migrate import MigrationError
from daemon.platform.secrets import keygen
from tests.pg import PgServer, _with_db

ROOT = Path(__file__).resolve().parent.parent


def paymentd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def config_for(tmp_path: Path, url: str) -> Path:
    key = tmp_path / "secret.key"
    if not key.exists():
        keygen(key)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "{url}"\n[secrets]\nkey_file = "{key}"\n')
    return cfg


def assert_one_line(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err


@pytest.fixture
def unmigrated_url(pg: PgServer) -> Iterator[str]:
    name = f"paymentd_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(pg.admin_url, name)
    finally:
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


COMMANDS = [["check-config"], ["olt", "list"], ["onu", "list"], ["onu", "set", "1", "x", "0/1/1:1"]]


@pytest.mark.parametrize("command", [*COMMANDS, ["migrate"]], ids=" ".join)
def test_a_missing_database_says_create_it(
    pg: PgServer, tmp_path: Path, command: list[str]
) -> None:
    cfg = config_for(tmp_path, _with_db(pg.admin_url, "paymentd_no_such_db"))
    proc = paymentd(*command, "--config", str(cfg))
    assert_one_line(proc, 'database "paymentd_no_such_db"', "createdb -O", "paymentd migrate")


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.netloc.rsplit('@', 1)[-1]}"))


@pytest.mark.parametrize("command", [["olt", "list"], ["migrate"]], ids=" ".join)
def test_a_missing_role_says_create_it(pg: PgServer, tmp_path: Path, command: list[str]) -> None:
    cfg = config_for(tmp_path, with_user(pg.admin_url, "paymentd_no_such_role"))
    proc = paymentd(*command, "--config", str(cfg))
    assert_one_line(proc, 'role "paymentd_no_such_role"', "createuser paymentd_no_such_role")


@pytest.fixture
def role_without_ownership(pg: PgServer, unmigrated_url: str) -> Iterator[str]:
    """A fresh role on a database owned by someone else (createdb without -O)."""
    role = f"paymentd_r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        yield with_user(unmigrated_url, role)
    finally:
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            name = urlsplit(unmigrated_url).path.lstrip("/")
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_migrate_as_a_role_that_does_not_own_the_database_says_make_it_owner(
    role_without_ownership: str, tmp_path: Path
) -> None:
    cfg = config_for(tmp_path, role_without_ownership)
    proc = paymentd("migrate", "--config", str(cfg))
    assert_one_line(proc, "permission denied for schema public", "OWNER TO", "paymentd migrate")


def test_migrate_as_the_owner_installs_pgmq_without_a_superuser(
    pg: PgServer, tmp_path: Path
) -> None:
    """systemd/README.md step 5: createuser + createdb -O, then migrate as that role."""
    role = f"paymentd_r_{uuid.uuid4().hex[:12]}"
    name = f"paymentd_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    try:
        cfg = config_for(tmp_path, with_user(_with_db(pg.admin_url, name), role))
        proc = paymentd("migrate", "--config", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert "pgmq: sql" in proc.stdout or "pgmq: extension" in proc.stdout, proc.stdout
        listed = paymentd("olt", "list", "--config", str(cfg))
        assert listed.returncode == 0 and "no OLTs configured" in listed.stdout, listed.stderr
    finally:
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_pgmq_extension_that_needs_a_superuser_says_so() -> None:
    # Not reproducible on the test server (no pgmq extension there): PostgreSQL's words for
    # it, as seen with another untrusted extension (file_fdw) on PostgreSQL 15.
    exc = MigrationError(
        'database migration failed: permission denied to create extension "pgmq"\n'
        "HINT:  Must be superuser to create this extension."
    )
    problem = database_problem(exc, Config())
    assert problem is not None
    assert "CREATE EXTENSION pgmq" in str(problem) and "\n" not in str(problem)


@pytest.mark.parametrize("command", COMMANDS[1:], ids=" ".join)
def test_an_unmigrated_database_says_run_migrate(
    unmigrated_url: str, tmp_path: Path, command: list[str]
) -> None:
    cfg = config_for(tmp_path, unmigrated_url)
    proc = paymentd(*command, "--config", str(cfg))
    assert_one_line(proc, "not migrated yet", f"paymentd migrate --config {cfg}")


def test_check_config_on_an_unmigrated_database(unmigrated_url: str, tmp_path: Path) -> None:
    # The unit's ExecStartPre runs before the first start, which migrates by default: a
    # warning then; without migrate_on_start it is the error.
    cfg = config_for(tmp_path, unmigrated_url)
    proc = paymentd("check-config", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "not migrated yet" in proc.stdout and "Traceback" not in proc.stderr
    cfg.write_text(cfg.read_text() + "[daemon]\nmigrate_on_start = false\n")
    assert_one_line(paymentd("check-config", "--config", str(cfg)), "paymentd migrate")


# ---- argparse: no abbreviations, no secrets in errors (defect 7) --------------------------


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def test_no_parser_accepts_abbreviations() -> None:
    all_parsers = list(parsers(build_parser()))
    assert len(all_parsers) > 15
    assert [p.prog for p in all_parsers if p.allow_abbrev] == []


def test_olt_update_password_is_the_password_not_a_file() -> None:
    args = build_parser().parse_args(["olt", "update", "north", "--password", "s3cret"])
    assert (args.password, args.password_file) == ("s3cret", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["olt", "update", "north", "--passw", "hunter2"],
        ["olt", "add", "n", "--vendor", "zte", "--host", "h", "--username", "u", "--pass=hunter2"],
        ["olt", "update", "north", "--password-fil", "hunter2"],
        ["olt", "add", "n", "--vendor", "hunter2", "--password", "hunter2"],
        ["olt", "update", "north", "--password", "hunter2", "--password-file", "f"],
    ],
)
def test_argparse_errors_never_echo_a_password(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "hunter2" not in err, err
    assert "error:" in err


def test_an_unknown_option_is_named_without_its_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["olt", "update", "north", "--passw", "hunter2"])
    assert "unrecognized arguments: --passw (values not shown)" in capsys.readouterr().err


def _documented_commands() -> Iterator[tuple[str, str]]:
    sources = [*ROOT.glob("daemon/**/*.py"), ROOT / "README.md", *ROOT.glob("*/README.md")]
    for path in sources:
        for m in re.finditer(r"paymentd ((?:[a-z][a-z-]* ?)+)([^'`\n\"]*)", path.read_text()):
            yield str(path.relative_to(ROOT)), m.group(1) + m.group(2)


def test_every_flag_that_a_message_or_doc_suggests_exists() -> None:
    """`olt update NAME --password ...` (the wrong-key error) must be a real flag."""
    root = build_parser()
    checked = 0
    for where, command in _documented_commands():
        words = command.split()
        parser = root
        for word in words:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if not subs or word not in subs[0].choices:
                break
            parser = subs[0].choices[word]
        if parser is root:
            continue
        known = {o for a in parser._actions for o in a.option_strings}
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert flag in known, f"{where}: 'paymentd {command}' names {flag}, not a flag"
            checked += 1
    assert checked > 10


def test_a_password_typed_as_password_file_is_not_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shape of the original report: the "file name" was the password.
    cfg = config_for(tmp_path, "postgresql://nobody@127.0.0.1:9/nowhere")
    code = main(["olt", "update", "north", "--password-file", "hunter2", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "paymentd: error: --password-file: cannot read that file (No such file or directory)"
    )


def test_run_on_a_missing_database_ends_in_one_error_line(pg: PgServer, tmp_path: Path) -> None:
    cfg = config_for(tmp_path, _with_db(pg.admin_url, "paymentd_no_such_db"))
    for extra in ("", "[daemon]\nmigrate_on_start = false\n"):
        cfg.write_text(cfg.read_text() + extra)
        proc = paymentd("run", "--config", str(cfg))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        # The start-up log line, then the error.
        assert lines[-1].startswith('paymentd: error: database "paymentd_no_such_db"'), lines
        assert len(lines) == 2, lines


@pytest.mark.parametrize("limit", ["-5", "99999999999999999999", "ten"])
def test_a_bad_limit_is_one_line(
    limit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "postgresql://postgres@127.0.0.1:5432/postgres"\n')
    with pytest.raises(SystemExit) as exc:
        main(["uisp", "list", "--limit", limit, "-c", str(config)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--limit: must be a whole number from 1 to 1000" in err and "Traceback" not in err


def test_a_database_url_with_a_bad_port_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "postgresql://postgres:pw-secret@127.0.0.1:notaport/x"\n')
    for command in (("check-config",), ("queues", "failed"), ("olt", "list")):
        proc = paymentd(*command, "--config", str(config))
        assert_one_line(proc, "database.url: the port must be a number from 1 to 65535")
        assert "pw-secret" not in proc.stderr


def test_an_unreachable_database_is_one_line_naming_database_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "postgresql://postgres:pw-secret@127.0.0.1:{port}/x"\n')
    for command in (("queues", "failed"), ("uisp", "list"), ("olt", "list")):
        proc = paymentd(*command, "--config", str(config))
        assert_one_line(proc, "cannot reach the database (database.url = ", "is PostgreSQL running")
        assert "pw-secret" not in proc.stderr
