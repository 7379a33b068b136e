"""ifa.recipe: the typed training recipe. Every shipped recipe (configs/ and configs/study/) loads into it and back
to the same dict; unknown keys and bad values are refused naming what is valid; overrides set one key."""

from __future__ import annotations

import pytest
import yaml
from training_support import REPO

from ifa.models.config import ConfigError
from ifa.recipe import DEFAULTS, SECTIONS, DataRecipe, OptimRecipe, Recipe, as_recipe, load_config, load_recipe

RECIPES = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "study").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.relative_to(REPO / "configs").as_posix() for p in RECIPES])
def test_every_recipe_loads_typed_and_round_trips(path):
    recipe = load_recipe(path)
    written = yaml.safe_load(path.read_text())
    assert recipe.name == written["name"] and recipe.train.out_dir == written.get("train", {}).get(
        "out_dir", f"runs/{written['name']}")
    for key, section in SECTIONS.items():
        assert isinstance(getattr(recipe, key), section)
        for sub, value in written.get(key, {}).items():
            assert getattr(getattr(recipe, key), sub) == value, f"{key}.{sub}"
    assert recipe.model == written.get("model", {}) and recipe.init_from == written.get("init_from")
    as_dict = recipe.to_dict()
    assert list(as_dict) == list(DEFAULTS) and all(list(as_dict[k]) == list(DEFAULTS[k]) for k in SECTIONS)
    assert Recipe.from_dict(as_dict) == recipe and load_config(path) == as_dict
    assert yaml.safe_load(yaml.safe_dump(as_dict, sort_keys=False)) == as_dict  # plain YAML, as config.yaml


def test_defaults_are_the_empty_recipe():
    assert Recipe().to_dict() == DEFAULTS
    assert load_config(None) == {**DEFAULTS, "train": {**DEFAULTS["train"], "out_dir": "runs/run"}}
    assert DEFAULTS["init_from"] is None and DEFAULTS["train"]["out_dir"] is None


@pytest.mark.parametrize("data, message", [
    ({"colour": 1}, r"unknown config key 'colour'; valid here: \['data', 'eval', 'init_from', 'loss', 'model'"),
    ({"loss": {"ohm": True}}, r"unknown config key 'loss.ohm'; valid here: \['aux_weight', 'grid_weight', "),
    ({"model": {"arch": "ifa"}}, r"unknown config key 'model.arch'; valid here: \[.*'architecture', 'aux_channels'"),
    ({"eval": [1]}, r"config key 'eval' must be a mapping"),
    ({"data": {"dataset": "camvd"}}, r"unknown data.dataset 'camvd'; valid: camvid, cityscapes, ade20k"),
    ({"data": {"in_memory": "yes"}}, r"data.in_memory must be auto, true or false, got 'yes'"),
    ({"data": {"crop_size": [256]}}, r"data.crop_size must be two positive integers, got \[256\]"),
    ({"data": {"scale_range": [2.0, 0.5]}}, r"data.scale_range must be \(low, high\) with low <= high"),
    ({"data": {"crop_jitter": 300}}, r"data.crop_jitter must be an integer in \[0, 256\), got 300"),
    ({"data": {"flip": "yes"}}, r"data.flip must be true or false, got 'yes'"),
    ({"optim": {"name": "adam"}}, r"unknown optimizer 'adam'; valid: sgd, adamw"),
    ({"optim": {"lr": "6e-4"}}, r"optim.lr must be a number > 0, got '6e-4'"),  # YAML reads 6e-4 as a string
    ({"optim": {"ifa_head_lr_mult": 0}}, r"optim.ifa_head_lr_mult must be a number > 0 or null, got 0"),
    ({"schedule": {"iters": 0}}, r"schedule.iters must be an integer >= 1, got 0"),
    ({"schedule": {"warmup_iters": 1.5}}, r"schedule.warmup_iters must be an integer >= 0, got 1.5"),
    ({"loss": {"ohem_thresh": 1.5}}, r"loss.ohem_thresh must be a number >= 0 and <= 1, got 1.5"),
    ({"loss": {"grid_weight": 0}}, r"loss.grid_weight is 0 and loss.point_samples is 0: nothing would be supervised"),
    ({"train": {"batch_size": True}}, r"train.batch_size must be an integer >= 1, got True"),
    ({"train": {"eval_limit": 0}}, r"train.eval_limit must be an integer >= 1 or null, got 0"),
    ({"eval": {"mode": "tiles"}}, r"unknown eval.mode 'tiles'; valid: whole, slide, reference"),
    ({"eval": {"scales": []}}, r"eval.scales must be a non-empty list of positive numbers"),
    ({"pretrained_backbone": "no"}, r"pretrained_backbone must be true or false"),
    ({"init_from": 3}, r"init_from must be a non-empty string or null, got 3"),
])
def test_unknown_keys_and_bad_values_are_refused_naming_the_valid_ones(data, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(data)


def test_overrides_set_one_key_including_model_keys():
    base = load_recipe(REPO / "configs" / "camvid-effl0-ifa.yaml")
    changed = load_recipe(REPO / "configs" / "camvid-effl0-ifa.yaml",
                          ["model.pos_dim=12", "train.cpu_bf16=true", "eval.scales=[0.5, 1.0]", "init_from=x/y"])
    assert changed.model == {**base.model, "pos_dim": 12}  # the other model keys are kept
    assert changed.train.cpu_bf16 is True and changed.eval.scales == [0.5, 1.0] and changed.init_from == "x/y"
    assert changed.data == base.data and changed.optim == base.optim
    with pytest.raises(ConfigError, match=r"unknown config key 'train.bf16'; valid here: \['amp', 'batch_size'"):
        load_recipe(None, ["train.bf16=true"])


def test_sections_take_partial_mappings_and_instances():
    """The helpers of ifa.train accept a section or a mapping of some of its keys (the others: defaults)."""
    assert DataRecipe.from_dict({"in_memory": False}) == DataRecipe(in_memory=False)
    optim = OptimRecipe(name="adamw")
    assert OptimRecipe.from_dict(optim) is optim
    assert as_recipe({"name": "x"}).train.out_dir == "runs/x"
    assert as_recipe(Recipe(name="y")).train.out_dir == "runs/y"
    assert DataRecipe(crop_size=(64, 80)).crop_size == [64, 80]  # tuples kept as lists: the recipe dumps as YAML
