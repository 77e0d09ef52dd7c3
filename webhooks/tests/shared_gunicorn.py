"""One gunicorn (as the Procfile runs it, with its ingest writer process) shared by the test modules
that ask for the same command line and environment, instead of one started and stopped per module.

Started on first use, stopped when the test session ends (before the test database is dropped: the
session's finalizers run last-registered first). Only for tests that neither stop nor reload it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import pytest

from .processes import PATIENCE_SECONDS, free_port, wait_for_port, wait_until


@dataclass
class SharedGunicorn:
    port: int
    process: Popen
    private_tmp: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        shutil.rmtree(self.private_tmp, ignore_errors=True)


_running: dict[tuple, SharedGunicorn] = {}


def shared_gunicorn(request: pytest.FixtureRequest, options: tuple[str, ...], **env: str) -> SharedGunicorn:
    """The session's gunicorn with these ``options`` and ``env``; call it with the database unblocked."""
    from .test_ingest_writer_process import _start_gunicorn, _writer_pids

    key = (options, tuple(sorted(env.items())))
    server = _running.get(key)
    if server is not None and server.process.poll() is None:
        return server
    port = free_port()
    private_tmp = Path(tempfile.mkdtemp(prefix="hls-"))
    log_path = request.getfixturevalue("tmp_path_factory").mktemp("shared-gunicorn") / "gunicorn.log"
    with log_path.open("w") as log:
        process = _start_gunicorn(port, private_tmp, log, *options, **env)
    server = SharedGunicorn(port, process, private_tmp, log_path)
    request.session.addfinalizer(server.stop)
    _running[key] = server
    wait_for_port(port, process=process)
    assert wait_until(lambda: len(_writer_pids(process.pid)) == 1, PATIENCE_SECONDS, 0.05)
    return server
