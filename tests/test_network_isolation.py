"""Every test runs cut off from all but loopback (tests/support/netguard.py): a wrong URL in
code under test can never send traffic anywhere else."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import NETWORK

OUTSIDE = [("10.255.255.1", 9), ("169.254.169.254", 80), ("8.8.8.8", 53)]


@pytest.mark.parametrize("address", OUTSIDE)
def test_this_process_reaches_no_other_address(address):
    """Refused at once (no route, or the guard), not a time-out that a reachable host would
    not give."""
    with pytest.raises(OSError) as e, socket.create_connection(address, timeout=5):
        pass
    assert isinstance(e.value, PermissionError) or e.value.errno == errno.ENETUNREACH, e.value


def test_loopback_still_works():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname(), timeout=2):
            pass


@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace needs root; the in-process guard is used")
def test_children_are_cut_off_too():
    """As root (CI) the namespace covers every child: ffmpeg, Ray workers, chromium."""
    assert NETWORK.startswith("network: own namespace")
    code = (f"import socket\nfor a in {OUTSIDE!r}:\n    try:\n        socket.create_connection(a, timeout=5)\n"
            "        print('reached', a)\n    except OSError as e:\n        print(e.errno)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.split() == [str(errno.ENETUNREACH)] * len(OUTSIDE), r.stdout + r.stderr
    links = subprocess.run(["cat", "/proc/net/dev"], capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[0].strip() for line in links.splitlines()[2:]] == ["lo"]
