"""The tail average: the exact mean of a training's last LoRAs, in the trainer and from kept folders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bat_app.errors import Cancelled, InputError
from bat_app.export import DIFFUSERS_FILE
from bat_app.train import TrainConfig, train_lora
from bat_app.train.checkpoint import saved_steps
from bat_app.train.tail_average import average_lora, tail_points


def quick(**kw) -> TrainConfig:
    base = dict(token="sks", class_noun="disc", steps=6, checkpoint_every=0, lr=1e-2, seed=0,
                pivotal=True, embedding_lr=5e-2)
    return TrainConfig(**(base | kw))


def deltas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """module -> up @ down: the weight change a diffusers LoRA file makes (its scale aside)."""
    return {k.replace(".lora.down.weight", ""): state[k.replace(".down.", ".up.")] @ state[k]
            for k in state if k.endswith(".lora.down.weight")}


def test_the_mean_of_loras_is_one_lora_of_n_times_the_rank():
    torch.manual_seed(0)
    states = [{"m.lora_A.weight": torch.randn(4, 10), "m.lora_B.weight": torch.randn(7, 4)} for _ in range(3)]
    mean = average_lora(states)
    assert mean["m.lora_A.weight"].shape == (12, 10) and mean["m.lora_B.weight"].shape == (7, 12)
    expected = sum(s["m.lora_B.weight"] @ s["m.lora_A.weight"] for s in states) / 3
    torch.testing.assert_close(mean["m.lora_B.weight"] @ mean["m.lora_A.weight"], expected)
    with pytest.raises(ValueError, match="not a LoRA down/up weight"):
        average_lora([{"m.bias": torch.ones(1)}, {"m.bias": torch.ones(1)}])
    assert tail_points(300, 3) == [200, 250, 300] and tail_points(6, 3) == [4, 5, 6]


def test_the_trainer_exports_the_mean_of_the_last_steps(comps, images, tmp_path):
    plain = train_lora(comps, images, quick(save_every=1), tmp_path / "plain")
    averaged = train_lora(comps, images, quick(tail_average=3), tmp_path / "averaged")
    assert averaged.losses == plain.losses  # the same training; only the export differs
    steps = saved_steps(tmp_path / "plain")
    files = [load_file(steps[4] / DIFFUSERS_FILE), load_file(steps[5] / DIFFUSERS_FILE),
             load_file(plain.files["diffusers"])]
    got = deltas(load_file(averaged.files["diffusers"]))
    want = {k: sum(deltas(f)[k] for f in files) / 3 for k in got}
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got[k], deltas(files[-1])[k])  # not simply the last step
    vectors = [load_file(steps[4] / "sks.safetensors"), load_file(steps[5] / "sks.safetensors"),
               load_file(plain.files["embeddings"])]
    torch.testing.assert_close(load_file(averaged.files["embeddings"])["emb_params"],
                               torch.stack([v["emb_params"] for v in vectors]).mean(0))
    log = (tmp_path / "averaged" / "training_log.json").read_text()
    assert '"tail_average_steps": [\n  4,\n  5,\n  6\n ]' in log and '"rank": 12' in log  # rank 4 x 3


def test_a_resumed_training_averages_the_same_steps(comps, images, tmp_path):
    config = quick(tail_average=3, checkpoint_every=1)
    straight = train_lora(comps, images, config, tmp_path / "straight", export=False)
    polls = {"n": 0}

    def cancel_before_step_6():  # steps 4 and 5 are kept before the stop
        polls["n"] += 1
        return polls["n"] == 6

    with pytest.raises(Cancelled):
        train_lora(comps, images, config, tmp_path / "resumed", cancel=cancel_before_step_6, export=False)
    resumed = train_lora(comps, images, config, tmp_path / "resumed", resume=True, export=False)
    assert resumed.resumed_from == 5
    for key, value in straight.unet_lora.items():
        torch.testing.assert_close(resumed.unet_lora[key], value, rtol=1e-5, atol=1e-6)


def test_tail_average_must_be_a_positive_count():
    with pytest.raises(InputError, match="`tail_average` must be a positive integer"):
        TrainConfig(tail_average=0)
