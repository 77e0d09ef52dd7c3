"""The embedded mode's broker (config/filesystem_broker.py): a worker never takes a message half written."""

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty
from time import monotonic

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError
from kombu.transport import filesystem

from config import filesystem_broker as broker
from config.filesystem_broker import STALE_WRITING_SECONDS, WRITING_SUFFIX, Transport

from .fresh_process import ROOT, FreshProcesses


def channel(folder: Path):
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://localhost/", transport=Transport, transport_options=options).channel()


def test_a_worker_polling_while_a_message_is_written_does_not_take_it_half_written(tmp_path, monkeypatch):
    # kombu created the message's file under its final name before writing it: a worker that looked
    # then took an empty file, failed to parse it and stopped (JSONDecodeError), and `make run` with it.
    sender, worker = channel(tmp_path), channel(tmp_path)
    seen_while_writing = []
    serialize = filesystem.dumps

    def serialize_while_the_worker_looks(payload):
        try:
            seen_while_writing.append(worker._get("hookline"))
        except Empty:
            seen_while_writing.append("nothing")
        return serialize(payload)

    monkeypatch.setattr(filesystem, "dumps", serialize_while_the_worker_looks)
    sender._put("hookline", {"task": "webhooks.tasks.sweep"})
    assert seen_while_writing == ["nothing"]
    assert worker._get("hookline") == {"task": "webhooks.tasks.sweep"}
    assert os.listdir(tmp_path) == []  # taken, and nothing left behind


def test_a_message_whose_write_fails_is_refused_whole_and_leaves_nothing_behind(tmp_path):
    # A real failed write: the file size limit (as a full disk would) stops it after its first bytes.
    sender = channel(tmp_path)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the process is killed, not told EFBIG
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))
        with pytest.raises(ChannelError):
            sender._put("hookline", {"task": "webhooks.tasks.sweep", "args": ["x" * 10_000]})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, ignored)
    # Not put in the queue cut short (an unbuffered write said nothing of it: a worker then failed to
    # parse it and stopped), and no ".writing" part left there for good.
    assert os.listdir(tmp_path) == []


SEND_AND_TAKE = (
    "import django; django.setup(); from config.celery import app\n"
    "with app.connection_for_write() as connection:\n"
    "    channel = connection.channel(); channel._put('hookline', {'sent': 1})\n"
    "    print(type(connection.transport).__module__, channel._get('hookline'))\n"
)


def test_the_embedded_mode_sends_its_tasks_through_it(tmp_path):
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "HOOKLINE_VAR_DIR": str(tmp_path),
    }
    with FreshProcesses() as processes:
        finished = processes.run(["-c", SEND_AND_TAKE], environment)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["config.filesystem_broker", "{'sent':", "1}"]


KILLED_BEFORE_RENAME = (
    "import os, signal, sys\n"
    "from kombu import Connection\n"
    "from config.filesystem_broker import Transport\n"
    "folder = sys.argv[1]\n"
    "options = {'data_folder_in': folder, 'data_folder_out': folder, 'store_processed': False}\n"
    "channel = Connection('filesystem://localhost/', transport=Transport, transport_options=options).channel()\n"
    "os.replace = lambda *paths: os.kill(os.getpid(), signal.SIGKILL)  # killed once the part is written\n"
    "channel._put('hookline', {'task': 'webhooks.tasks.sweep'})\n"
)


def test_a_part_left_by_a_process_killed_before_its_rename_is_removed_once_stale(tmp_path):
    # A process killed between writing a message under its ".writing" name and renaming it left that
    # part in the queue folder for good: no reader takes it, and nothing removed it.
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_RENAME, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [left] = os.listdir(tmp_path)
    assert left.endswith(WRITING_SUFFIX)
    channel(tmp_path)._put("hookline", {"task": "webhooks.tasks.deliver"})  # a message written since
    in_progress = tmp_path / f"1_{'0' * 32}.hookline.msg{WRITING_SUFFIX}"
    in_progress.write_bytes(b"{")  # as a write still going on in another process

    # Young, the killed process's part could be a write in progress: it is left.
    channel(tmp_path)
    assert left in os.listdir(tmp_path)
    broker._last_swept.clear()  # as a process starting

    stale = time.time() - STALE_WRITING_SECONDS - 60
    os.utime(tmp_path / left, (stale, stale))
    worker = channel(tmp_path)

    assert left not in os.listdir(tmp_path)  # removed on the channel's opening
    assert in_progress.exists()  # not a stale one
    assert worker._get("hookline") == {"task": "webhooks.tasks.deliver"}  # the messages untouched
    assert os.listdir(tmp_path) == [in_progress.name]


def test_the_stale_parts_are_looked_for_at_most_once_per_interval(tmp_path):
    # Each channel opened would otherwise list the queue folder: a process looks again only after the interval.
    part = tmp_path / f"1_{'0' * 32}.hookline.msg{WRITING_SUFFIX}"
    part.write_bytes(b"{")
    stale = time.time() - STALE_WRITING_SECONDS - 60
    os.utime(part, (stale, stale))
    broker._last_swept[str(tmp_path)] = monotonic()  # looked just now, before the part was stale
    channel(tmp_path)
    assert part.exists()
    broker._last_swept[str(tmp_path)] = monotonic() - broker.SWEEP_INTERVAL_SECONDS
    channel(tmp_path)
    assert not part.exists()
