"""A threading HTTP server that does not print a traceback when a client dies mid-request.

The drill and the process tests SIGKILL the clients of the local servers (the LIS
simulator, the S3 fault proxy) on purpose; a reset connection is then expected, not an error.
"""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class QuietThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)
