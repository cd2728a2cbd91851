"""Every file the Celery integration keeps in the multiprocess directory, and nothing else.

Two kinds, both empty files whose existence is the message:

* the contrib marker (``celery-contrib-spans``): a pool child's runs have
  opentelemetry-instrumentation-celery spans (it may be enabled in the children only, where the
  main process cannot see it);
* span notes (``celery-span-<digest of the task id>``): a pool child stopped mid-run exported
  that run's contrib span, so the main process emits none of its own.

The main process removes both kinds when it installs (a configured directory outlives the
worker). Errors are the caller's to guard: every function may raise ``OSError``.
"""

from __future__ import annotations

import hashlib
import os

CONTRIB_MARKER = "celery-contrib-spans"
SPAN_NOTE = "celery-span-"


def remove_leftovers(directory: str) -> None:
    """Remove the marker and the notes a previous worker left in ``directory``."""
    for name in os.listdir(directory):
        if name == CONTRIB_MARKER or name.startswith(SPAN_NOTE):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def leave_contrib_marker(directory: str) -> None:
    """Say that this worker's runs have contrib spans."""
    _touch(os.path.join(directory, CONTRIB_MARKER))


def contrib_marker_left(directory: str) -> bool:
    """Whether a pool child left the contrib marker."""
    return os.path.exists(os.path.join(directory, CONTRIB_MARKER))


def leave_span_note(directory: str, task_id: str) -> None:
    """Say that the contrib span of ``task_id``'s run was exported."""
    _touch(_note_path(directory, task_id))


def span_note_left(directory: str, task_id: str) -> bool:
    """Whether a note for ``task_id`` was left."""
    return os.path.exists(_note_path(directory, task_id))


def remove_span_note(directory: str, task_id: str) -> None:
    """Remove the note for ``task_id`` (read once)."""
    try:
        os.unlink(_note_path(directory, task_id))
    except FileNotFoundError:
        pass


def _note_path(directory: str, task_id: str) -> str:
    digest = hashlib.sha1(task_id.encode("utf-8", "replace")).hexdigest()[:24]
    return os.path.join(directory, SPAN_NOTE + digest)


def _touch(path: str) -> None:
    with open(path, "a"):
        pass
