"""The services a team shares, started on free loopback ports for the team tests and stopped by their
PID: an S3 endpoint (moto's server), PostgreSQL in a throw-away data folder, and an MLflow tracking server
on PostgreSQL with S3 artifacts and basic authentication."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

S3_KEYS = {"AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": "team-secret", "AWS_DEFAULT_REGION": "us-east-1"}
ADMIN_PASSWORD = "admin-password-for-tests"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready: Callable[[], bool], what: str, started: subprocess.Popen, seconds: float = 180) -> None:
    """Wait for ``ready``; fail at once if the process ``started`` ends."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if started.poll() is not None:
            raise RuntimeError(f"{what} exited with code {started.returncode}")
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not start within {seconds} s")


def answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


def tool(name: str) -> str | None:
    """A command from this environment's bin folder, the PATH, or Debian's PostgreSQL folder."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    debian = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return shutil.which(name) or (str(debian[-1]) if debian else None)


@contextmanager
def process(
    command: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group while the block runs; stop the group by its PID after."""
    output = log.open("w") if log else subprocess.DEVNULL
    started = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield started
    finally:
        os.killpg(started.pid, signal.SIGTERM)
        try:
            started.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)
            started.wait()
        if log:
            output.close()


@contextmanager
def s3_server(log_dir: Path) -> Iterator[str]:
    """moto's S3 server; yields its endpoint URL."""
    port = free_port()
    with process([tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], log=log_dir / "moto.log") as started:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(answers(f"{endpoint}/moto-api/"), "moto_server", started)
        yield endpoint


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **_boto_keys()).create_bucket(Bucket=name)


def bucket_keys(endpoint: str, name: str, prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3", endpoint_url=endpoint, **_boto_keys()).get_paginator("list_objects_v2")
    return [item["Key"] for page in pages.paginate(Bucket=name, Prefix=prefix) for item in page.get("Contents", [])]


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_KEYS["AWS_DEFAULT_REGION"],
    }


def _as_postgres_user(command: list[str]) -> list[str]:
    """``initdb`` and ``postgres`` refuse root: run them as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres(databases: tuple[str, ...]) -> Iterator[str]:
    """A PostgreSQL server in a temporary data folder, trusting loopback connections; yields the
    ``host:port`` where ``databases`` exist."""
    folder = Path(tempfile.mkdtemp(prefix="faceage-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    try:
        initdb = _as_postgres_user([tool("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"])
        subprocess.run(initdb, check=True, capture_output=True)
        server = [tool("postgres"), "-D", str(data), "-p", str(port), "-k", str(folder), "-h", "127.0.0.1"]
        with process(_as_postgres_user(server), log=folder / "postgres.log") as started:
            wait_until(lambda: _connects(port), "PostgreSQL", started)
            for name in databases:
                _execute(port, f"CREATE DATABASE {name}")
            yield f"127.0.0.1:{port}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _connects(port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
        return True
    except psycopg2.OperationalError:
        return False


def _execute(port: int, statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@dataclass(frozen=True)
class TrackingServer:
    uri: str
    bucket: str
    s3_endpoint: str


AUTH_CONFIG = """[mlflow]
default_permission = EDIT
database_uri = {database_uri}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@contextmanager
def tracking_server(database: str, s3_endpoint: str, bucket: str, folder: Path) -> Iterator[TrackingServer]:
    """``mlflow server --app-name basic-auth`` on PostgreSQL at ``database`` (databases ``mlflow`` and
    ``mlflow_auth``), artifacts proxied to ``s3://bucket/mlartifacts``; the admin password comes from the
    environment, the auth settings from a file outside the repository."""
    config = folder / "basic_auth.ini"
    config.write_text(AUTH_CONFIG.format(database_uri=f"postgresql+psycopg2://postgres@{database}/mlflow_auth"))
    env = {
        **os.environ,
        **S3_KEYS,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),  # CSRF protection of the auth app
    }
    port = free_port()
    command = [tool("mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"postgresql+psycopg2://postgres@{database}/mlflow"]
    command += ["--artifacts-destination", f"s3://{bucket}/mlartifacts", "--workers", "2"]
    with process(command, env=env, log=folder / "mlflow-server.log") as started:
        uri = f"http://127.0.0.1:{port}"
        wait_until(answers(f"{uri}/health"), f"mlflow server (log: {folder / 'mlflow-server.log'})", started)
        yield TrackingServer(uri, bucket, s3_endpoint)
