"""The evo image (Containerfile) run for real with podman, and its health check.

The tests marked `container` need root, podman and the image already built
(`scripts/container_check.sh build`, minutes the first time, then seconds from its layer
cache): pytest's addopts deselects them (`-m "not container"`), and they run with
`pytest -m container`, which `scripts/container_check.sh serve` and `.ci/run` (where podman
and a built image are) do. Deselected, they are not reported as passed; selected without
podman or an image, they fail rather than skip, so that a run which asked for them never
turns green without them. The health check's own tests are not marked: they need no podman.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEALTHCHECK = ROOT / "scripts" / "healthcheck.py"
IMAGE = os.environ.get("EVO_IMAGE", "localhost/evo:latest")
# The project's podman settings and image store, as scripts/container_check.sh uses them
# (it sets the store: overlay's, or vfs's where overlay cannot mount).
PODMAN_ENV = {
    **os.environ,
    "CONTAINERS_CONF": str(ROOT / "scripts" / "podman" / "containers.conf"),
    "CONTAINERS_STORAGE_CONF": os.environ.get(
        "CONTAINERS_STORAGE_CONF", str(ROOT / "scripts" / "podman" / "storage.conf")
    ),
}
CONTAINER_UID = 1000  # the image's user `evo`
STARTUP_S = 120


# The health check (scripts/healthcheck.py), against a local server.


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            status = 200
        elif self.path == "/api/runs":  # like the dashboard with the token "secret"
            status = 200 if self.headers.get("Authorization") == "Bearer secret" else 401
        else:
            status = 404
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def healthcheck(url: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EVO_DASHBOARD_TOKEN"}
    if token is not None:
        env["EVO_DASHBOARD_TOKEN"] = token
    command = [sys.executable, str(HEALTHCHECK), url]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_passes_on_a_2xx_answer(local_server: str) -> None:
    assert healthcheck(f"{local_server}/health").returncode == 0


def test_healthcheck_fails_on_an_error_status_naming_the_url(local_server: str) -> None:
    result = healthcheck(f"{local_server}/missing")
    assert result.returncode == 1
    assert f"{local_server}/missing" in result.stderr and "404" in result.stderr


def test_healthcheck_sends_the_dashboard_token(local_server: str) -> None:
    assert healthcheck(f"{local_server}/api/runs").returncode == 1
    assert healthcheck(f"{local_server}/api/runs", token="wrong").returncode == 1
    assert healthcheck(f"{local_server}/api/runs", token="secret").returncode == 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed
    result = healthcheck(f"http://127.0.0.1:{port}/health")
    assert result.returncode == 1 and "unhealthy" in result.stderr


# The image, run with podman.


def podman(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        ["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def image() -> str:
    if subprocess.run(["podman", "--version"], capture_output=True).returncode != 0:
        pytest.fail("no podman: the container tests need it (apt-get install podman runc)")
    found = subprocess.run(["podman", "image", "exists", IMAGE], env=PODMAN_ENV)
    if found.returncode != 0:
        pytest.fail(f"no image {IMAGE}: build it with scripts/container_check.sh build")
    return IMAGE


@pytest.fixture(scope="module")
def model_dir(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nano model trained inside the image, by its user, into a mounted folder."""
    models = tmp_path_factory.mktemp("models")
    os.chown(models, CONTAINER_UID, CONTAINER_UID)
    podman(
        "run", "--rm", "--network=none", "-v", f"{models}:/models", image,
        "llm", "train", "--preset", "nano", "--set", "train.max_steps=20",
        "--set", "train.eval_interval=0", "--out", "/models/model",
    )  # fmt: skip
    return models / "model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(image: str, model_dir: Path) -> Iterator[tuple[str, str]]:
    """The image's default command (`llm serve /models/model`), published on loopback."""
    name, port = f"evo-test-serve-{os.getpid()}", free_port()
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{model_dir.parent}:/models:ro", image,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no /health within {STARTUP_S} s:\n{podman('logs', name)}")
            time.sleep(1)
        yield name, url
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], env=PODMAN_ENV, timeout=60)


@pytest.mark.container
def test_the_image_serves_health_and_passes_its_own_health_check(server: tuple[str, str]) -> None:
    name, url = server
    health = httpx.get(f"{url}/health", timeout=5).json()
    print(f"\nGET /health: {json.dumps(health)}")
    assert health["status"] == "ok"
    # Fails if the image lost its HEALTHCHECK (an OCI-format build drops it) or it fails.
    result = subprocess.run(
        ["podman", "healthcheck", "run", name], env=PODMAN_ENV, capture_output=True, text=True
    )
    print(f"podman healthcheck run: exit {result.returncode} {result.stdout.strip()}")
    assert result.returncode == 0, result.stderr


@pytest.mark.container
def test_the_image_trains_and_serves_as_a_user_other_than_root(
    server: tuple[str, str], model_dir: Path
) -> None:
    name, _ = server
    assert podman("exec", name, "id", "-u").strip() == str(CONTAINER_UID)
    assert (model_dir / "model.safetensors").stat().st_uid == CONTAINER_UID


@pytest.mark.container
def test_a_chat_completion_through_the_openai_sdk(server: tuple[str, str]) -> None:
    from openai import OpenAI

    _, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [model.id for model in client.models.list()] == ["model"]
    reply = client.chat.completions.create(
        model="model",
        messages=[{"role": "user", "content": "What does the with statement do?"}],
        max_tokens=12,
        temperature=0,
    )
    choice = reply.choices[0]
    print(f"chat completion: {choice.message.content!r} ({choice.finish_reason}, {reply.usage})")
    assert choice.message.role == "assistant" and choice.finish_reason in {"stop", "length"}
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 12
