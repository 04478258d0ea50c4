"""What web users may be told, and who they are (no gradio here).

    public_message(exc)            # an error's message without server paths or operator knobs
    public_job_text(record_error)  # a failed job's error: its first line, paths reduced to names
    client_id(request, settings)   # "user:<name>", "ip:<address>" or "session:<hash>" (per-client cap)

The server log keeps the full messages; what a browser or API client sees names files by their
name only, never a folder of the server (the data dir, the jobs folder, the Gradio cache).
"""

from __future__ import annotations

import re

# An absolute POSIX path not inside a word or a URL ("step 3/40", "https://hf.co/a/b" are not).
_PATH = re.compile(r"(?<![\w.~:/\\-])/(?:[^\s/'\"`,;:()<>\[\]]+/)*([^\s/'\"`,;:()<>\[\]]*)")
# Operator-only advice in library messages: where a limit is set, CLI flags.
_OPERATOR = [
    re.compile(r"\s*\(operator setting [A-Z_]+\)"),
    re.compile(r",? or raise (?:the limit )?\(--[\w-]+\)"),
    re.compile(r",? or raise (?:max_pixels|max_file_bytes|max_images|BAT_[A-Z_]+)"),
]
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_LOG_TAIL = re.compile(r"\s*(?:Last lines of [^:\n]*|The traceback is in [^\n]*?)[:.]?\s*$")


def scrub(text: str) -> str:
    """``text`` with absolute paths reduced to their last part, operator advice and tokens removed."""
    text = _PATH.sub(lambda m: m.group(1) or "the server", text)
    for pattern in _OPERATOR:
        text = pattern.sub("", text)
    return _TOKEN.sub("hf_***", text)


def public_message(exc: BaseException) -> str:
    """The message of a library error as a web user may read it."""
    return scrub(getattr(exc, "public", None) or str(exc))


def public_job_text(text: str | None) -> str | None:
    """A job's error or message for web users: the first line (the worker appends the job log's
    tail for operators), with no server path and no pointer to a log they cannot read."""
    if not text:
        return text
    first = text.strip().splitlines()[0]
    return _LOG_TAIL.sub("", scrub(first)).strip() or "the job failed (details are in the server log)"


def client_id(request, proxy_hops: int = 0) -> str | None:
    """Who is submitting, for the per-client cap: the signed-in user (Gradio auth or Hugging Face
    login on a Space), else the IP address, else the browser session.

    ``proxy_hops``: reverse proxies in front of the app that append to X-Forwarded-For (1 on a
    Space); the client address is the entry the outermost trusted proxy added. Entries further
    left are written by the client and could be anything, so they are never used.
    """
    if request is None:
        return None
    user = getattr(request, "username", None)
    if user:
        return f"user:{user}"
    if proxy_hops > 0:
        headers = getattr(request, "headers", None) or {}
        forwarded = [h.strip() for h in (headers.get("x-forwarded-for") or "").split(",") if h.strip()]
        if len(forwarded) >= proxy_hops:
            return f"ip:{forwarded[-proxy_hops]}"
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) if client is not None else None
    if host:
        return f"ip:{host}"
    session = getattr(request, "session_hash", None)
    return f"session:{session}" if session else None
