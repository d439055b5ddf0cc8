"""Keep ``ssl`` out of daemons that never speak TLS: importing this module is the first line of their ``main``.

``asyncio`` imports ``ssl`` only to offer TLS transports, and loading it costs every daemon 1.5 MB of
private memory (OpenSSL's tables) and ~5 ms of start-up; our sockets are unix sockets and vsock.
``None`` in ``sys.modules`` makes ``import ssl`` raise ImportError, which asyncio (and http.client,
urllib) take as "no TLS". Optional features that do need it (prometheus-client imports ``ssl`` for
its TLS exporter) call :func:`allow` before importing their library.
"""
import sys

__all__ = ["allow"]

if "ssl" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]


def allow() -> None:
    """Let ``ssl`` be imported again (an optional feature's library needs it)."""
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
