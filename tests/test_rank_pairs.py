"""Operator files for the grade ranker: pairs with ties at ½, and bad files refused naming the line."""
import cv2
import numpy as np
import pytest

from device.errors import KenpinError
from training.rank.pairs import judgement_pairs, read_judgements


@pytest.fixture()
def imgs(tmp_path):
    for name in "abcd":
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((40, 40, 3), ord(name), np.uint8))
    return tmp_path


def write(folder, text):
    path = folder / "ratings.csv"
    path.write_text(text)
    return path


def test_ratings_become_every_pair_with_ties_at_one_half(imgs):
    j = read_judgements(write(imgs, "image,rating\na.png,3\nb.png,1\nc.png,3\n"))
    assert [p.name for p in j.images] == ["a.png", "b.png", "c.png"]
    assert sorted(j.pairs) == [(0, 1, 1.0), (0, 2, 0.5), (1, 2, 0.0)]


def test_pairs_file_without_header_is_read_as_better_worse(imgs):
    j = read_judgements(write(imgs, "a.png,b.png\nb.png,c.png\n"))
    assert j.ratings is None and j.pairs == [(0, 1, 1.0), (1, 2, 1.0)]


@pytest.mark.parametrize("text, message", [
    ("image,rating\na.png,3\nzz.png,1\n", r"ratings\.csv:3: image 'zz\.png' does not exist"),
    ("image,rating\na.png,3\nb.png,high\n", r"ratings\.csv:3: rating 'high' is not a number"),
    ("image,rating\na.png,3\n", r"only one image is rated"),
    ("image,rating\na.png,2\nb.png,2\n", r"same rating"),
    ("image,rating\na.png,2\nb.png\n", r"ratings\.csv:3: expected 2 comma-separated fields"),
    ("image,rating\na.png,2\na.png,1\n", r"ratings\.csv:3: image 'a\.png' is rated twice \(also on line 2\)"),
    ("better,worse\na.png,b.png\nb.png,c.png\nc.png,a.png\n", r"ratings\.csv:4: .*closes a cycle \(c\.png > a\.png > b\.png > c\.png\)"),
    ("better,worse\na.png,a.png\n", r"ratings\.csv:2: an image cannot rank above itself"),
    ("better,worse\n", r"no judgements"),
])
def test_bad_files_name_the_file_and_line(imgs, text, message):
    with pytest.raises(KenpinError, match=message):
        read_judgements(write(imgs, text))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(KenpinError, match="ratings file does not exist"):
        read_judgements(tmp_path / "nope.csv")


def test_sampler_draws_both_sides_from_each_images_variants():
    sample = judgement_pairs([(0, 1, 1.0), (2, 1, 0.5)], variants=4)
    a, b, t, col = sample(np.random.default_rng(0), 400)
    assert set(a // 4) <= {0, 2} and set(b // 4) == {1}
    assert set(np.unique(a % 4)) == {0, 1, 2, 3}
    assert np.all(t[a // 4 == 2] == 0.5) and np.all(t[a // 4 == 0] == 1.0)
