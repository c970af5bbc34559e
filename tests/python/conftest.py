"""Fixtures for the SDK end-to-end tests: a real `mock-upstream` and a real `poolgate serve`,
started once per session on free loopback ports, wired together through the admin API.

The binaries are the debug builds `tests/python/run.sh` makes (`cargo build -p poolgate -p
mock-upstream`), under `$CARGO_TARGET_DIR/debug` or `target/debug`.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")).resolve() / "debug"

#: Content chunks per mock stream; the mock's non-streamed content is the same words joined.
MOCK_CHUNKS = 4
#: What the mock answers to every chat or legacy completion: `chunk0 chunk1 ... chunk{N-1}`.
MOCK_CONTENT = " ".join(f"chunk{i}" for i in range(MOCK_CHUNKS))
#: The mock's token counts: a fixed 10 prompt tokens, one completion token per word.
MOCK_USAGE = (10, MOCK_CHUNKS, 10 + MOCK_CHUNKS)

#: The canonical model clients ask for, and the upstream id poolgate maps it to.
MODEL = "gpt-4o-mini"
UPSTREAM_MODEL = "mock-model"
UPSTREAM_KEY = "sk-mock-upstream-key"

STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "run_last: run after every other test (it checks what they left behind)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Stable: everything else keeps its file order, `run_last` tests go to the end.
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)


# === processes ===


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        pytest.exit(
            f"{path} is missing: build it with `cargo build -p poolgate -p mock-upstream` "
            "(tests/python/run.sh does)",
            returncode=2,
        )
    return path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclasses.dataclass
class Process:
    proc: subprocess.Popen
    port: int
    log: Path


def start_with_free_port(
    argv_for_port, env: dict[str, str], log: Path, ready, attempts: int = 3
) -> Process:
    """Starts `argv_for_port(port)` on a free port and waits until `ready(port)`; retries on a
    new port if the process dies early (another process took the port in between)."""
    for _ in range(attempts):
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv_for_port(port), env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if ready(port):
                return Process(proc, port, log)
            time.sleep(0.05)
        if proc.poll() is None:
            stop(proc)
            raise RuntimeError(f"{argv_for_port(port)[0]} did not become ready:\n{log_tail(log)}")
    raise RuntimeError(f"{argv_for_port(0)[0]} kept exiting at start:\n{log_tail(log)}")


def start_mock_upstream(log: Path, *args: str) -> Process:
    """Starts `mock-upstream --listen 127.0.0.1:0 ARGS` and reads the port it bound from its
    first line (`listening on 127.0.0.1:PORT`): no port is picked in advance."""
    env = {**os.environ, "RUST_LOG": "warn"}
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [str(binary("mock-upstream")), "--listen", "127.0.0.1:0", *args],
            env=env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        stop(proc)
        raise RuntimeError(f"mock-upstream did not start: {line!r}\n{log_tail(log)}")
    port = int(line.rsplit(":", 1)[1])
    return Process(proc, port, log)


def mock_ok(port: int) -> bool:
    # The mock's own model list: proves the port is served by *this* mock, not a squatter.
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=0.5)
        return response.status_code == 200 and UPSTREAM_MODEL in response.text
    except httpx.HTTPError:
        return False


def healthz_ok(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


# === the gateway under test ===


@dataclasses.dataclass
class Expected:
    """What one proxied SDK request should leave in `/admin/api/usage`."""

    request_id: str
    endpoint: str
    status: int
    outcome: str
    client_key_id: str
    streamed: bool = False
    #: (prompt, completion, total), or None when no tokens should be recorded.
    tokens: Optional[tuple[int, int, int]] = None
    upstream_model: Optional[str] = UPSTREAM_MODEL
    canonical_model: str = MODEL


@dataclasses.dataclass
class Gateway:
    base_url: str  # the OpenAI base URL, `http://127.0.0.1:Q/v1`
    root_url: str  # `http://127.0.0.1:Q`
    admin_token: str
    client_key: str
    client_key_id: str
    upstream_port: int
    log: Path
    #: Every proxied request the tests made, in order; checked against the usage records last.
    ledger: list[Expected] = dataclasses.field(default_factory=list)
    #: Client keys whose requests are checked by their own test, not through the ledger.
    unledgered_key_ids: set[str] = dataclasses.field(default_factory=set)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.root_url}/admin/api{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
            **kwargs,
        )

    def create_key(self, **body: Any) -> dict[str, Any]:
        response = self.admin("POST", "/keys", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def expect(self, request_id: Optional[str], **fields: Any) -> None:
        assert request_id and request_id.startswith("req_"), f"bad x-request-id {request_id!r}"
        fields.setdefault("client_key_id", self.client_key_id)
        self.ledger.append(Expected(request_id=request_id, **fields))


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("poolgate-e2e")
    env = {**os.environ, "RUST_LOG": "warn"}

    upstream = start_with_free_port(
        lambda port: [
            str(binary("mock-upstream")),
            "--listen", f"127.0.0.1:{port}",
            "--stream-chunks", str(MOCK_CHUNKS),
        ],
        env,
        workdir / "mock-upstream.log",
        mock_ok,
    )
    admin_token = secrets.token_hex(20)  # 40 characters
    try:
        gateway_proc = start_with_free_port(
            lambda port: [
                str(binary("poolgate")), "serve",
                "--listen", f"127.0.0.1:{port}",
                "--data-dir", str(workdir / "data"),
            ],
            {**env, "POOLGATE_ADMIN_TOKEN": admin_token},
            workdir / "poolgate.log",
            healthz_ok,
        )
    except BaseException:
        stop(upstream.proc)
        raise

    root = f"http://127.0.0.1:{gateway_proc.port}"
    try:
        gw = Gateway(
            base_url=f"{root}/v1",
            root_url=root,
            admin_token=admin_token,
            client_key="",
            client_key_id="",
            upstream_port=upstream.port,
            log=gateway_proc.log,
        )
        backend = gw.admin("POST", "/backends", json={
            "name": "mock",
            "api_base_url": f"http://127.0.0.1:{upstream.port}/v1",
            "api_key": UPSTREAM_KEY,
            "model_mappings": {MODEL: {"upstream_model": UPSTREAM_MODEL}},
        })
        assert backend.status_code == 201, backend.text
        key = gw.create_key(name="sdk")
        gw.client_key, gw.client_key_id = key["key"], key["id"]
        yield gw
    finally:
        stop(gateway_proc.proc)
        stop(upstream.proc)
    code = gateway_proc.proc.returncode
    assert code == 0, f"poolgate exited with {code} on SIGTERM:\n{log_tail(gateway_proc.log)}"
