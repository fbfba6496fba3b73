"""Free loopback ports for the servers and Ray nodes the tests start."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, none handed out before by this process.

    Binding port 0 and closing at once may hand back the same port twice in a row; a CI run once gave
    node_manager and object_manager both 54795 and `ray start` refused to start. Holding every socket open
    until all are chosen makes one node's ports distinct; the set keeps a second node off the ports the
    first was given but may not have bound yet.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in _handed_out:
                ports.append(port)
                _handed_out.add(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def free_port() -> int:
    return free_ports(1)[0]
