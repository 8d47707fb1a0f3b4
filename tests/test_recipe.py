"""Recipes: typos and wrong types are caught with the key named; shipped recipes load."""
from pathlib import Path

import pytest

from device.errors import KenpinError
from training.recipe import BankSpec, Recipe, load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("recipe*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    if path.name == "recipe_ranker.yaml":  # the RankNet recipe has its own schema
        from training.rank.recipe import RankerRecipe, load_ranker_recipe

        assert isinstance(load_ranker_recipe(path), RankerRecipe)
    else:
        assert isinstance(load_recipe(path), Recipe)


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("bank:\n  coreset_sise: 100\n")
    with pytest.raises(KenpinError, match=r"r\.yaml, line 2: bank\.coreset_sise: unknown key"):
        load_recipe(f)


def test_a_value_out_of_range_names_its_line(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("seed: 1\nmetric:\n  steps: 10\n  loss: hinge\ncalibration:\n  holdout_fraction: 0.9\n")
    with pytest.raises(KenpinError, match=r"r\.yaml, line 4: metric\.loss = 'hinge': use 'triplet'"):
        load_recipe(f)
    f.write_text("calibration:\n  holdout_fraction: 0.9\n")  # a check the whole recipe makes
    with pytest.raises(KenpinError, match=r"line 2: calibration\.holdout_fraction = 0\.9: use 0\.05–0\.5"):
        load_recipe(f)


def test_wrong_type_names_the_key(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("preprocess:\n  width: wide\n")
    with pytest.raises(KenpinError, match="preprocess.width"):
        load_recipe(f)


def test_width_must_suit_the_backbone(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("preprocess:\n  width: 300\n")
    with pytest.raises(KenpinError, match="multiple of 32"):
        load_recipe(f)


def test_the_documented_default_recipe_is_the_built_in_default():
    assert load_recipe(CONFIGS / "recipe.yaml") == Recipe()


def test_the_documented_ranker_recipe_is_the_built_in_default():
    from training.rank.recipe import RankerRecipe, load_ranker_recipe

    assert load_ranker_recipe(CONFIGS / "recipe_ranker.yaml") == RankerRecipe()


def test_a_partial_section_keeps_its_own_defaults_not_the_class_defaults(tmp_path):
    from training.rank.recipe import load_ranker_recipe

    path = tmp_path / "r.yaml"
    path.write_text("grade:\n  input: {size: 40}\n  train: {steps: 10}\n")
    r = load_ranker_recipe(path)
    assert r.grade.input.source == "embedding" and r.grade.input.size == 40  # the grade's default source
    assert r.grade.train.width == 16 and r.grade.train.steps == 10
    assert r.quality.input.source == "frame"


def test_an_unknown_bank_augmentation_names_the_choices(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("bank:\n  augment: rotate\n")
    with pytest.raises(KenpinError, match="bank.augment = 'rotate': use one of"):
        load_recipe(f)


def test_dihedral_augmentation_gives_each_bank_image_its_eight_orientations():
    import numpy as np

    from training.fit import augment_views

    img = np.arange(2 * 3 * 3).reshape(2, 3, 3).astype(np.uint8)  # H x W x 3, not square
    views = augment_views([img, img + 100], "dihedral")
    assert len(views) == 16 and len({v.tobytes() + bytes(v.shape) for v in views[:8]}) == 8
    assert {v.shape for v in views} == {(2, 3, 3), (3, 2, 3)}
    assert len(augment_views([img], "flips")) == 4 and len(augment_views([img], "none")) == 1


def test_nuisance_views_add_seeded_copies_of_each_bank_image_as_the_line_varies():
    import numpy as np

    from training.fit import nuisance_views
    from training.metric.pair_sampling import NuisanceSpec

    rng = np.random.default_rng(0)
    imgs = [rng.integers(40, 200, (32, 48, 3), dtype=np.uint8) for _ in range(2)]
    views = nuisance_views(imgs, 3, NuisanceSpec(), seed=0)
    assert len(views) == 8 and views[0] is imgs[0] and views[4] is imgs[1]
    assert all(v.shape == (32, 48, 3) and not np.array_equal(v, imgs[0]) for v in views[1:4])
    assert all(np.array_equal(a, b) for a, b in zip(views, nuisance_views(imgs, 3, NuisanceSpec(), seed=0)))
    with pytest.raises(KenpinError, match="nuisance_views = -1"):
        BankSpec(nuisance_views=-1)
