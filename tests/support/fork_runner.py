"""A process that imports rcutune once and forks one child per command, for tests that kill commands.

Started as `python -m tests.support.fork_runner` (with the project on PYTHONPATH). Each line on stdin is
a JSON request:

- {"argv": [...], "log": path}: fork a child that runs `rcutune <argv>`;
- {"prepare": {"url", "name", "out", "confidence", "confirm_seeds"}}: compute a report here, once
  (`prepare_report`, which writes nothing), and answer {"prepared": true};
- {"publish": true, "log": path}: fork a child that writes the prepared report (`publish_report`).

A child runs in its own process group with stdout and stderr in `log`; the runner answers
{"pid": pid} at once and {"pid": pid, "status": wait status} when the child is gone. A test can then
kill -9 a command at a chosen moment of its own work instead of during the interpreter's start-up,
which writes nothing, and can kill the writing of one report many times without recomputing it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    import rcutune.tuner.search._study  # noqa: F401 - Optuna, SQLAlchemy
    from rcutune.tuner.cli import app
    from rcutune.tuner.report import prepare_report, publish_report  # the heavy imports, once

    prepared = None
    for line in sys.stdin:
        request = json.loads(line)
        if "prepare" in request:
            p = request["prepare"]
            prepared = prepare_report(
                p["url"], p["name"], Path(p["out"]), confidence=p["confidence"], confirm_seeds=p["confirm_seeds"]
            )
            print(json.dumps({"prepared": True}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = 1
            try:
                if request.get("publish"):
                    publish_report(prepared)
                else:
                    app(request["argv"], prog_name="rcutune")
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # os._exit() below would drop the traceback: into the log with it
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        try:
            os.setpgid(pid, pid)  # also here, so the group exists before the test learns the pid
        except (ProcessLookupError, PermissionError):
            pass
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": status}), flush=True)


class ForkRunner:
    """The test's end of the runner: start commands, kill them at a moment, wait for them."""

    def __init__(self, root: Path, cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fork_runner"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buffer = b""

    def start(self, argv: list[str], log: Path) -> int:
        """Start `rcutune <argv>`; returns its pid (also its process group)."""
        return self._ask({"argv": argv, "log": str(log)}, timeout=120)["pid"]

    def prepare_report(self, url: str, name: str, out: Path, *, confidence: float, confirm_seeds: int) -> None:
        """Compute a report in the runner, once; `start_publish` then writes it."""
        self._ask(
            {
                "prepare": {
                    "url": url,
                    "name": name,
                    "out": str(out),
                    "confidence": confidence,
                    "confirm_seeds": confirm_seeds,
                }
            },
            timeout=600,
        )

    def start_publish(self, log: Path) -> int:
        """Start writing the prepared report; returns the writer's pid."""
        return self._ask({"publish": True, "log": str(log)}, timeout=120)["pid"]

    def _ask(self, request: dict, timeout: float) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        answer = self._read(timeout)
        assert answer is not None, f"the fork runner did not answer {request}"
        return answer

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code of the running command (negative: killed by that signal); None on timeout."""
        answer = self._read(timeout)
        return None if answer is None else os.waitstatus_to_exitcode(answer["status"])

    def kill_at(self, pid: int, moment: float) -> tuple[int, bool]:
        """Wait until `moment` seconds, then kill -9 the command's process group unless it ended already.

        Returns its exit code and whether it was killed.
        """
        code = self.wait(timeout=moment)
        if code is not None:
            return code, False
        try:
            os.killpg(pid, signal.SIGKILL)  # the command and its simulation workers
        except ProcessLookupError:  # it ended just now
            pass
        code = self.wait()
        assert code is not None
        return code, True

    def run(self, argv: list[str], log: Path) -> tuple[int, float]:
        start = time.monotonic()
        self.start(argv, log)
        code = self.wait()
        assert code is not None
        return code, time.monotonic() - start

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def _read(self, timeout: float | None) -> dict | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the fork runner stopped")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


if __name__ == "__main__":
    main()
