"""Prior preservation with context phrases: class images drawn from the class prompt with each
phrase of ``TrainConfig.prior_contexts`` in turn, cached and trained on with their own prompts."""

from __future__ import annotations

import pytest

from bat_app.errors import InputError, LimitError
from bat_app.limits import MAX_PRIOR_CONTEXTS, Limits, check_train
from bat_app.train import TrainConfig
from bat_app.train import prior as prior_module
from bat_app.train.loop import prepare_groups

CONTEXTS = ["", "on the left", "on a red background"]


def test_the_class_prompts_take_the_contexts_in_turn():
    config = TrainConfig(class_noun="moon", prior_contexts=CONTEXTS)
    assert config.class_prompt_cycle == ["a photo of moon", "a photo of moon on the left",
                                         "a photo of moon on a red background"]
    assert TrainConfig(class_noun="moon").class_prompt_cycle == ["a photo of moon"]
    assert prior_module.class_prompts(config.class_prompt_cycle, 4)[3] == "a photo of moon"
    assert TrainConfig(class_noun="moon", class_prompt="a moon", prior_contexts=["at the top"]
                       ).class_prompt_cycle == ["a moon at the top"]


@pytest.mark.parametrize("bad", [[], "on the left", [3], ["ok", None]])
def test_prior_contexts_that_are_not_a_list_of_phrases_are_refused(bad):
    with pytest.raises(InputError, match="prior_contexts"):
        TrainConfig(class_noun="moon", prior_contexts=bad)


def test_prior_contexts_are_bounded_like_prompts():
    limits = Limits()
    with pytest.raises(LimitError, match=r"prior_contexts entry is 301 characters long; the limit is 300"):
        check_train(TrainConfig(class_noun="moon", prior_contexts=["x" * 301]), limits)
    with pytest.raises(LimitError, match=rf"lists {MAX_PRIOR_CONTEXTS + 1} phrases; the limit is {MAX_PRIOR_CONTEXTS}"):
        check_train(TrainConfig(class_noun="moon", prior_contexts=["a"] * (MAX_PRIOR_CONTEXTS + 1)), limits)
    check_train(TrainConfig(class_noun="moon", prior_contexts=CONTEXTS), limits)  # within bounds


def test_contexts_hash_only_when_set():
    plain = TrainConfig(class_noun="moon")
    assert TrainConfig(class_noun="moon", prior_contexts=None).fingerprint() == plain.fingerprint()
    assert TrainConfig(class_noun="moon", prior_contexts=CONTEXTS).fingerprint() != plain.fingerprint()


def _recording_pipeline(monkeypatch) -> list[str]:
    made = []
    real = prior_module.build_pipeline

    def recording(components):
        pipe = real(components)

        def call(prompts, **kw):
            made.extend(prompts)
            return pipe(prompts, **kw)
        return call

    monkeypatch.setattr(prior_module, "build_pipeline", recording)
    return made


def test_a_cycle_of_class_prompts_is_drawn_in_turn_cached_and_topped_up(comps, tmp_path, monkeypatch):
    made = _recording_pipeline(monkeypatch)
    cycle = TrainConfig(class_noun="disc", prior_contexts=CONTEXTS).class_prompt_cycle
    first = prior_module.ensure_class_images(comps, cycle, 2, 32, tmp_path)
    assert made == cycle[:2]
    more = prior_module.ensure_class_images(comps, cycle, 4, 32, tmp_path)
    assert more[:2] == first and made == cycle + cycle[:1]  # only images 2 and 3, each with its own prompt
    assert (first[0].parent / "prompt.txt").read_text().splitlines() == cycle
    # the bare prompt alone keys as it always did (class images drawn before contexts existed are
    # found), and apart from the cycle
    bare = prior_module.class_image_dir(comps, "a photo of disc", 32, tmp_path)
    assert bare == prior_module.class_image_dir(comps, ["a photo of disc"], 32, tmp_path)
    assert bare != first[0].parent


def test_training_pairs_each_class_image_with_the_prompt_it_was_drawn_from(comps, images, tmp_path, monkeypatch):
    made = _recording_pipeline(monkeypatch)
    config = TrainConfig(class_noun="disc", steps=2, checkpoint_every=0, prior=True, num_class_images=4,
                         prior_contexts=CONTEXTS)
    groups = prepare_groups(comps, images, config, None, 32, tmp_path, lambda event: None)
    prior = next(g for g in groups if g.role == "prior")
    assert [e.caption for e in prior.examples] == made == prior_module.class_prompts(config.class_prompt_cycle, 4)
