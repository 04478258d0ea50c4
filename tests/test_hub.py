"""Pushing a LoRA to the Hub: what is uploaded, and that the token is never kept or shown."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from bat_app.export.hub import HubError, push_lora
from bat_app.errors import BatError
from bat_app.train import TrainConfig

TOKEN = "hf_secretTOKEN1234567890"


def lora_folder(root: Path) -> Path:
    folder = root / "lora"
    folder.mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    (folder / "sks_dog_kohya.safetensors").write_bytes(b"kohya")
    (folder / "loss_log.jsonl").write_text('{"step": 1, "loss": 0.1}\n')
    (folder / "checkpoints").mkdir()
    config = TrainConfig(token="sks", class_noun="dog", steps=10)
    (folder / "training_log.json").write_text(json.dumps({"config": config.to_dict(), "base_model": "shapes",
                                                          "method": "albat", "losses": [0.1]}))
    return folder


def samples(root: Path) -> list[Path]:
    out = []
    for i in range(2):
        out.append(root / f"p00_s{i}.png")
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(out[-1])
    return out


class FakeApi:
    """Records the calls; keeps a copy of the uploaded folder."""

    def __init__(self, error: Exception | None = None):
        self.error, self.calls, self.uploaded = error, [], {}

    def whoami(self, token=None):
        self.calls.append(("whoami", token))
        if self.error:
            raise self.error
        return {"name": "alice"}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        self.calls.append(("upload_folder", repo_id, kw))
        self.uploaded = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*")
                         if p.is_file()}


def test_push_uploads_lora_card_and_samples(tmp_path, caplog):
    api = FakeApi()
    with caplog.at_level(logging.DEBUG):
        url = push_lora(lora_folder(tmp_path), "sks-dog", TOKEN, samples=samples(tmp_path), api=api)
    assert url == "https://huggingface.co/alice/sks-dog"
    assert api.calls[1] == ("create_repo", "alice/sks-dog",
                            {"token": TOKEN, "private": True, "repo_type": "model", "exist_ok": True})
    assert sorted(api.uploaded) == ["README.md", "pytorch_lora_weights.safetensors", "samples/00_p00_s0.png",
                                    "samples/01_p00_s1.png", "sks_dog_kohya.safetensors", "training_log.json"]
    card = api.uploaded["README.md"].decode()
    assert "![sample](samples/00_p00_s0.png)" in card and "method: `albat`" in card and "sks dog" in card
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert not any(TOKEN.encode() in data for data in api.uploaded.values())


def test_offline_is_a_clear_error(tmp_path):
    with pytest.raises(HubError, match="offline") as info:
        push_lora(lora_folder(tmp_path), "alice/sks-dog", TOKEN)  # HF_HUB_OFFLINE=1 in the tests
    assert TOKEN not in str(info.value) and isinstance(info.value, BatError)


def test_wrong_token_and_bad_names(tmp_path):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    folder = lora_folder(tmp_path)
    request = httpx2.Request("GET", "https://huggingface.co/api/whoami-v2")
    rejected = HfHubHTTPError(f"401 Unauthorized for token {TOKEN}", response=httpx2.Response(401, request=request))
    with pytest.raises(HubError, match="rejected the token") as info:
        push_lora(folder, "alice/x", TOKEN, api=FakeApi(rejected))
    assert TOKEN not in str(info.value) and info.value.__cause__ is None
    with pytest.raises(HubError, match="Cannot reach"):
        push_lora(folder, "alice/x", TOKEN, api=FakeApi(ConnectionError(f"refused {TOKEN}")))
    with pytest.raises(HubError, match="not a valid Hub repository name"):
        push_lora(folder, "alice/bad name!", TOKEN, api=FakeApi())
    with pytest.raises(HubError, match="No Hugging Face token"):
        push_lora(folder, "alice/x", "  ", api=FakeApi())
    with pytest.raises(HubError, match="no pytorch_lora_weights"):
        push_lora(tmp_path, "alice/x", TOKEN, api=FakeApi())


def test_token_is_not_written_anywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    push_lora(lora_folder(tmp_path / "a"), "alice/x", TOKEN, api=FakeApi())
    written = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert written == []
