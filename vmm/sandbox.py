"""``vmm daemon --sandbox``: give up the network before parsing hostile input.

The daemon parses everything a guest writes and needs no network, so once its socket is
bound it moves itself into a fresh network namespace in which only loopback exists (and is
up).  Filesystem-path Unix sockets are not tied to a network namespace, so the listener
keeps working.  pyroute2 is imported here only, lazily: it costs start-up time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNET = 0x40000000


class SandboxError(Exception):
    """The sandbox could not be entered (missing privilege, no namespaces)."""


def enter_network_sandbox() -> list[str]:
    """Unshare the network namespace and bring loopback up; returns the interfaces seen."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
