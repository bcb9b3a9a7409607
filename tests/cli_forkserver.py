"""A fork server for CLI fault-injection tests: imports songstep's CLI and its heavy libraries
once, then runs each `songstep.cli.main(argv)` in a forked child, so a test can start many real
CLI runs (and signal them) without paying the imports each time.

Protocol on stdin/stdout, one JSON object per line:
  {"argv": [...], "stdout": PATH, "stderr": PATH}  ->  {"pid": N}   (the child runs main(argv))
  {"wait": N}                                      ->  {"rc": CODE}  (exit code, or -signal)
Run it as `python tests/cli_forkserver.py` with the worktree on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402,F401
import torch  # noqa: E402
import transformers  # noqa: E402,F401

import songstep.pipeline  # noqa: E402,F401
from songstep.cli import main  # noqa: E402
from songstep.outputs import handle_signals  # noqa: E402

torch.set_num_threads(1)


def _child(argv: list[str], stdout: str, stderr: str) -> None:
    out = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    code = 1
    try:
        with handle_signals():  # as the real entry point, from the first instruction on
            code = main(argv)
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        if "wait" in msg:
            _, status = os.waitpid(int(msg["wait"]), 0)
            rc = os.waitstatus_to_exitcode(status)
            reply = {"rc": rc}
        else:
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(msg["argv"], msg["stdout"], msg["stderr"])
            reply = {"pid": pid}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
