"""Fresh Python processes for the start-up tests, forked from one that has loaded the libraries.

Each start of Django for these tests was a new interpreter importing Django, psycopg, Celery and the
rest again: about a second of CPU, more than the settings or checks under test. Here one server
process (started with no environment but PATH and HOME) imports those third-party libraries, and
nothing of the project, then forks a child per request. The child is what `python -c CODE` or
`python manage.py ...` in ROOT would be: its environment replaced by exactly the one asked for, its
own argv, the project imported and Django set up afresh; its output, exit status and atexit handlers
are a process's own. Nothing the libraries read at import depends on the variables under test.

    with FreshProcesses() as processes:
        finished = processes.run(["-c", code, *arguments], environment)  # or ["manage.py", "check"]
        finished.returncode, finished.stdout, finished.stderr
"""

import json
import os
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Libraries only: importing them reads no setting. Nothing of the project (config/__init__.py alone
# would create the Celery app from the environment the server was started with).
PRELOADED = (
    "asyncio",
    "cryptography.fernet",
    "cryptography.x509",
    "cryptography.x509.verification",
    "urllib3",
    "zoneinfo",
    "environ",
    "psycopg",
    "redis",
    "redis.asyncio",
    "celery",
    "celery.app.base",
    "celery.schedules",
    "celery.worker",
    "gunicorn.glogging",
    "kombu",
    "django",
    "django.db.models",
    "django.contrib.admin",
    "django.core.management",
    "django.test",
    "rest_framework",
)


class FreshProcesses:
    def __init__(self, timeout: float = 120):
        self.timeout = timeout
        self.server = None

    def __enter__(self):
        self.server = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={"PATH": os.environ["PATH"], "HOME": str(Path.home())},
            cwd=ROOT,
            text=True,
        )
        return self

    def __exit__(self, *exc_info):
        self.server.stdin.close()
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server.stdout.close()

    def run(self, arguments: list[str], environment: dict) -> subprocess.CompletedProcess:
        """As subprocess.run([sys.executable, *arguments], env=environment, cwd=ROOT, capture_output=True, text=True)."""
        request = {"arguments": list(arguments), "environment": dict(environment)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], self.timeout)
        if not ready:
            raise subprocess.TimeoutExpired(arguments, self.timeout)
        line = self.server.stdout.readline()
        assert line, f"the fork server ended (exit status {self.server.poll()})"
        answer = json.loads(line)
        return subprocess.CompletedProcess(
            [sys.executable, *arguments], answer["returncode"], answer["stdout"], answer["stderr"]
        )


def _child(request: dict, out_path: str, err_path: str) -> None:
    """In the forked child: become `python *arguments` and never return."""
    import atexit
    import runpy
    import traceback
    import weakref

    code = 1
    try:
        # Exit handlers are the child's own, as a new interpreter's would be.
        atexit._clear()
        weakref.finalize._registered_with_atexit = False
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        os.environ.clear()
        os.environ.update(request["environment"])
        arguments = request["arguments"]
        os.chdir(ROOT)
        try:
            if arguments[0] == "-c":
                sys.argv = ["-c", *arguments[2:]]
                sys.path[0] = ""  # as `python -c` has it: the working directory
                namespace = {"__name__": "__main__", "__builtins__": __builtins__}
                exec(compile(arguments[1], "<string>", "exec"), namespace)  # noqa: S102 - as `python -c` does
            else:
                script = ROOT / arguments[0]
                sys.argv = list(arguments)
                sys.path[0] = str(script.parent)
                runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve() -> None:
    import importlib
    import shutil
    import tempfile

    for name in PRELOADED:
        importlib.import_module(name)
    assert not any(name == "config" or name.startswith(("config.", "webhooks", "accounts")) for name in sys.modules)
    protocol = sys.stdout
    directory = tempfile.mkdtemp(prefix="hookline-fresh-")
    out_path, err_path = os.path.join(directory, "out"), os.path.join(directory, "err")
    try:
        for line in sys.stdin:
            request = json.loads(line)
            protocol.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, out_path, err_path)
            _, status = os.waitpid(pid, 0)
            with open(out_path, encoding="utf-8") as out, open(err_path, encoding="utf-8") as err:
                answer = {"returncode": os.waitstatus_to_exitcode(status), "stdout": out.read(), "stderr": err.read()}
            protocol.write(json.dumps(answer) + "\n")
            protocol.flush()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    os._exit(0)  # nothing left to tidy: skip the interpreter's teardown of every loaded module


if __name__ == "__main__":
    _serve()
