"""Self-generated pools: captions from a prompt set kept as data, samples cached and resumed,
a pool built from them. The backbone is a stand-in sampler (a colour per caption) except in
the CLI test, which samples the tiny SD model for 2 steps."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from bat_app.pool import Pool, PoolError
from bat_app.pool.generate import cache_folder, generate_pool, load_prompt_set, pool_captions
from test_pool_cli import run
from test_pool_safety import ColourEmbedder


class Sampler:
    """Counts what it draws; the image's colour comes from the seed."""

    def __init__(self, stop_after: int | None = None):
        self.drawn, self.stop_after = [], stop_after

    def __call__(self, captions, seeds):
        if self.stop_after is not None and len(self.drawn) >= self.stop_after:
            raise KeyboardInterrupt("killed")
        self.drawn += seeds
        return [Image.new("RGB", (16, 16), ((40 * s) % 255, 100, 200)) for s in seeds]


def test_captions_are_varied_stable_and_name_the_class():
    caps = pool_captions("corgi", 50, seed=0)
    assert len(set(caps)) == 50 and all("corgi" in c for c in caps)
    assert pool_captions("corgi", 10, seed=0) == caps[:10]  # caption i does not depend on n
    assert pool_captions("corgi", 10, seed=1) != caps[:10]
    total = 2 * 12 * 8 * 6  # the shipped set: templates x contexts x styles x viewpoints
    cycled = pool_captions("dog", total + 3)
    assert cycled[total:] == cycled[:3]
    with pytest.raises(PoolError, match="needs a class noun"):
        pool_captions(" ", 3)


def test_bad_prompt_sets_say_what_is_wrong(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"templates": ["a {noun}"], "contexts": [], "styles": ["x"]}))
    with pytest.raises(PoolError, match="contexts, viewpoints missing or wrong"):
        load_prompt_set(bad)
    bad.write_text(json.dumps({"templates": ["a photo"], "contexts": ["c"], "styles": ["s"], "viewpoints": ["v"]}))
    with pytest.raises(PoolError, match="Template 'a photo' .* has no \\{noun\\}"):
        load_prompt_set(bad)
    bad.write_text("{")
    with pytest.raises(PoolError, match="not readable JSON"):
        load_prompt_set(bad)


def test_generation_resumes_caches_and_tops_up(tmp_path):
    emb, cache = ColourEmbedder(), tmp_path / "cache"
    killed = Sampler(stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        generate_pool(killed, "model-a", "dog", 10, tmp_path / "p10", emb, batch_size=2, cache_root=cache)
    steps = []
    again = Sampler()
    pool = generate_pool(again, "model-a", "dog", 10, tmp_path / "p10", emb, batch_size=2, cache_root=cache,
                         progress=lambda done, total: steps.append((done, total)))
    assert again.drawn == [4, 5, 6, 7, 8, 9] and steps[0] == (4, 10) and steps[-1] == (10, 10)
    assert len(pool) == 10 and pool.item(3).caption == pool_captions("dog", 10)[3]
    assert pool.manifest["generated"]["drawn_this_run"] == 6 and pool.manifest["generated"]["n"] == 10
    reuse = Sampler()  # a smaller pool of the same model + prompts: all cached
    assert len(generate_pool(reuse, "model-a", "dog", 6, tmp_path / "p6", emb, cache_root=cache)) == 6
    assert reuse.drawn == []
    more = Sampler()
    assert len(generate_pool(more, "model-a", "dog", 12, tmp_path / "p12", emb, cache_root=cache)) == 12
    assert more.drawn == [10, 11]
    other = Sampler()  # another model never shares the cache
    generate_pool(other, "model-b", "dog", 2, tmp_path / "pb", emb, cache_root=cache)
    assert other.drawn == [0, 1]
    prompts = load_prompt_set()
    assert cache_folder(cache, "model-a", "dog", prompts, 0) != cache_folder(cache, "model-b", "dog", prompts, 0)


def test_cli_generates_with_the_tiny_backbone(tiny_model_dir, tiny_clip_dir, tmp_path, capsys):
    assert run("pool", "generate", "--model", tiny_model_dir, "--class-noun", "disc", "--n", "2",
               "--steps", "2", "--clip-model", tiny_clip_dir, "--out", tmp_path / "pool",
               "--device", "cpu") == 0
    pool = Pool.open(tmp_path / "pool")
    assert len(pool) == 2 and "disc" in pool.item(0).caption
    assert pool.manifest["generated"]["class_noun"] == "disc" and pool.load_image(1).size[0] > 0
    assert "size:     2 items" in capsys.readouterr().out
