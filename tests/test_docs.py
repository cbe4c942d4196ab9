"""Every shell command that the README and the manual (docs/) show works as written. The short ones run here, in
a tiny copy of the repository after its `dvc repro`, one bash session per page, in the page's order; each long
one names the test that runs it (or what runs it instead)."""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request

import pytest
from conftest import REPO, SHARED, TINY, commit, run

from benchmarks.workspace import copy_worktree

pytestmark = pytest.mark.slow

PAGES = ["README.md", *sorted(path.relative_to(REPO).as_posix() for path in (REPO / "docs").glob("*.md"))]
# Commands too long, or needing what a test machine has not (several machines, GPUs, a team's servers, the
# UTKFace archive), and the test that runs them or the same code on small data.
COVERED = {
    r"make test\b": ".ci/run (CI runs exactly this)",
    r"\.venv/bin/python -m pytest\b": ".ci/run (make test runs every test, the fast lane among them)",
    r"python -m benchmarks\.precision": (
        "tests/test_benchmark.py::test_the_precision_benchmark_times_both_precisions_of_every_network_and_names_the_cpu_class"
    ),
    r"dvc exp run -S data\.source=\$\(realpath \.\./shared/datasets/UTKFace": "benchmarks/run.py (make benchmark)",
    r"make benchmark\b": "tests/test_benchmark.py::test_one_run_measures_the_pipeline_the_baseline_loop_and_the_peer",
    r"python -m benchmarks\.levers": "benchmarks/levers.py (full trainings on UTKFace; reports/levers.json)",
    r"python -m benchmarks\.scaling": "benchmarks/scaling.py (8 minutes; its figures are in reports/scaling.json)",
    r"make sweep\b": "tests/test_pipeline.py::test_two_queued_experiments_started_at_once_on_no_store_both_land",
    r"dvc exp run -S train\.nproc=2\b": "tests/test_pipeline.py::test_an_experiment_in_two_processes_logs_one_run",
    r"dvc exp run -S train\.nproc=4\b": "tests/test_distributed.py::test_two_gpu_processes_end_identical",
    r"torchrun --nnodes": "tests/test_distributed.py::test_two_processes_train_as_one_on_the_same_batches",
}
SERVERS = {
    "make serve": 5001,
    "make mlflow-ui": 5000,
    ".venv/bin/faceage serve": 8000,
    "faceage serve": 8000,
}  # started in the background; the page's next commands use them
WAIT_FOR = "wait_for() { for i in $(seq 120); do curl -so /dev/null localhost:$1 && return; sleep 1; done; }"
TEAM_PAGE = "docs/team.md"  # every command there needs a team's servers and stores: tests/test_team.py


def bash_blocks(text: str) -> list[str]:
    """The contents of the page's ```bash blocks."""
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """The block's commands: continued lines, here-documents and quotes spanning lines joined; blank lines and
    comment lines left out."""
    found, lines = [], block.splitlines()
    while lines:
        command = lines.pop(0)
        heredoc = re.search(r"<<'?(\w+)'?", command)
        while lines and (command.endswith("\\") or heredoc or not balanced(command)):
            line = lines.pop(0)
            command += "\n" + line
            if heredoc and line.strip() == heredoc[1]:
                heredoc = None
        if command.strip() and not command.lstrip().startswith("#"):
            found.append(command)
    return found


def balanced(command: str) -> bool:
    """Whether the command's quotes are closed (an apostrophe in a comment is no quote)."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def page_commands(page: str) -> list[str]:
    return [command for block in bash_blocks((REPO / page).read_text()) for command in commands(block)]


def covered_by(command: str, page: str) -> str | None:
    """The test that runs a command this one does not, if any."""
    if page == TEAM_PAGE:
        return "tests/test_team.py::test_a_shared_tracking_server_refuses_strangers_and_records_three_runs_at_once"
    return next((test for pattern, test in COVERED.items() if re.match(pattern, command)), None)


def test_the_pages_show_commands_and_the_parser_joins_what_belongs_together():
    assert len(page_commands("README.md")) >= 10 and len(page_commands("docs/predicting.md")) >= 8
    joined = commands("a \\\n  b\npython - <<'PY'\nprint(1)\nPY\npython -c 'x\ny'\n# note\n\nz &  # it's\nw")
    assert joined == ["a \\\n  b", "python - <<'PY'\nprint(1)\nPY", "python -c 'x\ny'", "z &  # it's", "w"]


def test_every_covering_test_exists():
    for test in COVERED.values():
        path, _, name = test.partition("::")
        if name:
            assert f"def {name}(" in (REPO / path).read_text(), test


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny copy of the repository, as a user has it after `make repro` and a commit: this environment's
    `.venv`, `../shared` beside it, the default ensemble's member at tiny sizes, no pretrained weights."""
    root = tmp_path_factory.mktemp("user")
    members = {"mobilenet112": {"model": {"backbone": "mobilenet_v2", "input_size": 32}, "train": {"epochs": 1}}}
    repo = copy_worktree(REPO, root / "repo", {**TINY, "members": members})
    (repo / ".venv").symlink_to(REPO / ".venv")
    stamp = REPO / ".venv" / ".installed"  # the copy's install inputs as old as the install: make never reinstalls
    for name in ("requirements.txt", "pyproject.toml"):  # (it would point this environment's faceage at the copy)
        if stamp.is_file():
            os.utime(repo / name, ns=(stamp.stat().st_mtime_ns, stamp.stat().st_mtime_ns))
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED)
    else:  # where the pages expect shared weights: empty, as on a machine that has none
        (root / "shared" / "torch").mkdir(parents=True)
    run(["dvc", "repro"], repo)
    commit(repo, "repro")
    return repo, run(["git", "rev-parse", "HEAD"], repo).strip()


def user_env() -> dict[str, str]:
    """A shell as a user opens it: this environment's tools not on the PATH (the pages say how to get them)."""
    venv = str(REPO / ".venv" / "bin")
    path = os.pathsep.join(part for part in os.environ["PATH"].split(os.pathsep) if part != venv)
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "TORCH_HOME")}
    identity = {
        "GIT_AUTHOR_NAME": "u",
        "GIT_AUTHOR_EMAIL": "u@u",
        "GIT_COMMITTER_NAME": "u",
        "GIT_COMMITTER_EMAIL": "u@u",
    }
    return {**env, **identity, "PATH": path}


def script(page: str) -> tuple[str, list[str]]:
    """A bash script that runs the page's commands as written, each followed by a line with its exit status;
    servers go to the background and are waited for. Also the commands it runs."""
    lines, ran = (
        ["wait_for() { for i in $(seq 120); do curl -s -o /dev/null localhost:$1 && return; sleep 1; done; }"],
        [],
    )
    for command in page_commands(page):
        if covered_by(command, page):
            continue
        server = next((name for name in SERVERS if command.startswith(name)), None)
        if server:
            lines.append(f"{command.split(' #')[0].rstrip(' &')} > /dev/null 2>&1 &\nwait_for {SERVERS[server]}")
        else:
            lines.append(command)
        lines.append(f"printf '\\n@@ {len(ran)} %d\\n' $?")  # on a line of its own after any output
        ran.append(command)
    return "\n".join(lines) + "\n", ran


@pytest.mark.parametrize("page", PAGES)
def test_each_command_of_the_page_works_as_written(workspace, page):
    """Each page starts from the committed params.yaml, as its commands assume; the rest is as the last left it."""
    workspace, committed = workspace
    run(["git", "checkout", committed, "--", "params.yaml"], workspace)
    text, ran = script(page)
    shell = subprocess.Popen(
        ["bash"], cwd=workspace, env=user_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = shell.communicate(text, timeout=900)
    finally:
        with_servers_stopped(shell.pid)
    statuses = dict(re.findall(r"^@@ (\d+) (\d+)$", output, flags=re.MULTILINE))
    failed = [ran[int(index)] for index, status in statuses.items() if status != "0"]
    assert len(statuses) == len(ran) and not failed, f"failed: {failed}\n{output[-4000:]}"


def with_servers_stopped(session: int) -> None:
    """Stop the page's background servers: every process of the shell's session."""
    try:
        os.killpg(session, signal.SIGTERM)
    except ProcessLookupError:
        return
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(session, signal.SIGKILL)


def test_every_link_between_the_pages_leads_somewhere():
    for page in PAGES:
        text = (REPO / page).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / page).parent / path if path else REPO / page
            assert file.exists(), f"{page}: {target}"
            if anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.MULTILINE)
                anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                assert anchor in anchors, f"{page}: {target}"


def test_the_served_model_answers_the_readme_request(workspace):
    """The quick start's request, read back: one face, with an age."""
    workspace, _ = workspace
    shell = subprocess.Popen(
        ["make", "serve", "PORT=5013"], cwd=workspace, env=user_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        (request,) = [c for c in page_commands("README.md") if c.startswith("curl")]
        for _ in range(120):
            try:
                urllib.request.urlopen("http://127.0.0.1:5013/ping", timeout=1)
                break
            except OSError:
                time.sleep(1)
        answer = run(["bash", "-c", request.replace("5001", "5013")], workspace)
        assert '"age_years"' in answer and '"face": 0' in answer
    finally:
        with_servers_stopped(shell.pid)
