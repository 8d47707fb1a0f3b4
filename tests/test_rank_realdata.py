"""Real data: the severity ratings of magnetic_tile's defective test images (grading figure's input)."""
import pytest

from tests.conftest import dataset
from training.rank.pairs import read_judgements


@pytest.mark.realdata
def test_mask_ratings_split_every_masked_defect_into_two_disjoint_valid_halves(tmp_path):
    from training.rank.mask_ratings import mask_ratings

    train, held = mask_ratings(dataset("magnetic_tile"), tmp_path, seed=0)
    a, b = read_judgements(train), read_judgements(held)
    assert not set(a.images) & set(b.images)
    assert abs(len(a.images) - len(b.images)) <= 6 and len(a.images) + len(b.images) >= 390
    ratings = a.ratings + b.ratings
    assert all(0 <= r < 1 for r in ratings)  # a share of the image's area (a few uneven masks are empty)
    assert sum(r > 0 for r in ratings) >= 0.95 * len(ratings)
    assert {p.parent.name for p in a.images} == {p.parent.name for p in b.images} == {
        "blowhole", "break", "crack", "fray", "uneven"}
