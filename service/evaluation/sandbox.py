"""Run a code task's tests against the generated code, in a subprocess with limits.

The answer's code (the first fenced code block, or the whole answer) is compiled (the *compile
rate*), then run with the case's ``code_tests`` appended (HumanEval's way: the tests call the
functions the answer defines) by a fresh ``python -I`` in a temporary directory. Its outcome is one
of :data:`OUTCOMES`.

Limits (docs/eval.md states the threat model):

- **time**: CPU seconds (``RLIMIT_CPU``) and a wall-clock bound, after which the whole process
  group is killed (``timeout``);
- **memory**: the address space (``RLIMIT_AS``; ``memory`` when the code runs out);
- **processes**: an audit hook (PEP 578) refuses ``fork``, ``exec``, ``subprocess``, ``os.system``,
  ``ctypes`` (its way round the hook) and, for a non-root user, ``RLIMIT_NPROC`` is 0; whatever
  starts is in the run's own process group and is killed with it at the end;
- **network**: the same hook refuses socket creation, ``connect``, ``bind`` and name lookups
  (``blocked``); where unprivileged user namespaces are available (``unshare -rn``), the process
  also runs in an empty network namespace: no interface but a down loopback;
- **files**: the working directory is a fresh temporary directory, removed afterwards; files
  written are capped (``RLIMIT_FSIZE``); the environment is emptied (no API key is inherited).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache

OUTCOMES = ("pass", "fail", "syntax_error", "timeout", "memory", "blocked", "no_code")
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)
EXIT_FAIL, EXIT_SYNTAX, EXIT_MEMORY = 1, 2, 3

# The harness the subprocess runs: the hook first, then the answer and its tests in one namespace.
HARNESS = r'''
import os, sys
MARK = int(sys.argv[1])
DENIED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
          "socket.sendto", "socket.sendmsg", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
          "os.fork", "os.forkpty", "os.spawn", "os.startfile", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
          "ctypes.cdata", "ctypes.call_function", "_posixsubprocess"}

def hook(event, args):
    if event in DENIED or (event == "import" and args and str(args[0]).split(".")[0] in ("ctypes", "_ctypes",
                                                                                      "_posixsubprocess")):
        try:
            os.write(MARK, (event + "\n").encode())
        except OSError:
            pass
        raise PermissionError(f"the splitwatch sandbox refuses {event}")

source = open("solution.py", encoding="utf-8").read()
tests = open("tests.py", encoding="utf-8").read()
try:
    code = compile(source + "\n\n" + tests, "solution.py", "exec")
except (SyntaxError, ValueError):
    sys.exit(2)
sys.addaudithook(hook)
try:
    exec(code, {"__name__": "__main__"})
except MemoryError:
    os._exit(3)
except BaseException as exc:
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        os._exit(0)
    os._exit(1)
os._exit(0)
'''


@dataclass(frozen=True)
class SandboxLimits:
    """The limits of one run: CPU and wall seconds, memory (MiB), the largest file written (MiB)."""

    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16


@dataclass(frozen=True)
class CodeOutcome:
    """A code case's result: its outcome (:data:`OUTCOMES`), whether the code compiled, the seconds taken,
    and what the sandbox refused (the first audit event), if anything."""

    outcome: str
    compiled: bool
    seconds: float
    refused: str | None = None


def extract_code(answer: str) -> str:
    """Return the answer's code: its first fenced code block, or the whole answer when it has none."""
    m = _FENCE.search(answer or "")
    return m.group(1) if m else (answer or "")


def compiles(code: str) -> bool:
    """Return True when the code is valid Python (it is not run)."""
    try:
        compile(code, "solution.py", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


@cache
def network_namespace_available() -> bool:
    """Return True when ``unshare -rn`` can run a process in an empty network namespace here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _limit(limits: SandboxLimits) -> None:  # runs in the child, between fork and exec
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() != 0:  # root is not held by RLIMIT_NPROC; the audit hook and the group kill remain
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def run_code_case(answer: str, tests: str, limits: SandboxLimits | None = None) -> CodeOutcome:
    """Return the outcome of the case's tests run against the answer's code, within ``limits``."""
    limits = limits or SandboxLimits()
    code = extract_code(answer)
    started = time.perf_counter()
    if not code.strip():
        return CodeOutcome("no_code", False, 0.0)
    if not compiles(code):
        return CodeOutcome("syntax_error", False, time.perf_counter() - started)
    with tempfile.TemporaryDirectory(prefix="splitwatch-code-") as work:
        with open(os.path.join(work, "solution.py"), "w", encoding="utf-8") as f:
            f.write(code)
        with open(os.path.join(work, "tests.py"), "w", encoding="utf-8") as f:
            f.write(tests)
        read_mark, write_mark = os.pipe()
        command = [sys.executable, "-I", "-c", HARNESS, str(write_mark)]
        if network_namespace_available():
            command = ["unshare", "-rn", "--", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=(write_mark,), start_new_session=True,
                                preexec_fn=lambda: _limit(limits))
        os.close(write_mark)
        timed_out = False
        try:
            code_ = proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            code_ = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the run's group: anything it started dies with it
            proc.wait()
        with os.fdopen(read_mark, "rb") as mark:
            refused = mark.read().decode(errors="replace").split("\n")[0] or None
    seconds = time.perf_counter() - started
    return CodeOutcome(_classify(code_, timed_out, refused), True, seconds, refused)


def _classify(exit_code: int | None, timed_out: bool, refused: str | None) -> str:
    if refused:
        return "blocked"
    if timed_out or exit_code in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout"
    if exit_code == 0:
        return "pass"
    if exit_code == EXIT_MEMORY:
        return "memory"
    if exit_code == EXIT_SYNTAX:
        return "syntax_error"
    return "fail"
