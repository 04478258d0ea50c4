"""Per-photo captions: the shapes examples ship one per photo (position and background, worded like
the recontext prompts); training puts the instance prompt in front and, with the "half" mix, also
trains each photo with the plain prompt."""

import json

from bat_app.images import load_user_images
from bat_app.paths import assets_dir
from bat_app.shapes import get_subject
from bat_app.shapes.personalization import context_caption, recontext_prompts
from bat_app.shapes.world import POSITION_PHRASES
from bat_app.train.data import instance_examples


def test_a_context_caption_states_position_and_background_as_the_prompts_do(tmp_path):
    subject = get_subject("outlined_circle")
    folder = assets_dir() / "subjects" / "outlined_circle"
    photo = json.loads((folder / "subject.json").read_text())["photos"][0]  # bottom, pink
    caption = context_caption(subject, photo)
    assert caption == "a photo of sks circle at the bottom on a pink background"
    # each recontext prompt asks for one of the caption's two parts, in the same words
    for prompt, wanted in recontext_prompts(subject, ["pink"]):
        part = (f"on a {wanted['background']} background" if "background" in wanted
                else POSITION_PHRASES[wanted["position"]])
        assert prompt == f"a photo of sks circle {part}"

    photos = json.loads((folder / "subject.json").read_text())["photos"][:3]  # the fewest the app takes
    for each in photos:
        (tmp_path / each["file"]).write_bytes((folder / each["file"]).read_bytes())
        txt = (folder / each["file"]).with_suffix(".txt")
        (tmp_path / txt.name).write_bytes(txt.read_bytes())  # as a job stores them
    images = load_user_images([tmp_path / each["file"] for each in photos]).images
    prompt = "a photo of sks circle"
    captioned = [context_caption(subject, each) for each in photos]
    # the shipped captions have no trigger: they continue the instance prompt
    all_captions = instance_examples(images, prompt, "sks", use_captions=True, caption_mix="all")
    assert [e.caption for e in all_captions] == captioned
    # "half": each photo also once with the plain prompt, so the bare trigger keeps the trait
    half = instance_examples(images, prompt, "sks", use_captions=True, caption_mix="half")
    assert [e.caption for e in half] == [c for pair in zip(captioned, [prompt] * 3) for c in pair]
    assert [e.name for e in half] == [e.name for e in all_captions for _ in range(2)]
    # "third": twice with the plain prompt, so the caption is a third of each photo's draws
    third = instance_examples(images, prompt, "sks", use_captions=True, caption_mix="third")
    assert [e.caption for e in third] == [c for cap in captioned for c in (cap, prompt, prompt)]
    assert [e.name for e in third] == [e.name for e in all_captions for _ in range(3)]
    # a caption with the trigger is used as written; without captions, the prompt alone
    (tmp_path / photos[0]["file"]).with_suffix(".txt").write_text("sks circle, close up")
    assert instance_examples(images, prompt, "sks", True, "all")[0].caption == "sks circle, close up"
    assert [e.caption for e in instance_examples(images, prompt, "sks")] == [prompt] * 3


def test_the_shipped_captions_are_what_the_subject_writer_writes():
    from bat_app.shapes.subjects import photo_caption

    for meta_path in sorted((assets_dir() / "subjects").glob("*/subject.json")):
        for photo in json.loads(meta_path.read_text())["photos"]:
            caption = (meta_path.parent / photo["file"]).with_suffix(".txt").read_text().strip()
            assert caption == photo_caption(photo["position"], photo["background"]), meta_path


def test_a_caption_mix_outside_the_known_ones_is_refused():
    import pytest

    from bat_app.errors import InputError
    from bat_app.train import TrainConfig

    with pytest.raises(InputError, match="`caption_mix` must be one of \\('half', 'third', 'all'\\), got 'some'"):
        TrainConfig(caption_mix="some")
