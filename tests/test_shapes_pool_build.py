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


def test_the_app_builds_the_pool_at_start_and_a_job_waits_for_it(tmp_path, monkeypatch):
    """serve() starts the build; a job asking meanwhile waits on the lock, says so, and gets the
    same folder; the pool is built once."""
    import threading

    from bat_app.compare import pools
    from bat_app.jobs import JobSettings
    from bat_app.ui.serve import prepare_shapes_pool
    from bat_app.ui.settings import AppSettings

    builds, started, release = [], threading.Event(), threading.Event()
    real = pools._build_shapes_pool

    def slow_build(out, n, progress):
        builds.append(out)
        started.set()
        release.wait(30)
        real(out, n, progress)

    monkeypatch.setattr(pools, "_build_shapes_pool", slow_build)
    monkeypatch.setattr(pools, "SHAPES_POOL_SIZE", 120)
    settings = AppSettings.from_env(jobs=JobSettings.from_env(data_dir=tmp_path))
    thread = prepare_shapes_pool(settings)
    assert started.wait(30)
    events, got = [], []
    job = threading.Thread(target=lambda: got.append(pools.ensure_shapes_pool(progress=events.append, root=tmp_path)))
    job.start()
    job.join(0.5)
    assert job.is_alive() and [e.message for e in events] == [
        "waiting for the shapes pool, which another process is building"]
    release.set()
    thread.join(60), job.join(60)
    assert got == [tmp_path / "pools" / "shapes-120"] and (got[0] / "manifest.json").is_file()
    assert builds == [got[0]]


def test_a_pool_embedded_by_an_earlier_shapes_clip_is_rebuilt(tmp_path):
    import json

    folder = ensure_shapes_pool(40, root=tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_id"] = "shapes-clip"  # what the first shapes CLIP's pools recorded
    (folder / "manifest.json").write_text(json.dumps(manifest))
    events = []
    assert ensure_shapes_pool(40, progress=events.append, root=tmp_path) == folder
    assert events, "the stale pool was used as it was"
    from bat_app.pool import Pool
    from bat_app.pool.embedder import SHAPES_MODEL_ID

    assert Pool.open(folder).model_id == SHAPES_MODEL_ID
