"""Fresh kernel randomness for a VM restored from a template.

Every VM started from one template resumes with the template's random state (the CRNG key and the
input pool): without a reseed they would all return the same ``getrandom()`` bytes. :func:`reseed` mixes
bytes of the host's RNG (``/dev/hwrng``, the virtio-rng device fed from the host's ``/dev/urandom``)
into the input pool, credited, and forces the CRNG to reseed from it (``RNDRESEEDCRNG``); the reseed
also draws RDRAND (under TCG the host's ``getrandom``) and the cycle counter, which differ per VM.
The boot id is made at its first read, so a template that never read it gives each VM its own.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct

__all__ = ["RNDADDENTROPY", "RNDRESEEDCRNG", "reseed"]

log = logging.getLogger(__name__)

#: _IOW('R', 0x03, int[2]): add bytes (struct rand_pool_info) and credit their entropy
RNDADDENTROPY = 0x40085203
#: _IO('R', 0x07): reseed the CRNG from the input pool now
RNDRESEEDCRNG = 0x5207
_SEED_BYTES = 64


def _host_bytes(hwrng: str) -> bytes:
    """``_SEED_BYTES`` from the host's RNG, or b"" when the VM has none."""
    try:
        fd = os.open(hwrng, os.O_RDONLY)
    except OSError as err:
        log.debug("no host RNG at %s: %s", hwrng, err)
        return b""
    try:
        data = b""
        while len(data) < _SEED_BYTES:
            chunk = os.read(fd, _SEED_BYTES - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(fd)


def reseed(hwrng: str = "/dev/hwrng", random_dev: str = "/dev/urandom") -> int:
    """Mix the host's bytes in and reseed the CRNG; return how many host bytes were added.

    :raise OSError: the kernel refused the ioctls (not root, or no random device).
    """
    data = _host_bytes(hwrng)
    fd = os.open(random_dev, os.O_WRONLY)
    try:
        if data:
            fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(data) * 8, len(data)) + data)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    return len(data)
