"""``python -m videogen_host --connect SOCKET_PATH``: connect to the worker's socket, say hello, serve.

Environment: ``VIDEOGEN_HOST_DEVICE`` (``cpu`` default, or ``cuda``), ``VIDEOGEN_HOST_THREADS`` (torch CPU threads;
default: torch's own choice), ``VIDEOGEN_HOST_MAX_PAYLOAD`` (largest accepted payload in bytes, default 16 GiB),
``VIDEOGEN_HOST_CACHE_DIR`` (weights-hash cache), ``VIDEOGEN_HOST_LOG`` (log level, default ``INFO``). Logs go to
stderr. Exit status: 0 after EOF or ``shutdown``, 1 when the socket cannot be reached or the environment is bad,
2 after a protocol violation by the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import time

from . import HOST_NAME, runtime


def _connect(path: str, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videogen_host", description="videogen model host")
    parser.add_argument("--connect", required=True, metavar="SOCKET_PATH", help="the worker's Unix socket")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to retry connecting (10)")
    parser.add_argument("--version", action="version", version=HOST_NAME)
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("VIDEOGEN_HOST_LOG", "INFO").upper(),
        format=f"%(asctime)s videogen_host[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("videogen_host")
    try:
        runtime.set_environment()
        runtime.thread_count()
        max_payload = int(os.environ.get("VIDEOGEN_HOST_MAX_PAYLOAD", str(16 << 30)))
    except ValueError as e:
        log.error("bad environment: %s", e)
        return 1

    from .protocol import MAX_PAYLOAD_LEN
    from .server import Host

    max_payload = max(0, min(max_payload, MAX_PAYLOAD_LEN))
    try:
        sock = _connect(args.connect, args.connect_timeout)
    except OSError as e:
        log.error("cannot connect to %s: %s", args.connect, e)
        return 1
    rfile = sock.makefile("rb", buffering=1 << 20)
    wfile = sock.makefile("wb", buffering=1 << 20)
    host = Host(rfile, wfile, max_payload=max_payload)
    try:
        host.hello()
        log.info("%s connected to %s (device %s)", HOST_NAME, args.connect, runtime.device_name())
        code = host.serve()
    except (BrokenPipeError, ConnectionResetError) as e:
        log.info("connection lost: %s", e)
        code = 0
    finally:
        for f in (wfile, rfile):
            with contextlib.suppress(OSError):
                f.close()
        sock.close()
    log.info("exiting with status %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
