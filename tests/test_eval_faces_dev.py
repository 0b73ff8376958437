"""benchmarks/eval_faces_dev.py: faces-dev's FER2013 labels are scored in the model's own label ids."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ferkit.labels import EMOTIONS, FERPLUS_EMOTIONS



@pytest.fixture()
def bench(load_benchmark):
    return load_benchmark("eval_faces_dev")


Y_FER7 = np.array([0, 1, 3, 4, 5, 6, 6])  # angry disgust happy sad surprise neutral neutral


def test_a_fer7_model_is_scored_on_the_labels_as_they_are(bench):
    sc = bench.Scorer(SimpleNamespace(labels=EMOTIONS, label_set="fer7"), Y_FER7)
    assert sc.y.tolist() == Y_FER7.tolist()
    acc, f1, n = sc.score(np.array([0, 1, 3, 4, 5, 6, 3]))
    assert n == 7 and acc == pytest.approx(6 / 7)


def test_a_fer6_model_has_disgust_merged_into_angry(bench):
    labels = ("angry", "fear", "happy", "sad", "surprise", "neutral")
    sc = bench.Scorer(SimpleNamespace(labels=labels, label_set="fer6"), Y_FER7)
    assert [labels[i] for i in sc.y] == ["angry", "angry", "happy", "sad", "surprise", "neutral", "neutral"]


def test_a_ferplus8_model_is_scored_by_name_and_contempt_counts_as_wrong(bench):
    """FER+ labels cannot be derived from FER2013 ids in general, but faces-dev's 7 names are all FER+ names."""
    sc = bench.Scorer(SimpleNamespace(labels=FERPLUS_EMOTIONS, label_set="ferplus8"), Y_FER7)
    assert [FERPLUS_EMOTIONS[i] for i in sc.y] == [EMOTIONS[i] for i in Y_FER7]
    perfect = sc.y.copy()
    assert sc.score(perfect)[0] == 1.0
    contempt = FERPLUS_EMOTIONS.index("contempt")
    with_contempt = perfect.copy()
    with_contempt[-1] = contempt
    acc, f1, n = sc.score(with_contempt)
    assert n == 7 and acc == pytest.approx(6 / 7) and f1 < 1.0
    assert contempt not in sc.present  # macro-F1 runs over the classes faces-dev has


def test_tta_option_reaches_the_classifier(bench, tmp_path, capsys):
    """--tta overrides the model's own test-time augmentation (the ten-crop rule of session 24 used it)."""
    pytest.importorskip("onnxruntime")
    cv2 = pytest.importorskip("cv2")
    from ferkit.runtime import bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines = ["file,label,fer2013_label,width,height"]
    for i in range(2):
        cv2.imwrite(str(tmp_path / "images" / f"p{i}.png"), rng.integers(0, 256, (64, 64), dtype=np.uint8))
        lines.append(f"images/p{i}.png,happy,3,64,64")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    runs = {}
    for tta in (None, "tencrop"):
        out = tmp_path / f"{tta}.json"
        argv = ["--data", str(tmp_path), "--detectors", "haar", "--json", str(out)] + (["--tta", tta] if tta else [])
        assert bench.main(argv) == 0
        runs[tta] = capsys.readouterr().out
    assert "tta=none" in runs[None]  # the bundled default's own setting
    assert "tta=tencrop" in runs["tencrop"]
    with pytest.raises(SystemExit):
        bench.main(["--data", str(tmp_path), "--tta", "sideways"])


def test_confusion_counts_each_photo_once_and_keeps_the_photos_without_a_face_apart(bench):
    sc = bench.Scorer(SimpleNamespace(labels=EMOTIONS, label_set="fer7"), Y_FER7)
    # angry->angry, disgust->neutral, happy->no face, sad->sad, surprise->angry, neutral->neutral, neutral->happy
    cm, no_face = sc.confusion(np.array([0, 6, -1, 4, 0, 6, 3]))
    assert cm.sum() + no_face.sum() == len(Y_FER7)
    assert cm[0, 0] == 1 and cm[1, 6] == 1 and cm[4, 4] == 1 and cm[5, 0] == 1 and cm[6, 6] == 1 and cm[6, 3] == 1
    assert cm[3].sum() == 0 and no_face.tolist() == [0, 0, 0, 1, 0, 0, 0]
    # a fer6 model: disgust's photo is an angry row
    labels = ("angry", "fear", "happy", "sad", "surprise", "neutral")
    sc6 = bench.Scorer(SimpleNamespace(labels=labels, label_set="fer6"), Y_FER7)
    cm6, _ = sc6.confusion(np.array([0, 0, 2, 3, 4, 5, 5]))
    assert cm6[0, 0] == 2 and np.trace(cm6) == 7


def test_multi_crop_averages_the_crops_of_each_scale(bench):
    """--multi-crop: the mean of the classifier's probabilities over the crops at each scale (shift and
    alignment kept from the base crop); photos without a detection are left out."""
    from ferkit.faces import Detection
    from ferkit.faces.align import CropSpec

    seen = []

    class Clf:  # probability of class 0 = mean brightness of the crop's centre, so each scale gives its own value
        labels, spec = ("a", "b"), None

        def predict_proba(self, crops):
            seen.append([c.shape for c in crops])
            p = np.array([c[c.shape[0] // 2 - 2:c.shape[0] // 2 + 2].mean() / 255.0 for c in crops])
            return np.stack([p, 1 - p], 1).astype(np.float32)

    yy, xx = np.mgrid[0:100, 0:100]
    img = ((xx + yy) * 255 / 198).astype(np.uint8)
    dets = [Detection(box=(30.0, 20.0, 40.0, 50.0), score=0.9), None]
    base = CropSpec(scale=1.12, shift_y=-0.01)
    idx, probs = bench.multi_crop_probs(Clf(), [img, img], dets, base, [1.0, 1.12, 1.25])
    assert idx == [0] and probs.shape == (1, 2)
    single = [bench.crop_probs(Clf(), [img], dets[:1], base.with_(scale=s))[1][0] for s in (1.0, 1.12, 1.25)]
    assert np.allclose(probs[0], np.mean(single, axis=0))
    assert len({round(float(p[0]), 6) for p in single}) == 3  # three different crops, not one three times
    one = bench.multi_crop_probs(Clf(), [img], dets[:1], base, [1.12])[1]
    assert np.allclose(one, bench.crop_probs(Clf(), [img], dets[:1], base)[1])


def test_any_class_folder_of_photos_can_be_scored_and_contempt_only_by_a_model_that_has_it(bench, tmp_path):
    """--data DIR with DIR/<class>/*: labels from the folder names (ferkit's synonyms); a contempt photo is left
    out for a 7-class model and scored as contempt for a FER+ model."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for folder, n in (("Happiness", 2), ("surprised", 1), ("contempt", 1)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), rng.integers(0, 256, (40, 40), dtype=np.uint8))
    (tmp_path / "contempt" / "notes.txt").write_text("not a photo")
    images, y, names = bench.load_faces_dev(tmp_path, None)
    assert len(images) == 4 and sorted(y.tolist()) == [3, 3, 5, 7]
    assert sorted(names) == ["Happiness/0.png", "Happiness/1.png", "contempt/0.png", "surprised/0.png"]
    fer7 = bench.Scorer(SimpleNamespace(labels=EMOTIONS, label_set="fer7"), y)
    assert sorted(fer7.y.tolist()) == [-1, 3, 3, 5] and fer7.present == [3, 5]
    fer6 = bench.Scorer(SimpleNamespace(labels=("angry", "fear", "happy", "sad", "surprise", "neutral"),
                                        label_set="fer6"), y)
    assert sorted(fer6.y.tolist()) == [-1, 2, 2, 4]
    plus = bench.Scorer(SimpleNamespace(labels=FERPLUS_EMOTIONS, label_set="ferplus8"), y)
    assert sorted(FERPLUS_EMOTIONS[i] for i in plus.y) == ["contempt", "happy", "happy", "surprise"]
    acc, _, n = fer7.score(np.array([3 if v == 3 else 0 for v in y]))  # the contempt photo does not count
    assert n == 3 and acc == pytest.approx(2 / 3)


def test_a_folder_that_is_not_labelled_is_a_clear_error(bench, tmp_path, capsys):
    (tmp_path / "holiday").mkdir()
    (tmp_path / "holiday" / "a.png").write_bytes(b"not read: the folder name is checked first")
    assert bench.main(["--data", str(tmp_path), "--detectors", "haar"]) == 2
    assert "unknown class folder(s) 'holiday'" in capsys.readouterr().err
    assert bench.main(["--data", str(tmp_path / "missing"), "--detectors", "haar"]) == 2
    assert "is not a folder" in capsys.readouterr().err
