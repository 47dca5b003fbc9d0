"""Free loopback ports for the servers tests start."""

from __future__ import annotations

import socket

PORT_LIMIT = 65536  # one past the highest TCP port


def free_port(below: int = PORT_LIMIT) -> int:
    """A loopback port free right now and under ``below``; raises RuntimeError if none is.

    Free only at the moment of the probe: another process may take it before the caller
    binds, so callers that can retry on a new port should (see ``redis_servers``).
    ``below`` serves a Redis cluster node, whose bus listens on port + 10000.
    """
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < below:
            return port
    raise RuntimeError(f"no free port below {below}")
