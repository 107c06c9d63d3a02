"""A throw-away PostgreSQL server on 127.0.0.1 for integration tests.

The cluster lives in a temporary directory, trusts local connections, and is stopped and
deleted when the block ends, whatever happens inside it. PostgreSQL refuses to run as root,
so as root the server runs as the `postgres` OS user that the Debian package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.processes import free_port, wait_until

INSTALL_COMMAND = "apt-get update && apt-get install -y postgresql"
BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_SETTINGS = "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"


class PostgresNotInstalled(RuntimeError):
    """The PostgreSQL server binaries are missing; the message is the command installing them."""


def postgres_bin() -> Path:
    """The newest `/usr/lib/postgresql/<version>/bin` holding initdb and pg_ctl."""
    found = [
        path
        for path in Path("/").glob(BIN_GLOB.lstrip("/"))
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file()
    ]
    if not found:
        raise PostgresNotInstalled(INSTALL_COMMAND)
    return max(found, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)


def _as_server_user(command: Sequence[str]) -> list[str]:
    """`command` as run by the postgres user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return list(command)
    return ["su", "postgres", "-c", shlex.join(command)]


def _run(command: Sequence[str], cwd: Path, timeout: float = 60) -> None:
    result = subprocess.run(
        _as_server_user(command), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _make_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="pg-test-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(workdir, user.pw_uid, user.pw_gid)
    return workdir


def _stop(bin_dir: Path, data: Path, workdir: Path) -> None:
    """Stop the server started in `data`: pg_ctl first, its postmaster pid as the last resort."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w"],
            workdir,
            timeout=20,
        )
        return
    with contextlib.suppress(ValueError, IndexError, OSError):
        os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


@contextlib.contextmanager
def running_postgres(timeout: float = 30) -> Iterator[str]:
    """Run a fresh PostgreSQL cluster until the block ends; yields its SQLAlchemy URL."""
    bin_dir = postgres_bin()
    port = free_port()
    workdir = _make_workdir()
    data, log = workdir / "data", workdir / "log"
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            workdir,
            timeout,
        )
        options = f"-p {port} -k {workdir} -h 127.0.0.1 {SERVER_SETTINGS}"
        try:
            _run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(log),
                    "start",
                    "-w",
                    "-t",
                    str(int(timeout)),
                ],
                workdir,
                timeout + 5,
            )
        except RuntimeError as error:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{error}\nserver log {log}:\n{tail}") from None
        wait_until(lambda: _accepts(port), timeout, f"PostgreSQL on 127.0.0.1:{port}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _stop(bin_dir, data, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
