"""The one-line form of an exception that a file reader reports inside its own error."""

from __future__ import annotations


def one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: message`` of ``e`` on one line, the message cut at ``limit`` characters (a damaged
    file's bytes may end up in an exception's message)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"
