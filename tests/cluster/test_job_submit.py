"""`ray job submit` against a Ray head started here on 127.0.0.1: a one-step run must reach SUCCEEDED.

The head runs as `ray start --head --block` in its own process group, so the test stops exactly the
head it started (never `ray stop`, which would stop every Ray on the machine)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args, env, timeout=120):
    return subprocess.run([os.path.join(BIN, "ray"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture
def head():
    # Ray 2.60 turns token authentication on for `ray start --head`; the CLI reads ~/.ray/auth_token.
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token",
           "OMP_NUM_THREADS": "1"}
    dash = free_port()
    proc = subprocess.Popen(
        [os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--include-dashboard=true"],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while ray_cli("job", "list", "--address", address, env=env).returncode != 0:
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            pytest.fail(f"ray head did not come up: {proc.stdout.read()[-3000:]}")
        time.sleep(2)
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_job_submit_one_step_succeeds(head, tmp_path):
    address, env = head
    run_dir = tmp_path / "run"
    job_id = f"steprl-test-{os.getpid()}"
    submit = ray_cli(
        "job", "submit", "--address", address, "--submission-id", job_id, "--no-wait", "--working-dir", ".",
        "--runtime-env-json", json.dumps({"excludes": ["runs", "*.egg-info", ".venv"]}), "--",
        "steprl", "train", "configs/demo_cpu.yaml", "cluster.address=auto", f"run_dir={run_dir}",
        "train.steps=1", "train.eval_every=0", "rollout.prompts_per_step=4", "rollout.group_size=4",
        "learner.micro_batch_size=8", "eval.num_problems=4", "eval.k=1", env=env)
    assert submit.returncode == 0, submit.stderr
    # The CLI in a subprocess, as a user would: its environment carries RAY_AUTH_MODE=token.
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
