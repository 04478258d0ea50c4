"""Keep an idle app page idle: slow down a loop Gradio's page leaves running after it loads.

Gradio 6.31's page shows a StatusTracker while it loads. That tracker starts an elapsed-time
``requestAnimationFrame`` loop when its status turns "pending", and only stops it when the status
turns to something else; but the page unmounts the tracker once loaded, so the loop never stops.
It redraws at 60 frames a second for as long as the tab is open: measured in headless Chromium on
this 2-core machine, 8.8% of a core on an idle page (renderer 6.6%, GPU process 2.1%), taken from
the job running beside it when the browser and the server share the machine. The same loop serves
every component's elapsed-time counter while an event is pending.

The fix, until Gradio stops the loop itself: a script placed before Gradio's own scripts wraps
``requestAnimationFrame`` so that calls made directly from the status tracker's module run four
times a second (a 0.1 s counter then moves in 0.25 s steps); every other caller is untouched.
Measured the same way: 1.5% of a core (renderer 0.8%, GPU process 0.5%). It has to be in the
HTML: Gradio's ``head`` option is applied after its modules have captured the browser's function.
"""

from __future__ import annotations

# Only the frame right below the wrapper is looked at: Svelte's own loop or a transition started
# from the tracker keep their frame rate.
SCRIPT = (
    "<script>/* BAT Studio: ui/idle_page.py */(() => {"
    "const raf = window.requestAnimationFrame.bind(window);"
    "window.requestAnimationFrame = function (callback) {"
    "const caller = (new Error().stack || '').split('\\n')[2] || '';"
    "if (caller.includes('/statustracker-')) return setTimeout(() => raf(callback), 250);"
    "return raf(callback);};})();</script>"
)


class SlowStatusTrackerLoop:
    """ASGI middleware: puts ``SCRIPT`` before the first ``<script`` of every HTML page served."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        start, body = None, []

        async def patched_send(message):
            nonlocal start
            if message["type"] == "http.response.start" and _is_html(message):
                start = message  # held until the whole page is here: its length changes
                return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = _with_script(b"".join(body))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, patched_send)


def _is_html(start: dict) -> bool:
    """An uncompressed HTML page (this middleware runs inside Gradio's compression)."""
    headers = {k.lower(): v for k, v in start["headers"]}
    return headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers


def _with_script(page: bytes) -> bytes:
    at = page.find(b"<script")
    return page if at < 0 else page[:at] + SCRIPT.encode() + page[at:]
