"""Rejected messages in a row, per peer address: one sender's garbage stays its own problem.

A peer (the sender's IP address, whatever its port) whose rejected messages (AR) in a
row exceed the limit is disconnected after each further one, and those are no longer
dead-lettered, until it sends an ORU^R01 that can be read (answered AA or AE). So one
sender cannot fill the dead-letter queue or trip its limit (which is there for a bad
deploy of our own mapping), and the listener goes on serving everyone else.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_MAX_PEERS = 10_000  # addresses tracked at once; beyond, the oldest are forgotten


class PeerRejects:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def rejected(self, peer: str) -> bool:
        """Count one rejected message of ``peer``; True when the peer is now over the limit."""
        count = self._counts.pop(peer, 0) + 1
        self._counts[peer] = count  # re-inserted: the dict's order is the least recently rejected first
        if len(self._counts) > _MAX_PEERS:
            del self._counts[next(iter(self._counts))]
        if count == self.limit + 1:
            log.warning("MLLP peer %s: %d rejected messages in a row (limit %d): disconnected after each further "
                        "one, which is no longer dead-lettered, until it sends a readable ORU^R01",
                        peer, count, self.limit)
        return count > self.limit

    def accepted(self, peer: str) -> None:
        self._counts.pop(peer, None)

    def count(self, peer: str) -> int:
        return self._counts.get(peer, 0)
