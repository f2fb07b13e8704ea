"""A throwaway PostgreSQL server from the operating system's packages.

initdb refuses to run as root, so when the caller is root the server runs as the
``postgres`` user that Debian's package creates. The cluster lives in a temporary
directory, listens on 127.0.0.1 with trust authentication, and is removed on stop.
With ``tls`` (a server certificate from :mod:`devstack.tls`) it accepts TLS connections
only (``hostssl``): a client that does not ask for TLS is refused.
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
from devstack.tls import Certificate


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
    tls: Certificate | None = None

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
        if self.tls is not None:
            self._require_tls()
        subprocess.run(
            _as_service_user([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-o", self._options(),
                              "-l", str(self.data_dir / "server.log"), "-w", "start"]),
            check=True, stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 30)
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database],
            check=True, env={**os.environ, "PGSSLMODE": "require" if self.tls else "prefer"},
        )

    def _options(self) -> str:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} "
                   "-c fsync=off -c max_connections=200")
        if self.tls is not None:
            options += f" -c ssl=on -c ssl_cert_file={self.data_dir}/server.crt -c ssl_key_file={self.data_dir}/server.key"
        return options

    def _require_tls(self) -> None:
        """The server's certificate and key in its data directory (the key readable by the server's
        user alone, as PostgreSQL insists), and TCP clients accepted over TLS only."""
        assert self.tls is not None
        for source, name in ((self.tls.cert, "server.crt"), (self.tls.key, "server.key")):
            target = self.data_dir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(target, "postgres", "postgres")
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n")

    def pg_ctl(self, action: str) -> None:
        """Run pg_ctl stop/start on this cluster (tests use it to simulate an outage)."""
        bindir = _bin_dir()
        args = [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-m", "fast", action]
        if action in ("start", "restart"):
            args[1:1] = ["-o", self._options(), "-l", str(self.data_dir / "server.log")]
        subprocess.run(_as_service_user(args), check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        try:
            self.pg_ctl("stop")
        finally:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres(tls: Certificate | None = None) -> PostgresServer:
    """A fresh server on a free port; ``tls``: accepting TLS connections only, with this certificate."""
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    server = PostgresServer(port=free_port(), data_dir=root / "data", tls=tls)
    server.start()
    return server
