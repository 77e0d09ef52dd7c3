"""The embedded mode's Celery broker: kombu's filesystem transport, each message written whole.

kombu (5.x) creates a message's file in the queue folder under its final name and only then locks
and fills it, while a reader takes files by name without any lock. A worker polling in between
took the still empty file, failed to parse it and stopped ("Unrecoverable error: JSONDecodeError"),
and `make run` stopped with it, a few minutes into a session. Here a message is written under a
name no reader takes and renamed into place, which is atomic: a reader finds it whole or not at all.
"""

import contextlib
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes

# Readers take "<n>_<uuid>.<queue>.msg" files only (kombu's Channel._get): this suffix hides a
# message still being written.
WRITING_SUFFIX = ".writing"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue``, as kombu does, but visible to readers only once complete."""
        # kombu's own name: readers order messages by it.
        filename = os.path.join(self.data_folder_out, f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg")
        writing = filename + WRITING_SUFFIX
        try:
            # Buffered, unlike kombu's: an unbuffered write that the disk cuts short (full, a size
            # limit) returns how much it wrote and raises nothing, and the truncated message was then
            # renamed into place, where a worker fails to parse it and stops. Buffered, it raises.
            with open(writing, "wb") as file:
                file.write(str_to_bytes(filesystem.dumps(payload)))
            os.replace(writing, filename)
        except OSError as exc:
            # A write cut short (disk full, a file size limit) left a part no reader takes: removed,
            # or each failed send would leave one in the queue folder for good.
            with contextlib.suppress(OSError):
                os.remove(writing)
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
