"""A throwaway PostgreSQL cluster for the tests (a pytest plugin: ``pytest_plugins = ["pg"]``).

The session-scoped fixture :func:`pg_cluster` runs ``initdb`` from the installed PostgreSQL
(the Debian package, ``/usr/lib/postgresql/N/bin``; the project's test command installs it)
into a temporary folder, starts it with ``pg_ctl`` on a free port of 127.0.0.1 only (its
Unix socket in its own folder, never the system's ``/var/run/postgresql``), with password
authentication (SCRAM) on 127.0.0.1, and at the end stops it and removes the folder.  It
never touches a system cluster.  As root (``initdb`` refuses root) every server command
runs as the ``postgres`` system user, which owns the temporary folder.

* :func:`postgres_url` (session): the ``postgresql://`` URL of the cluster's database.
* :func:`pg_url` (per test): a FRESH database (``CREATE DATABASE`` before the test, dropped
  after it), so the tests are independent.

If PostgreSQL is not installed the fixture FAILS (it does not skip): its absence is an
error of the environment.  :func:`start_cluster` is also used by ``perf/bench_sync.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "ronda"
PASSWORD = "ronda-test-pw"
DATABASE = "ronda"
START_TIMEOUT_S = 60


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (the message says why)."""


def find_bindir() -> Path:
    """The folder of ``initdb``, ``pg_ctl``, ``postgres`` and ``psql``: the newest Debian
    ``/usr/lib/postgresql/N/bin``, else ``pg_config --bindir``, else the PATH."""
    env = os.environ.get("RONDA_PG_BINDIR")
    candidates: list[Path] = [Path(env)] if env else []
    versions = []
    for p in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            versions.append((float(p.parent.name), p))
    candidates += [p for _, p in sorted(versions, reverse=True)]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).parent)
    for c in candidates:
        if all((c / b).is_file() for b in ("initdb", "pg_ctl", "postgres", "psql")):
            return c
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found in"
        " /usr/lib/postgresql/*/bin, `pg_config --bindir` or the PATH: install the Debian"
        " package `postgresql` (the project's test command does), or set RONDA_PG_BINDIR")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgCluster:
    bindir: Path
    root: Path  # temporary folder: data/, sock/, log, pwfile
    port: int
    run_as: str | None  # the system user the server runs as (None: ourselves)
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        return (f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}"
                f"/{database}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through ``psql`` over TCP with the password (as the tests connect)."""
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        r = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
             "-c", sql], capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {r.stderr.strip()}")
        return r.stdout

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(name)
        self.psql(f"CREATE DATABASE {name}")
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                _run(self, [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data),
                            "-m", "fast", "-w", "-t", "30"], check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run(c: PgCluster | None, argv: list[str], run_as: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    who = c.run_as if c is not None else run_as
    if who is not None:
        argv = ["runuser", "-u", who, "--", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                       cwd="/")
    if check and r.returncode != 0:
        raise PgUnavailable(f"{' '.join(argv)} failed ({r.returncode}):"
                            f" {r.stderr.strip() or r.stdout.strip()}")
    return r


def _server_user() -> str | None:
    """None when not root; as root the ``postgres`` system user (the Debian package
    creates it), since initdb and postgres refuse to run as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PgUnavailable(
            "running as root and there is no `postgres` system user to run the throwaway"
            " cluster as (the Debian package `postgresql` creates it)") from None
    if shutil.which("runuser") is None:
        raise PgUnavailable("running as root and `runuser` (util-linux) is missing")
    return "postgres"


def start_cluster(fsync: bool = False, settings: dict[str, str] | None = None) -> PgCluster:
    """initdb + pg_ctl start in a new temporary folder; a database ``ronda`` owned by the
    user ``ronda`` (password).  ``fsync=False`` (tests): no durability, faster.  Raises
    :class:`PgUnavailable` with the reason when it cannot."""
    bindir = find_bindir()
    run_as = _server_user()
    root = Path(tempfile.mkdtemp(prefix="ronda-pg-"))
    root.chmod(0o700)
    cluster: PgCluster | None = None
    try:
        (root / "sock").mkdir(mode=0o700)
        pwfile = root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if run_as is not None:
            pw = pwd.getpwnam(run_as)
            for p in (root, root / "sock", pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        cluster = PgCluster(bindir, root, 0, run_as)
        _run(cluster, [str(bindir / "initdb"), "-D", str(cluster.data), "-U", USER,
                       f"--pwfile={pwfile}", "--auth-local=trust",
                       "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        opts = {"listen_addresses": "127.0.0.1", "unix_socket_permissions": "0700",
                "max_connections": "50", "shared_buffers": "64MB", "log_min_messages": "warning",
                **({} if fsync else {"fsync": "off", "synchronous_commit": "off",
                                      "full_page_writes": "off"}),
                **(settings or {})}
        last = ""
        for _ in range(5):  # a free port may be taken between probing and binding
            cluster.port = _free_port()
            o = f"-k {cluster.sockdir} -p {cluster.port} " + " ".join(
                f"-c {k}={v}" for k, v in opts.items())
            r = _run(cluster, [str(bindir / "pg_ctl"), "start", "-D", str(cluster.data),
                               "-l", str(cluster.log), "-w", "-t", str(START_TIMEOUT_S),
                               "-o", o], check=False)
            if r.returncode == 0:
                break
            last = r.stderr.strip() + "\n" + (cluster.log.read_text(errors="replace")[-2000:]
                                             if cluster.log.exists() else "")
            time.sleep(0.2)
        else:
            raise PgUnavailable(f"pg_ctl start failed: {last}")
        cluster.psql(f"CREATE DATABASE {DATABASE}")
        return cluster
    except BaseException:
        if cluster is not None:
            cluster.stop()
        else:
            shutil.rmtree(root, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL for the session (fails, never skips, if it cannot start)."""
    try:
        cluster = start_cluster()
    except PgUnavailable as exc:
        pytest.fail(f"cannot start a throwaway PostgreSQL cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(pg_cluster: PgCluster) -> str:
    """The cluster's ``ronda`` database (shared by the session: prefer :func:`pg_url`)."""
    return pg_cluster.url


_db_numbers = itertools.count(1)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database for one test, dropped after it."""
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)
