"""Bind a socket, say where, and run uvicorn until Ctrl-C."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from mnistcnn.checkpoint import load_model
from mnistcnn.errors import MnistCnnError
from mnistcnn.serve.app import create_app

log = logging.getLogger(__name__)


def _cannot_listen(host: str, port: int, exc: Exception) -> MnistCnnError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return MnistCnnError(f"cannot listen on {host}:{port}: {reason}")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one); MnistCnnError if it cannot be had."""
    if not 0 <= port <= 65535:  # getaddrinfo would silently wrap it modulo 65536
        raise MnistCnnError(f"port must be 0-65535 (0: any free port), not {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as exc:
        raise _cannot_listen(host, port, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except (OSError, OverflowError) as exc:
        sock.close()
        raise _cannot_listen(host, port, exc) from None
    return sock


def url(sock: socket.socket) -> str:
    """http://host:port/ of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(sock: socket.socket) -> bool:
    """Whether the socket only accepts connections from this machine."""
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def server(app: FastAPI) -> uvicorn.Server:
    """A quiet uvicorn server for `app` (start it with `.run(sockets=[sock])`)."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def serve(model_path: str | Path, host: str, port: int) -> None:
    """Load the model, bind, say where, and serve until Ctrl-C."""
    model = load_model(model_path)
    sock = bind(host, port)
    app = create_app(model, str(model_path))
    where = f"mnistcnn: serving {model_path} at {url(sock)}"
    if is_loopback(sock):
        log.info("%s (loopback only: this machine)", where)
    else:
        log.info("%s -- NOT loopback: reachable from other machines, with no authentication", where)
    log.info("mnistcnn: API: POST /api/predict, GET /api/model, /openapi.json; Ctrl-C to stop")
    server(app).run(sockets=[sock])
