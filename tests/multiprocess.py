"""Launch P JAX processes on 127.0.0.1 (a loopback "cluster") for multi-host tests.

Each child runs ``tests/multiprocess_worker.py`` with ``jax.distributed`` pointed at a
coordinator on a free local port, ``devices_per_process`` simulated CPU devices
(``JAX_NUM_CPU_DEVICES``) and gloo CPU collectives. Children run in their own process groups
and are always killed (SIGKILL to the group) when the launch ends: on success, on a failing
child, on timeout, on KeyboardInterrupt, on a failing test. A failing or hanging child makes the
launch raise :class:`LaunchError` with every child's output tail.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
WORKER = TESTS / "multiprocess_worker.py"


class LaunchError(RuntimeError):
    """A multi-process launch failed, hung or was killed."""


@dataclasses.dataclass
class Child:
    """One launched process."""

    index: int
    popen: subprocess.Popen
    log: Path

    def output(self, tail: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-tail:]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kill_group(child: Child) -> None:
    if child.popen.poll() is not None:
        return
    try:
        os.killpg(child.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        child.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def launch(
    jobs: Sequence[dict],
    *,
    num_processes: int,
    devices_per_process: int,
    out_dir: str | os.PathLike,
    timeout_s: float,
    env: dict[str, str] | None = None,
    on_poll: Callable[[list[Child]], None] | None = None,
) -> list[dict]:
    """Run ``jobs`` (see ``multiprocess_worker.py``) on ``num_processes`` loopback processes.

    Args:
        jobs: JSON-able job descriptions, run in order by every process.
        num_processes: P.
        devices_per_process: Simulated CPU devices per process.
        out_dir: Directory for the logs and the per-process results.
        timeout_s: Hard limit for the whole launch; children are killed when it passes.
        env: Extra environment variables for the children.
        on_poll: Called with the children about every 0.1 s while they run (e.g. to send a
            signal when a marker file appears).

    Returns:
        Per process, the worker's result dict (``results_<i>.json``).

    Raises:
        LaunchError: a child exited non-zero, or the launch ran past ``timeout_s``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = out_dir / "jobs.json"
    jobs_file.write_text(json.dumps(list(jobs)))
    address = f"127.0.0.1:{free_port()}"
    base_env = dict(os.environ)
    base_env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices_per_process),
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), base_env.get("PYTHONPATH", "")]),
        # One XLA thread pool per process would oversubscribe small CI machines.
        XLA_FLAGS=base_env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false",
    )
    base_env.update(env or {})
    children: list[Child] = []
    deadline = time.monotonic() + timeout_s
    try:
        for index in range(num_processes):
            log = out_dir / f"process_{index}.log"
            with open(log, "wb") as log_file:
                popen = subprocess.Popen(
                    [
                        sys.executable,
                        str(WORKER),
                        f"--coordinator_address={address}",
                        f"--num_processes={num_processes}",
                        f"--process_id={index}",
                        f"--jobs={jobs_file}",
                        f"--out={out_dir}",
                    ],
                    cwd=str(REPO),
                    env=base_env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: killpg reaches grandchildren
                )
            children.append(Child(index, popen, log))
        while True:
            codes = [c.popen.poll() for c in children]
            failed = [c for c, code in zip(children, codes, strict=True) if code not in (None, 0)]
            if failed:
                # The others would wait for the failed peer until the heartbeat timeout.
                time.sleep(1.0)  # let them report their own error first
                raise LaunchError(_report(children, f"process {failed[0].index} failed"))
            if all(code == 0 for code in codes):
                break
            if time.monotonic() > deadline:
                raise LaunchError(_report(children, f"timeout after {timeout_s:.0f} s"))
            if on_poll is not None:
                on_poll(children)
            time.sleep(0.1)
    finally:
        for child in children:
            _kill_group(child)
    results = []
    for index in range(num_processes):
        path = out_dir / f"results_{index}.json"
        if not path.exists():
            raise LaunchError(_report(children, f"process {index} wrote no {path.name}"))
        results.append(json.loads(path.read_text()))
    return results


def _report(children: list[Child], reason: str) -> str:
    parts = [f"multi-process launch: {reason}"]
    for child in children:
        code = child.popen.poll()
        parts.append(f"--- process {child.index} (exit {code}) ---\n{child.output()}")
    return "\n".join(parts)
