"""Methods side by side (bat_app/compare/lanes.py): they overlap, keep the sequential run's
records, report one stream, wait for ALBAT's count, and stop together."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bat_app.compare import CompareConfig, run_compare
from bat_app.compare import previews as compare_previews
from bat_app.compare import run as compare_run
from bat_app.compare.lanes import LeadProgress, lane_count, run_in_lanes
from bat_app.compare.run import CompareResult, CompareRun
from bat_app.errors import Cancelled
from bat_app.progress import ProgressEvent


def fake_run(tmp_path: Path, events: list, cancel=None) -> CompareRun:
    components = SimpleNamespace(device=torch.device("cpu"), spec=SimpleNamespace(method_lanes=2))
    return CompareRun(CompareConfig(class_noun="star"), tmp_path, events.append, cancel, True,
                      CompareResult(tmp_path), components=components)


def test_lanes_overlap_and_the_others_wait_for_albats_count(tmp_path):
    events, done = [], []
    both_running = threading.Barrier(2, timeout=20)  # fails unless albat and none train at once
    threads_inside = []

    def select(lane, methods):
        method = methods[0]
        if method == "random":
            assert "albat" in done  # random takes as many items as ALBAT kept
        threads_inside.append(torch.get_num_threads())
        done.append(method)

    def train(lane, methods):
        if methods[0] in ("albat", "none"):
            both_running.wait()
        lane.emit(ProgressEvent("train", 1, 1, method=methods[0]))

    run = fake_run(tmp_path, events)
    before = torch.get_num_threads()
    run_in_lanes(run, ["random", "none", "albat"], 2, select, train, load_copy=lambda: run.components)
    assert sorted(done) == ["albat", "none", "random"]
    assert torch.get_num_threads() == before  # restored after the lanes
    assert set(threads_inside) == {max(1, before // 2)}
    # one stream: albat leads, so a method's event passes only while no earlier chain runs
    assert [e.method for e in events][0] == "albat"


def test_an_error_in_one_lane_stops_the_other_and_is_the_one_raised(tmp_path):
    def select(lane, methods):
        if methods[0] == "albat":
            raise RuntimeError("scoring failed")
        for _ in range(200):  # the plain lane polls its cancel like train_lora does
            if lane.cancel():
                raise Cancelled("stopped by the other lane")
            time.sleep(0.05)
        raise AssertionError("the plain lane was never told to stop")

    run = fake_run(tmp_path, [])
    with pytest.raises(RuntimeError, match="scoring failed"):
        run_in_lanes(run, ["none", "albat"], 2, select, lambda lane, m: None, load_copy=lambda: run.components)


def test_a_user_cancel_reaches_every_lane(tmp_path):
    seen = []

    def select(lane, methods):
        while not lane.cancel():
            time.sleep(0.01)
        seen.append(methods[0])
        raise Cancelled("cancelled")

    run = fake_run(tmp_path, [], cancel=lambda: True)
    with pytest.raises(Cancelled):
        run_in_lanes(run, ["none", "albat"], 2, select, lambda lane, m: None, load_copy=lambda: run.components)
    assert sorted(seen) == ["albat", "none"]


def test_the_plain_lane_lends_its_model_to_albats_selection_and_only_then_goes_on(tmp_path):
    """ALBAT's lane gets ``helper``; the plain lane runs its work on its own model copy until
    ALBAT's selection ends, and selects and trains only after that."""
    order = []

    def select(lane, methods):
        if methods[0] == "albat":
            assert lane.helper is not None
            futures = [lane.helper(lambda components, i=i: (i, components.name)) for i in range(3)]
            results = [f.result(timeout=20) for f in futures]
            assert {name for _, name in results} == {"first", "second"} - {lane.components.name}  # the other copy
            order.append("albat selected")
        else:
            assert lane.helper is None
            order.append(f"{methods[0]} selected")

    run = fake_run(tmp_path, [])
    run.components = SimpleNamespace(device=torch.device("cpu"), spec=SimpleNamespace(method_lanes=2),
                                     name="first")
    run_in_lanes(run, ["none", "albat"], 2, select, lambda lane, m: order.append(f"{m[0]} trained"),
                 load_copy=lambda: SimpleNamespace(name="second"),
                 before=lambda lane, m: None)
    assert order.index("albat selected") < order.index("none selected")


def test_in_a_two_method_job_the_plain_lane_once_done_lends_its_model_to_albats_column(tmp_path):
    plain_drawn = threading.Event()
    drawn = {}

    def draw(lane, method):
        if method == "none":
            plain_drawn.set()
            return
        deadline = time.time() + 20
        while (future := lane.helper(lambda components: components.name)) is None:  # lending starts soon
            assert time.time() < deadline, "the plain lane never lent its model for ALBAT's column"
            time.sleep(0.05)
        drawn[method] = (future.result(timeout=20), lane.components.name)

    def train(lane, methods):
        if methods[0] == "albat":
            assert plain_drawn.wait(20)  # ALBAT's training is the longer one

    run = fake_run(tmp_path, [])
    run.components = SimpleNamespace(device=torch.device("cpu"), spec=SimpleNamespace(method_lanes=2),
                                     name="first")
    run_in_lanes(run, ["none", "albat"], 2, lambda lane, m: None, train,
                 load_copy=lambda: SimpleNamespace(name="second"), draw=draw)
    lent, own = drawn["albat"]
    assert {lent, own} == {"first", "second"}


def test_work_queued_before_the_lender_serves_waits_for_it_and_a_stopped_lender_fails_it():
    from bat_app.lending import LaneHelp

    lending = LaneHelp()
    early = lending(lambda components: components + 1)
    lending.close()
    assert lending.serve(41, lambda: False) == 1 and early.result(timeout=1) == 42
    assert lending(lambda components: 0) is None  # it stopped lending: do it yourself

    lending = LaneHelp()
    queued = lending(lambda components: 1)
    lending.end()  # the lender's chain failed before serving
    with pytest.raises(Cancelled):
        queued.result(timeout=1)


def test_only_the_lead_lane_reports_until_it_ends():
    out = []
    progress = LeadProgress(out.append, ["albat", "none"])
    albat, none = progress.lane("albat"), progress.lane("none")
    none(ProgressEvent("train", 1, 10))
    albat(ProgressEvent("select", 1, 10))
    progress.finished("albat")
    none(ProgressEvent("train", 5, 10))
    assert [(e.method, e.stage, e.step) for e in out] == [("albat", "select", 1), ("none", "train", 5)]


def test_lanes_only_for_a_small_model_on_a_cpu_with_cores_for_them(tmp_path, monkeypatch):
    from bat_app.jobs import worker

    run = fake_run(tmp_path, [])
    monkeypatch.setattr(worker, "usable_cores", lambda: 2)
    assert lane_count(run, ["none", "albat"]) == 2
    assert lane_count(run, ["none"]) == 1
    monkeypatch.setenv("BAT_METHOD_LANES", "1")  # an operator's "one after another"
    assert lane_count(run, ["none", "albat"]) == 1
    monkeypatch.delenv("BAT_METHOD_LANES")
    monkeypatch.setattr(worker, "usable_cores", lambda: 1)
    assert lane_count(run, ["none", "albat"]) == 1
    monkeypatch.setattr(worker, "usable_cores", lambda: 16)
    run.components.spec.method_lanes = 1  # what the GPU presets say
    assert lane_count(run, ["none", "albat"]) == 1
    run.components = SimpleNamespace(device=torch.device("cuda"), spec=SimpleNamespace(method_lanes=2))
    assert lane_count(run, ["none", "albat"]) == 1


def test_a_run_in_lanes_leaves_the_records_a_sequential_run_reuses(tiny_model_dir, tiny_pool_dir, tiny_clip_dir,
                                                                    subject_dir, tmp_path, monkeypatch):
    cfg = CompareConfig.from_dict(dict(
        token="sks", class_noun="disc", model=str(tiny_model_dir), pool=str(tiny_pool_dir),
        clip_model=str(tiny_clip_dir), methods=["none", "random"], prompt_set="object", num_prompts=1,
        seeds=[0], train={"steps": 4, "lr": 5e-3, "checkpoint_every": 2}, selection={"m": 4}))
    monkeypatch.setattr(compare_run, "lane_count", lambda run, methods: 2)
    drawn = []  # one entry per preview column drawn: the lanes' columns are not drawn again
    real_sample = compare_previews.sample_images
    monkeypatch.setattr(compare_previews, "sample_images", lambda *a, **kw: drawn.append(1) or real_sample(*a, **kw))
    events = []
    run_compare(cfg, subject_dir, tmp_path / "cmp", progress=events.append, resume=False)
    # base, none, random: each drawn once, though resume=False (the preview stage reads back what
    # the first lane to end drew: base and its own column)
    assert len(drawn) == 3
    loras = {m: tmp_path / "cmp" / "methods" / m / "lora" / "pytorch_lora_weights.safetensors"
             for m in ("none", "random")}
    trained_at = {m: p.stat().st_mtime_ns for m, p in loras.items()}
    train_methods = [e.method for e in events if e.stage == "train"]
    assert train_methods and train_methods[0] == "none"
    # one stream: the lead (none) reports alone, then random once none has ended; never interleaved
    assert sum(a != b for a, b in zip(train_methods, train_methods[1:])) <= 1

    monkeypatch.setattr(compare_run, "lane_count", lambda run, methods: 1)
    run_compare(cfg, subject_dir, tmp_path / "cmp")
    assert {m: p.stat().st_mtime_ns for m, p in loras.items()} == trained_at  # same keys: nothing retrained


def test_the_plain_lane_trains_albats_surrogate_once(tiny_model_dir, tiny_pool_dir, tiny_clip_dir, subject_dir,
                                                     tmp_path, monkeypatch):
    """With prior preservation the plain LoRA's first steps are not ALBAT's surrogate, so the plain
    lane trains the surrogate first while ALBAT's lane computes the backbone's losses; the
    surrogate is trained once, and a resumed run whose selection is done does not train it."""
    from bat_app.albat import surrogate

    monkeypatch.setenv("BAT_CACHE", str(tmp_path / "cache"))
    cfg = CompareConfig.from_dict(dict(
        token="sks", class_noun="disc", model=str(tiny_model_dir), pool=str(tiny_pool_dir),
        clip_model=str(tiny_clip_dir), methods=["none", "albat"], prompt_set="object", num_prompts=1, seeds=[0],
        train={"steps": 4, "lr": 5e-3, "checkpoint_every": 0, "prior": True, "num_class_images": 2},
        selection={"m": 4, "k": 8, "draws": 2}))
    monkeypatch.setattr(compare_run, "lane_count", lambda run, methods: 2)
    helped, trained = [], []
    real_help, real_train = compare_run._train_albat_surrogate, surrogate.train_lora
    monkeypatch.setattr(compare_run, "_train_albat_surrogate", lambda run: helped.append(1) or real_help(run))
    monkeypatch.setattr(surrogate, "train_lora", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    result = run_compare(cfg, subject_dir, tmp_path / "cmp")
    assert helped == [1] and trained == [1]
    assert result.timings["select:albat"] > 0
    run_compare(cfg, subject_dir, tmp_path / "cmp")  # everything done: reused, nothing trained
    assert trained == [1]


def test_a_preview_column_split_over_two_model_copies_is_the_column_drawn_whole(comps, images, tmp_path):
    """``previews._draw`` with a lent copy draws half the prompts of a LoRA's column on each: the
    same pictures (each sample depends on its own prompt and seed only), one progress bar."""
    import copy

    import numpy as np

    from bat_app.lending import LaneHelp
    from bat_app.preview import sample_images
    from bat_app.train import TrainConfig, train_lora

    lora = train_lora(comps, images, TrainConfig(token="sks", class_noun="disc", steps=2, checkpoint_every=0),
                      tmp_path / "lora").out_dir
    prompts, seeds = ["a sks disc", "a blue disc", "a sks disc on green"], [0, 1]
    lending, other = LaneHelp(), copy.deepcopy(comps)
    served = []
    lender = threading.Thread(target=lambda: served.append(lending.serve(other, lambda: False)))
    lender.start()
    events = []
    try:
        split = compare_previews._draw(SimpleNamespace(components=comps, helper=lending, cancel=None), prompts,
                                       seeds, lora, events.append)
    finally:
        lending.close()
        lender.join(60)
    whole = sample_images(comps, prompts, seeds, lora)
    assert served == [1] and len(split) == 3
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for ra, rb in zip(split, whole) for a, b in zip(ra, rb))
    assert events[-1].step == events[-1].total == 6
