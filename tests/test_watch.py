"""Watching a sweep through the dashboard: the CLI's message says where it is and how to get the
token; following it, the dashboard's actor and job lists can be read over 127.0.0.1.

A real local Ray, started the way the CLI starts it (``session.init_ray``, the module's
``ray_session``); the token comes from running the command the message names, as a user would.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import urllib.error
import urllib.request

import pytest

from raybench.driver import session


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 directly, never a proxy
    try:
        with opener.open(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def message(ray_session) -> str:
    return "\n".join(session.dashboard_lines(None))


def test_the_dashboard_is_read_with_the_token_the_message_says_how_to_get(message):
    url = re.search(r"^dashboard: (http://127\.0\.0\.1:\d+)", message, re.M)
    command = re.search(r"it asks for a token: run `([^`]+)`", message)
    assert url and command, message
    token = subprocess.run(shlex.split(command[1]), capture_output=True, text=True, check=True).stdout.strip()
    assert token

    status, _ = _get(f"{url[1]}/api/v0/actors", None)
    assert status == 401  # the token is what lets the reader in
    status, body = _get(f"{url[1]}/api/v0/actors", "not-the-token")
    assert status == 403

    status, body = _get(f"{url[1]}/api/v0/actors?limit=100", token)
    assert status == 200, body[:500]
    listing = json.loads(body)
    assert listing["result"] is True and isinstance(listing["data"]["result"]["result"], list)
    status, body = _get(f"{url[1]}/api/jobs/", token)
    assert status == 200, body[:500]
    assert isinstance(json.loads(body), list)


def test_the_dashboard_listens_on_loopback_only(message):
    """The address printed is the only one it listens on: no other interface reaches it without the token."""
    import psutil

    port = int(re.search(r"^dashboard: http://127\.0\.0\.1:(\d+) \(on this machine", message, re.M)[1])
    listening = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}
