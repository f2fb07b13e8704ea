"""A throwaway PostgreSQL server from the operating system's packages.

initdb refuses to run as root, so when the caller is root the server runs as the
``postgres`` user that Debian's package creates. The cluster lives in a temporary
directory, listens on 127.0.0.1 with trust authentication, and is removed on stop.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devstack.ports import free_port, wait_for_port


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if candidates:
        return Path(candidates[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")


def _as_service_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    database: str = "labconnect"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> None:
        bindir = _bin_dir()
        if os.geteuid() == 0:
            shutil.chown(self.data_dir.parent, "postgres", "postgres")
        subprocess.run(
            _as_service_user([str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                              "-A", "trust", "-E", "UTF8", "--no-sync"]),
            check=True, stdout=subprocess.DEVNULL,
        )
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} "
                   "-c fsync=off -c max_connections=200")
        subprocess.run(
            _as_service_user([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
                              "-l", str(self.data_dir / "server.log"), "-w", "start"]),
            check=True, stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 30)
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database],
            check=True,
        )

    def pg_ctl(self, action: str) -> None:
        """Run pg_ctl stop/start on this cluster (tests use it to simulate an outage)."""
        bindir = _bin_dir()
        args = [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-m", "fast", action]
        if action in ("start", "restart"):
            args[1:1] = ["-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=off"
                         " -c max_connections=200", "-l", str(self.data_dir / "server.log")]
        subprocess.run(_as_service_user(args), check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        try:
            self.pg_ctl("stop")
        finally:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    server = PostgresServer(port=free_port(), data_dir=root / "data")
    server.start()
    return server
