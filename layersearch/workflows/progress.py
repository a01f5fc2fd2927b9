"""Where a workflow's progress lines go: the caller's callback, or the ``layersearch`` logger.

Workflows never print. The command line passes a callback that renders each
line on its console; a notebook or a pipeline gets them as ``logging`` records
(``logging.getLogger("layersearch")``, level INFO), markup stripped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Say = Callable[[str], None]
log = logging.getLogger("layersearch")


def _to_log(text: str) -> None:
    from rich.text import Text

    log.info(Text.from_markup(text).plain)


def sink(say: Say | None) -> Say:
    """``say`` itself, or the logger when the caller passed none."""
    return say if say is not None else _to_log
