"""The ``kenpin`` command as an engineer meets it: clear one-line errors, eval outputs, odd images."""
import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from kenpin.cli import main
from training.dataset import read_many, scan_mvtec


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("kenpin: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_without_train_good_names_the_folder(capsys, tmp_path):
    (tmp_path / "ds" / "train" / "good").mkdir(parents=True)
    (tmp_path / "ds" / "test" / "good").mkdir(parents=True)
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "b"))
    assert code == 2
    assert "train/good" in one_line_error(err) and "no images" in err
    assert not (tmp_path / "b").exists()


def test_a_folder_that_is_not_mvtec_is_refused(capsys, tmp_path):
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "a.png"), np.zeros((8, 8), np.uint8))
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "photos"), "--out", str(tmp_path / "b"))
    assert code == 2 and "not an MVTec-layout dataset" in one_line_error(err)


def test_a_missing_dataset_folder_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "--bundle", str(tmp_path), "--data", str(tmp_path / "nope"))
    assert code == 2 and one_line_error(err)


def test_a_bad_recipe_key_is_named(capsys, tmp_path, tiny_line):
    bad = tmp_path / "r.yaml"
    bad.write_text("bank: {coreset_sise: 10}\n")
    code, _, err = run(capsys, "train", "--data", str(tiny_line), "--out", str(tmp_path / "b"), "--recipe", str(bad))
    assert code == 2 and "coreset_sise" in one_line_error(err)


def test_eval_writes_the_promised_json_and_report(capsys, tmp_path, tiny_bundle, tiny_line):
    js, rep = tmp_path / "m.json", tmp_path / "report"
    code, out, _ = run(capsys, "eval", "--bundle", str(tiny_bundle), "--data", str(tiny_line),
                       "--json", str(js), "--report", str(rep))
    assert code == 0
    m = json.loads(js.read_text())
    for key in ("image_auroc", "pixel_auroc", "false_reject_rate", "escape_rate", "per_defect", "verdicts"):
        assert key in m
    assert 0.5 < m["image_auroc"] <= 1 and m["pixel_auroc"] is not None
    assert set(m["per_defect"]) == set(scan_mvtec(tiny_line, need_test=True).defect_types)
    pngs = {p.name for p in rep.glob("*.png")}
    assert pngs == {"roc.png", "score_histogram.png", "worst_misses.png", "embeddings.png"}
    assert all((rep / n).stat().st_size > 5000 for n in pngs)  # real plots, not empty files
    assert "image AUROC" in out and "escapes" in out and str(rep) in out


def test_eval_refuses_a_tampered_bundle_naming_the_file(capsys, tmp_path, tiny_bundle, tiny_line):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    with open(b / "embedder_int8-w8.onnx", "ab") as f:
        f.write(b"\0")
    code, _, err = run(capsys, "eval", "--bundle", str(b), "--data", str(tiny_line))
    assert code == 2 and "embedder_int8-w8.onnx" in one_line_error(err)


def test_unreadable_images_are_skipped_and_named(tmp_path, caplog):
    good = tmp_path / "a.png"
    cv2.imwrite(str(good), np.full((20, 30), 128, np.uint8))
    empty = tmp_path / "b.png"
    empty.write_bytes(b"")
    junk = tmp_path / "c.jpg"
    junk.write_bytes(b"not a jpeg at all")
    with caplog.at_level(logging.WARNING):
        images, kept = read_many([good, empty, junk])
    assert kept == [good] and images[0].shape == (20, 30, 3)
    assert "b.png" in caplog.text and "c.jpg" in caplog.text


def test_when_no_image_is_readable_the_folder_is_named(tmp_path):
    from device.errors import KenpinError

    for n in ("a.png", "b.png"):
        (tmp_path / n).write_bytes(b"")
    with pytest.raises(KenpinError, match=f"{tmp_path}.*none of the 2 images"):
        read_many([tmp_path / "a.png", tmp_path / "b.png"])


def test_gray_and_colour_frames_of_any_size_preprocess_alike(tmp_path):
    from device.images import read_rgb
    from device.preprocess import Preprocess

    cv2.imwrite(str(tmp_path / "g.png"), np.full((97, 203), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "c.jpg"), np.full((460, 1130, 3), 90, np.uint8))
    pre = Preprocess(64, 32)
    g, c = (pre(read_rgb(tmp_path / n)) for n in ("g.png", "c.jpg"))
    assert g.shape == c.shape == (1, 3, 32, 64)
    assert np.allclose(g, c, atol=0.02)  # same gray level → same input, whatever the file
