"""The first job on the shapes backbone builds the shapes pool and says so, with counts."""

from __future__ import annotations

from bat_app.compare.pools import ensure_shapes_pool


def test_building_the_shapes_pool_reports_rendering_and_indexing():
    events = []
    folder = ensure_shapes_pool(300, progress=events.append)
    assert (folder / "manifest.json").is_file()
    assert {e.stage for e in events} == {"pool"}
    messages = [e.message for e in events]
    assert any(m.startswith("building the shapes pool: rendering") for m in messages)
    assert any(m.startswith("building the shapes pool: indexing") for m in messages)
    steps = [e.step for e in events]
    assert steps == sorted(steps) and events[-1].total == 600 and steps[-1] > 300
    events.clear()
    assert ensure_shapes_pool(300, progress=events.append) == folder and not events  # built once
