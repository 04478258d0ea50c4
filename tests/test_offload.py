"""Frozen text encoders leave the GPU while the denoiser trains (bat_app/train/offload.py), and
the app's embedded worker leaves a CPU core to the web server."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bat_app.train.offload import idle_text_encoders_offloaded


def _recording(comps, monkeypatch) -> list:
    moves = []
    for i, encoder in enumerate(comps.text_encoders):
        monkeypatch.setattr(encoder, "to", lambda where, i=i: moves.append((i, str(where))))
    return moves


def test_idle_encoders_go_to_the_cpu_and_come_back(comps, monkeypatch):
    on_gpu = dataclasses.replace(comps, device=torch.device("cuda"))
    moves = _recording(on_gpu, monkeypatch)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: moves.append("empty_cache"))
    with idle_text_encoders_offloaded(on_gpu, needed=False) as moved:
        assert moves == [(0, "cpu"), "empty_cache"] and len(moved) == 1
    assert moves[-1] == (0, "cuda")


def test_they_come_back_when_training_fails(comps, monkeypatch):
    on_gpu = dataclasses.replace(comps, device=torch.device("cuda"))
    moves = _recording(on_gpu, monkeypatch)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with pytest.raises(RuntimeError), idle_text_encoders_offloaded(on_gpu, needed=False):
        raise RuntimeError("out of memory")
    assert moves == [(0, "cpu"), (0, "cuda")]


def test_encoders_the_loop_needs_stay(comps, monkeypatch):
    """Pivotal vectors or a text-encoder LoRA: the loop encodes prompts every step."""
    moves = _recording(dataclasses.replace(comps, device=torch.device("cuda")), monkeypatch)
    with idle_text_encoders_offloaded(dataclasses.replace(comps, device=torch.device("cuda")), needed=True) as moved:
        assert moved == []
    with idle_text_encoders_offloaded(comps, needed=False) as moved:  # a CPU run: nowhere to go
        assert moved == []
    assert moves == []


def test_training_offloads_only_without_live_prompts(comps, images, tmp_path, monkeypatch):
    """train_lora asks for the offload with needed=False when conditioning is cached, True with
    pivotal tuning (the trigger's vectors change every step)."""
    from bat_app.train import TrainConfig, loop, train_lora

    asked = []
    real = loop.idle_text_encoders_offloaded
    monkeypatch.setattr(loop, "idle_text_encoders_offloaded",
                        lambda components, needed: asked.append(needed) or real(components, needed))
    for pivotal in (False, True):
        config = TrainConfig(token="sks", class_noun="disc", steps=1, checkpoint_every=0, pivotal=pivotal)
        train_lora(comps, images, config, tmp_path / str(pivotal), export=False, cache_root=tmp_path)
    assert asked == [False, True]


def test_the_apps_worker_leaves_a_core_to_the_web_server(monkeypatch, tmp_path):
    from bat_app.jobs import JobSettings
    from bat_app.jobs import worker as worker_module
    from bat_app.jobs.worker import Worker

    monkeypatch.delenv("BAT_TORCH_THREADS", raising=False)
    monkeypatch.setattr(worker_module, "usable_cores", lambda: 2)
    settings = JobSettings.from_env(data_dir=tmp_path)
    assert Worker(settings, spare_cores=1).child_env()["BAT_TORCH_THREADS"] == "1"
    assert "BAT_TORCH_THREADS" not in Worker(settings).child_env()  # a separate worker uses every core
    monkeypatch.setattr(worker_module, "usable_cores", lambda: 1)
    assert Worker(settings, spare_cores=1).child_env()["BAT_TORCH_THREADS"] == "1"  # never 0
    monkeypatch.setenv("BAT_TORCH_THREADS", "2")
    assert Worker(settings, spare_cores=1).child_env()["BAT_TORCH_THREADS"] == "2"  # the operator's wins
