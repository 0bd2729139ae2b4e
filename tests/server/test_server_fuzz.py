"""Schemathesis fuzzes every operation of the OpenAPI schema: no input may cause a 5xx.

Bounded: a few examples per operation (the whole module takes seconds), a memory store, a fixed
admin key so that requests get past authentication into the handlers.
"""

from __future__ import annotations

import socket
import threading
import time

import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from chatstate.flows import Step, Wizard
from chatstate.server import Settings, create_app

ADMIN = "fuzz-admin-key-0123456789"

app = create_app(
    Settings(store_url="memory://", admin_keys=(ADMIN,), chat_burst=100_000),
    lifecycle=None,
    flows=[Wizard("order", [Step("product", "Which?"), Step("address", "Where?")])],
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A real uvicorn server in a thread: the lifespan runs once, requests go over loopback HTTP.
PORT = _free_port()
_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=PORT, log_level="warning"))
_thread = threading.Thread(target=_server.run, daemon=True)

# The event streams (text/event-stream) never end by design; everything else is fuzzed.
schema = schemathesis.openapi.from_dict(app.openapi()).exclude(path_regex=r"/events$")


def setup_module() -> None:
    _thread.start()
    for _ in range(200):
        if _server.started:
            return
        time.sleep(0.05)
    raise RuntimeError("the test server did not start")


def teardown_module() -> None:
    _server.should_exit = True
    _thread.join(timeout=10)


@schema.parametrize()
@settings(
    max_examples=3, deadline=None, derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_causes_a_server_error(case: schemathesis.Case) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN}"}
    response = case.call(base_url=f"http://127.0.0.1:{PORT}", timeout=10)
    case.validate_response(response, checks=(not_a_server_error,))

