"""Every file the Celery integration keeps in the multiprocess directory, and nothing else.

Two kinds, both empty files whose existence is the message:

* the contrib marker (``celery-contrib-spans``): a pool child's runs have
  opentelemetry-instrumentation-celery spans (it may be enabled in the children only, where the
  main process cannot see it);
* span notes (``celery-span-<digest of the task id>``): a pool child stopped mid-run exported
  that run's contrib span, so the main process emits none of its own.

The main process removes both kinds when it installs (a configured directory outlives the
worker). Every access goes through the checked helpers of the share
(:class:`otel_jobs.core.multiprocess.ProcessShare`): a file counts only if it is a regular file
of this user, symlinks are never followed, new files are created 0600. Errors are the caller's
to guard: every function may raise ``OSError``.
"""

from __future__ import annotations

import hashlib

from ...core.multiprocess import ProcessShare

CONTRIB_MARKER = "celery-contrib-spans"
SPAN_NOTE = "celery-span-"


def remove_leftovers(share: ProcessShare) -> None:
    """Remove the marker and the notes a previous worker left in the share's directory."""
    for name in share.names():
        if name == CONTRIB_MARKER or name.startswith(SPAN_NOTE):
            share.remove(name)


def leave_contrib_marker(share: ProcessShare) -> None:
    """Say that this worker's runs have contrib spans."""
    share.touch(CONTRIB_MARKER)


def contrib_marker_left(share: ProcessShare) -> bool:
    """Whether a pool child left the contrib marker."""
    return share.exists(CONTRIB_MARKER)


def leave_span_note(share: ProcessShare, task_id: str) -> None:
    """Say that the contrib span of ``task_id``'s run was exported."""
    share.touch(_note_name(task_id))


def span_note_left(share: ProcessShare, task_id: str) -> bool:
    """Whether a note for ``task_id`` was left."""
    return share.exists(_note_name(task_id))


def remove_span_note(share: ProcessShare, task_id: str) -> None:
    """Remove the note for ``task_id`` (read once)."""
    share.remove(_note_name(task_id))


def _note_name(task_id: str) -> str:
    digest = hashlib.sha1(task_id.encode("utf-8", "replace")).hexdigest()[:24]
    return SPAN_NOTE + digest
