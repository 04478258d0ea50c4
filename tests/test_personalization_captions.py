"""Context captions for the shapes subjects' photos (shapes_personalize.py --context-captions):
worded like the recontext prompts, and trained on as written (they carry the trigger)."""

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
        (tmp_path / each["file"]).with_suffix(".txt").write_text(context_caption(subject, each))
    images = load_user_images([tmp_path / each["file"] for each in photos]).images
    examples = instance_examples(images, "a photo of sks circle", "sks", use_captions=True)
    # they have the trigger: used as written, without the instance prompt in front
    assert [e.caption for e in examples] == [context_caption(subject, each) for each in photos]
