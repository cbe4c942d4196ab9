"""Working as a team, as the README describes it: a DVC remote on S3 (moto's server stands in for any
S3-compatible endpoint) and a shared MLflow tracking server on PostgreSQL with S3 artifacts and basic
authentication. Skipped, with the reason, where a tool they need is missing."""

import base64
import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import assert_predict_leaves_no_download, commit, run
from mlflow import MlflowClient
from team_services import (
    ADMIN_PASSWORD,
    S3_KEYS,
    bucket_keys,
    make_bucket,
    postgres,
    s3_server,
    tool,
    tracking_server,
)

from benchmarks.workspace import tool_env
from faceage.tracking.registry import MODEL_IN_RUN
from faceage.tracking.runs import RunTracker

pytestmark = pytest.mark.slow
MISSING = [name for name in ("moto_server", "initdb", "postgres", "mlflow") if tool(name) is None]
if MISSING:
    pytest.skip(f"team services need {', '.join(MISSING)} (make test installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    make_bucket(s3, "mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    with postgres(("mlflow", "mlflow_auth")) as database, tracking_server(database, s3, "mlflow", folder) as started:
        yield started


ARTIFACT_KEYS = (("access_key_id", "AWS_ACCESS_KEY_ID"), ("secret_access_key", "AWS_SECRET_ACCESS_KEY"))


def digests(repo: Path, paths: list[str]) -> dict[str, str]:
    """SHA-256 of every file under ``paths``."""
    files = sorted(f for path in paths for f in [repo / path, *(repo / path).rglob("*")] if f.is_file())
    return {str(f.relative_to(repo)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def s3_credentials(repo: Path, endpoint: str) -> None:
    """Each user's part of the README's remote set-up: endpoint and keys in ``.dvc/config.local``."""
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "access_key_id", S3_KEYS["AWS_ACCESS_KEY_ID"]], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "secret_access_key", S3_KEYS["AWS_SECRET_ACCESS_KEY"]], repo)


def test_a_dvc_remote_on_s3_restores_data_and_shares_experiments(prepared, s3, tmp_path):
    make_bucket(s3, "dvc")
    repo = shutil.copytree(prepared, tmp_path / "alice", symlinks=True)
    run(["dvc", "repro"], repo)
    run(["dvc", "remote", "add", "-d", "storage", "s3://dvc/cache"], repo)  # committed, for everyone
    s3_credentials(repo, s3)
    commit(repo, "remote")
    committed = (repo / ".dvc" / "config").read_text()
    assert "s3://dvc/cache" in committed and S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in committed
    assert ".dvc/config.local" not in run(["git", "ls-files", ".dvc"], repo)
    tracked = ["data/demo/UTKFace.tar.gz", "data/ingested", "data/split.csv", "models/model.pt", "data/galleries"]
    before = digests(repo, tracked)

    run(["dvc", "push"], repo)
    assert bucket_keys(s3, "dvc", "cache/")
    shutil.rmtree(repo / ".dvc" / "cache")
    for path in tracked:
        (shutil.rmtree if (repo / path).is_dir() else Path.unlink)(repo / path)
    run(["dvc", "pull"], repo)
    assert digests(repo, tracked) == before

    # Experiments travel through git (a bare repository stands in for the team's) and the DVC remote.
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "--initial-branch", "main", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "HEAD:main"], repo)

    # The model as a registry artifact: a version tagged in GTO's format, fetched by name from the team's repository.
    run(["git", "tag", "-a", "faceage-model@v1.0.0", "-m", "the first version"], repo)
    run(["git", "push", "-q", "origin", "faceage-model@v1.0.0"], repo)
    keys = [f"endpointurl={s3}", *(f"{name}={S3_KEYS[key]}" for name, key in ARTIFACT_KEYS)]
    run(["dvc", "artifacts", "get", str(origin), "faceage-model", "-o", "got.pt", "--remote-config", *keys], tmp_path)
    assert digests(tmp_path, ["got.pt"])["got.pt"] == before["models/model.pt"]

    run(["dvc", "exp", "run", "-n", "fewer-worst", "-S", "evaluate.worst_errors=4"], repo)  # evaluate onwards
    galleries = digests(repo, ["data/galleries"])
    assert galleries != {k: v for k, v in before.items() if k.startswith("data/galleries")}
    run(["dvc", "exp", "push", "origin", "fewer-worst"], repo)

    teammate = tmp_path / "bob"
    run(["git", "clone", "-q", "-b", "main", str(origin), str(teammate)], tmp_path)
    s3_credentials(teammate, s3)
    run(["dvc", "exp", "pull", "origin", "fewer-worst"], teammate)
    assert "fewer-worst" in run(["dvc", "exp", "list", "--all-commits"], teammate)
    run(["dvc", "exp", "apply", "fewer-worst"], teammate)
    assert digests(teammate, ["data/galleries"]) == galleries


def api(server, path: str, payload: dict | None = None, user: tuple[str, str] | None = None) -> int:
    """Status of a request to the tracking server's REST API, as ``user`` (name, password) or anonymous."""
    request = urllib.request.Request(f"{server.uri}/api/2.0/mlflow/{path}", method="POST" if payload else "GET")
    if payload is not None:
        request.data = json.dumps(payload).encode()
        request.add_header("Content-Type", "application/json")
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_shared_tracking_server_refuses_strangers_and_records_three_runs_at_once(prepared, server, tmp_path, caplog):
    alice = ("alice", "alice-password")
    assert api(server, "users/create", {"username": alice[0], "password": alice[1]}, ("admin", ADMIN_PASSWORD)) == 200
    assert api(server, "experiments/search?max_results=1") == 401
    assert api(server, "experiments/search?max_results=1", user=("alice", "wrong")) == 401
    assert api(server, "experiments/search?max_results=1", user=alice) == 200
    stranger = RunTracker("faceage", uri=server.uri)  # no credentials: warned, and the pipeline goes on
    assert not stranger.active and "continuing without it" in caplog.text

    # Users set only the server's address and their credentials; three trainings log at once.
    env = tool_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_TRACKING_USERNAME=alice[0], MLFLOW_TRACKING_PASSWORD=alice[1])
    workspaces = [shutil.copytree(prepared, tmp_path / f"w{i}", symlinks=True) for i in range(3)]
    trainings = [
        subprocess.Popen(["dvc", "repro", "train"], cwd=w, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for w in workspaces
    ]
    outputs = [training.communicate(timeout=600)[0].decode() for training in trainings]
    for training, output in zip(trainings, outputs, strict=True):
        assert training.returncode == 0, output
        assert "not tracked" not in output and "continuing without it" not in output, output

    client = MlflowClient(server.uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", alice[0])
        patch.setenv("MLFLOW_TRACKING_PASSWORD", alice[1])
        runs = client.search_runs([client.get_experiment_by_name("faceage").experiment_id])
        assert sorted(r.info.run_id for r in runs) == sorted(
            json.loads((w / "reports" / "train.json").read_text())["mlflow_run_id"] for w in workspaces
        )
        for logged in runs:
            assert logged.info.status == "FINISHED" and logged.info.user_id == alice[0]
            assert {a.path for a in client.list_artifacts(logged.info.run_id)} >= {"plots", "reports"}
    stored = bucket_keys(server.s3_endpoint, server.bucket, "mlartifacts/")
    for logged in runs:
        assert any(key.endswith(f"{logged.info.run_id}/artifacts/reports/train.json") for key in stored)
    assert sum(key.endswith("/MLmodel") for key in stored) == 3  # one servable model per run

    # A model on the server is downloaded to predict with, and the download goes when the command ends.
    assert_predict_leaves_no_download(f"runs:/{runs[0].info.run_id}/{MODEL_IN_RUN}", env, tmp_path)
