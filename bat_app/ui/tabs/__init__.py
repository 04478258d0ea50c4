"""The app's tabs, one module each, in the order the page shows them. Each has ``layout(ui)``,
which builds its components into the namespace ``ui`` (app.build_app), and ``events(ui, demo)``,
which wires them; a tab's events may use another tab's components (e.g. Start switches to the
Progress tab), so every layout runs before any events."""

from . import jobs, pools, progress, results, train, try_it

TABS = (train, progress, results, try_it, pools, jobs)
