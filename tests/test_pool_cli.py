"""``pool build`` / ``pool info`` through bat_app.pool.cli.register on a local argparse harness
(the same call bat_app.cli makes for every module in COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bat_app.errors import BatError
from bat_app.pool import Pool, PoolError
from bat_app.pool import cli as pool_cli
from test_pool import CORRUPT, make_folder, save_open_clip_dir


def run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="bat-app")
    pool_cli.register(parser.add_subparsers())
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_build_then_info(tmp_path, capsys):
    model = save_open_clip_dir(tmp_path / "tiny-clip")
    src = make_folder(tmp_path / "src", n=5)
    assert run("pool", "build", src, "--out", tmp_path / "pool", "--clip-model", model,
               "--batch-size", "2", "--device", "cpu") == 0
    out, err = capsys.readouterr()
    assert "building a pool from folder source" in err and "embed" in err  # the tqdm bar
    assert "size:     5 items" in out
    assert run("pool", "info", tmp_path / "pool") == 0
    info = capsys.readouterr().out
    pool = Pool.open(tmp_path / "pool")
    for line in ("size:     5 items", f"model:    {pool.model_id} (dim 32)", "index:    flat (exact)",
                 "images:   stored", "skipped:  2 (1 cannot decode image, 1 no caption)"):
        assert line in info
    assert pool.model_id.startswith("open_clip:local-dir:tiny-clip@")
    assert run("pool", "info", tmp_path / "pool", "--json") == 0
    assert json.loads(capsys.readouterr().out)["size"] == 5


def test_clip_retrieval_needs_its_model_named(tmp_path, monkeypatch):
    from test_pool import FakeTable, make_clip_retrieval, write_table
    from bat_app.pool.sources import _parquet_io

    monkeypatch.setattr(_parquet_io, "open_parquet", FakeTable)
    root = make_clip_retrieval(tmp_path / "cr", lambda p, c, k: write_table(p, c, k, real=False),
                               [np.ones((2, 512), np.float32)], [{"caption": ["a", "b"]}])
    with pytest.raises(PoolError, match="does not record its model.*--clip-model ViT-B-32 --clip-pretrained openai"):
        run("pool", "build", root, "--out", tmp_path / "pool")
    with pytest.raises(PoolError, match="have 512 dimensions but ViT-L-14 makes 768"):
        run("pool", "build", root, "--out", tmp_path / "pool", "--clip-model", "ViT-L-14",
            "--clip-pretrained", "openai")
    assert run("pool", "build", root, "--out", tmp_path / "pool", "--clip-model", "ViT-B-32",
               "--clip-pretrained", "openai") == 0  # no weights needed: nothing is embedded
    assert Pool.open(tmp_path / "pool").model_id == "open_clip:ViT-B-32/openai"


def test_errors_are_bat_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(CORRUPT)
    with pytest.raises(BatError, match="not a pool"):
        run("pool", "info", tmp_path)
    with pytest.raises(BatError, match="neither a .tar shard nor a .parquet"):
        run("pool", "build", tmp_path / "x.png", "--out", tmp_path / "pool")
