"""`ray job submit` against a Ray head started here on 127.0.0.1: a one-step run must reach SUCCEEDED.

The head runs as `ray start --head --block` in its own process group, so the test stops exactly the
head it started (never `ray stop`, which would stop every Ray on the machine).

Token authentication stays on, and the test brings its own token: a fresh random one in RAY_AUTH_TOKEN for
the head, the CLI and (inherited through the head) the job's driver. It needs nothing in ~/.ray, so it
passes on a machine that never ran Ray (`HOME=$(mktemp -d) pytest tests/cluster/test_job_submit.py`), and
it never reads or writes the token of whoever runs it."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.heavy  # Ray, vLLM or DeepSpeed: left out of `make test-fast`

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now (all sockets are held open until every port is picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_cli(*args, env, timeout=120):
    return subprocess.run(
        [os.path.join(BIN, "ray"), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the head's process group; a group that is already gone (the head exited) is no error."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_head(proc: subprocess.Popen) -> None:
    kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.fixture
def head(tmp_path):
    # Token auth on (RAY_AUTH_MODE=token) with a token of this test's own: in Ray 2.60 `ray start --head`
    # with token mode and no token anywhere (env, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) exits at once
    # with "AuthenticationError: Token authentication is enabled but no authentication token was found".
    # The variable takes precedence over any ~/.ray/auth_token of the user running the test.
    env = {
        **os.environ,
        "PATH": BIN + os.pathsep + os.environ["PATH"],
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    # Every port Ray would otherwise take at a fixed default is chosen free here: another Ray on the machine
    # (a local run, someone's tests) holds 6379, 8265, 10001 or the dashboard agent's 52365, and a head
    # whose agent cannot bind answers `ray job list` but fails every submission ("No available agent").
    gcs, dash, agent, client = free_ports(4)
    # The head's output goes to a file: a pipe nobody reads during the run could fill up and block it.
    log_path = tmp_path / "ray_head.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                os.path.join(BIN, "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--dashboard-agent-listen-port={agent}",
                f"--ray-client-server-port={client}",
                "--num-cpus=2",
                "--include-dashboard=true",
            ],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while ray_cli("job", "list", "--address", address, env=env).returncode != 0:
            if proc.poll() is not None or time.time() > deadline:
                stop_head(proc)
                pytest.fail(f"ray head did not come up (exit code {proc.returncode}): {log_path.read_text()[-3000:]}")
            time.sleep(2)
        yield address, env
    finally:
        stop_head(proc)


def test_job_submit_one_step_succeeds(head, tmp_path):
    address, env = head
    run_dir = tmp_path / "run"
    job_id = f"steprl-test-{os.getpid()}"
    args = (
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        job_id,
        "--no-wait",
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps({"excludes": ["runs", "*.egg-info", ".venv"]}),
        "--",
        "steprl",
        "train",
        "configs/demo_cpu.yaml",
        "cluster.address=auto",
        f"run_dir={run_dir}",
        "train.steps=1",
        "train.eval_every=0",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "learner.micro_batch_size=8",
        "eval.num_problems=4",
        "eval.k=1",
    )
    # The dashboard answers `ray job list` before the head's dashboard agent, which runs the jobs, is up; a
    # submission then waits 10 s for it and fails with "No available agent to submit job, please try again
    # later" (no job is created, so the same submission id can be sent again). A busy machine can need more.
    deadline = time.time() + 120
    while True:
        submit = ray_cli(*args, env=env)
        if submit.returncode == 0 or "No available agent" not in submit.stderr or time.time() > deadline:
            break
        time.sleep(5)
    assert submit.returncode == 0, submit.stderr[-5000:]
    # The CLI in a subprocess, as a user would: its environment carries RAY_AUTH_MODE=token and the token.
    status, deadline = "", time.time() + 900
    while time.time() < deadline:
        out = ray_cli("job", "status", "--address", address, job_id, env=env)
        status = (out.stdout + out.stderr).lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    logs = ray_cli("job", "logs", "--address", address, job_id, env=env)
    assert f"job '{job_id}' succeeded" in status, f"{status[-2000:]}\n--- job logs ---\n{logs.stdout[-5000:]}"
    with open(run_dir / "summary.json") as fh:
        summary = json.load(fh)
    assert summary["steps"] == 1 and summary["backend/generator"] == "vllm"
