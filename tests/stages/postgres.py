"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl on 127.0.0.1 and a free port, no systemd.

As root the server runs as the ``postgres`` user (initdb refuses root); as any other user, as that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs, or None when PostgreSQL is absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, password: str) -> None:
        self.bin = bin_dir()
        assert self.bin is not None
        # its own folder in the temp dir, not under pytest's basetemp: a pytest session started meanwhile
        # resets pytest-of-<user> to 0700, which would lock the postgres user out
        self.root = Path(tempfile.mkdtemp(prefix="distillops-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.password = password
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str, owner: bool = True) -> subprocess.CompletedProcess:
        argv = [*cmd]
        if owner and self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        env = {**os.environ, "PGPASSWORD": self.password}
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stdout}\n{result.stderr}")
        return result

    def start(self) -> None:
        self.data.mkdir(parents=True)
        pwfile = self.root / "pgpass"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            for path in (self.root, self.data, pwfile):
                shutil.chown(path, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "scram-sha-256", "-U", "postgres",
                  f"--pwfile={pwfile}")  # fmt: skip
        pwfile.unlink()
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data}", "start")  # fmt: skip

    def sql(self, statement: str) -> None:
        self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
                  "-v", "ON_ERROR_STOP=1", "-c", statement, owner=False)  # fmt: skip

    def database(self, name: str, user: str, password: str) -> str:
        """A database owned by a new login role; its SQLAlchemy URI."""
        self.sql(f"create role {user} login password '{password}'")
        self.sql(f"create database {name} owner {user}")
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
