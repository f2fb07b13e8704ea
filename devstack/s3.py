"""moto's S3 server as a separate process: a real HTTP S3 endpoint on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from devstack.ports import free_port, wait_for_port


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(self.port, 30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start_s3() -> S3Server:
    server = S3Server(port=free_port())
    server.start()
    return server
