"""Loaded by a test server (this folder first on PYTHONPATH): records every name lookup and
outgoing connection to the file named by ASR_TEST_NET_LOG, and refuses any that is not to this
machine, so a test can show that a request made no lookup or connection and no traffic leaves.

Covers the socket module and the asyncio / uvloop event loops (uvloop resolves names in C, so
its loop methods are wrapped as well as the socket functions).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

_LOG = os.environ.get("ASR_TEST_NET_LOG")
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}
_lock = threading.Lock()


def _host_of(address: object) -> object:
    if isinstance(address, tuple) and address:
        return address[0]
    return address


def _record(kind: str, host: object) -> None:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    with _lock, open(_LOG, "a", encoding="utf-8") as fh:  # type: ignore[arg-type]
        fh.write(json.dumps({"t": time.time(), "call": kind, "host": str(host)}) + "\n")
    if host not in _LOCAL and not (isinstance(host, str) and host.startswith("/")):
        raise OSError(f"network access to {host!r} blocked by the test")


def _wrap_sync(owner: object, name: str, host_arg: int = 0) -> None:
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        host = args[host_arg] if len(args) > host_arg else kwargs.get("host")
        _record(f"{getattr(owner, '__name__', owner)}.{name}", _host_of(host))
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def _wrap_async(owner: type, name: str, host_arg: int) -> None:
    real = getattr(owner, name)

    async def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        host = args[host_arg] if len(args) > host_arg else kwargs.get("host")
        if name == "sock_connect":
            host = _host_of(args[1] if len(args) > 1 else kwargs.get("address"))
        _record(f"{owner.__name__}.{name}", host)
        return await real(self, *args, **kwargs)

    setattr(owner, name, wrapper)


if _LOG:
    for fn in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        _wrap_sync(socket, fn)
    for method in ("connect", "connect_ex"):
        _wrap_sync(socket.socket, method, host_arg=1)
    import asyncio.base_events

    loops: list[type] = [asyncio.base_events.BaseEventLoop]
    try:
        import uvloop

        loops.append(uvloop.Loop)
    except ImportError:
        pass
    for loop_class in loops:
        _wrap_async(loop_class, "getaddrinfo", 0)
        _wrap_async(loop_class, "create_connection", 1)
        _wrap_async(loop_class, "sock_connect", 0)
