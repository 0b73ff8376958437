"""Data layer: FER2013 CSV reader, image folders, FER+ labels, splits, cleaning, `ferkit data`.

Everything runs on generated fixtures; the tests at the bottom check the real files (slow, skip when absent).
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit.cli import main as cli_main
from ferkit.data import load_fer2013, prepare_splits, stratified_split
from ferkit.data.clean import (
    blank_mask, clean_arrays, duplicate_groups, duplicate_summary, histogram_mask, parse_rules,
)
from ferkit.data.ferplus import DROP_REASONS, ferplus_targets, load_ferplus
from ferkit.data.folders import load_image_folder
from ferkit.errors import FerkitError
from ferkit.labels import EMOTIONS, FERPLUS_EMOTIONS

from conftest import make_fer_csv

USAGE_NAMES = ("Training", "PublicTest", "PrivateTest")


# ----------------------------------------------------------------------------------------------- helpers
def face(seed: int, label: int = 0) -> np.ndarray:
    """A distinct, textured 48x48 uint8 image (no flat areas, so no cleaning rule fires)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (48, 48), dtype=np.uint8)


def px(img: np.ndarray) -> str:
    return " ".join(map(str, np.asarray(img, np.uint8).ravel()))


def write_csv(path: Path, rows: list[tuple], header: str = "emotion,pixels,Usage", newline: str = "\n",
              gz: bool = False) -> Path:
    """rows: (label, image or raw pixel string, usage) -> a FER2013-format CSV."""
    lines = [header] + [f"{lab},{p if isinstance(p, str) else px(p)},{u}" for lab, p, u in rows]
    data = (newline.join(lines) + newline).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def standard_rows(n_per_split=(14, 7, 7)) -> list[tuple]:
    rows, k = [], 0
    for usage, n in zip(USAGE_NAMES, n_per_split):
        for i in range(n):
            rows.append((i % 7, face(k), usage))
            k += 1
    return rows


# ----------------------------------------------------------------------------------------------- FER2013 CSV
def test_csv_loads_images_labels_usage_and_rows(tmp_path):
    rows = standard_rows()
    ds = load_fer2013(write_csv(tmp_path / "f.csv", rows), cache=False)
    assert len(ds) == 28 and ds.images.shape == (28, 48, 48) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[5], rows[5][1])
    assert ds.labels.tolist() == [r[0] for r in rows]
    assert [USAGE_NAMES[u] for u in ds.usage] == [r[2] for r in rows]
    assert ds.rows.tolist() == list(range(28))
    assert ds.split("PublicTest").tolist() == list(range(14, 21))


@pytest.mark.parametrize("variant", ["crlf", "gz", "crlf_gz"])
def test_csv_crlf_and_gzip_give_identical_arrays(tmp_path, variant):
    rows = standard_rows()
    plain = load_fer2013(write_csv(tmp_path / "plain.csv", rows), cache=False)
    other = load_fer2013(write_csv(tmp_path / "other.csv.gz", rows, newline="\r\n" if "crlf" in variant else "\n",
                                   gz="gz" in variant), cache=False)
    assert np.array_equal(plain.images, other.images)
    assert np.array_equal(plain.labels, other.labels) and np.array_equal(plain.usage, other.usage)


def test_csv_tolerates_bom_quotes_column_order_and_extra_whitespace(tmp_path):
    img = face(1)
    spaced = px(img).replace(" ", "  ", 3).replace(" ", "\t", 1)
    text = ('\ufeffemotion, Usage, pixels\n'
            f'3,Training,"{px(img)}"\n'
            f'4,PublicTest,{spaced}\n'
            '\n'
            f'5 , privatetest , {px(img)}\n')
    p = tmp_path / "odd.csv"
    p.write_text(text, encoding="utf-8")
    ds = load_fer2013(p, cache=False)
    assert ds.labels.tolist() == [3, 4, 5]
    assert ds.usage.tolist() == [0, 1, 2]
    assert all(np.array_equal(ds.images[i], img) for i in range(3))


BAD_ROWS = {
    "field_count": ("3,{px},Training,extra", "expected 3 comma-separated fields"),
    "pixel_count": ("3,{short},Training", "pixels field has 2303 values"),
    "pixel_count_double_space": ("3,{short_2sp},Training", "pixels field has 2303 values"),
    "value_256": ("3,{v256},Training", "out of range 0..255"),
    "negative": ("3,{neg},Training", "is not an integer"),
    "non_integer_pixel": ("3,{frac},Training", "is not an integer"),
    "label_7": ("7,{px},Training", "emotion 7 is not a FER2013 label"),
    "label_text": ("happy,{px},Training", "is not an integer"),
    "usage": ("3,{px},Validation", "Usage 'Validation' is not one of"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_csv_malformed_row_is_an_error_naming_the_row_and_skip_bad_counts_it(tmp_path, kind):
    img = face(7)
    tokens = px(img).split(" ")
    fmt = dict(px=px(img), short=" ".join(tokens[:-1]), short_2sp=" ".join(tokens[:-2]) + "  " + tokens[-2], v256=" ".join(["256"] + tokens[1:]),
               neg=" ".join(tokens[:10] + ["-1"] + tokens[11:]), frac=" ".join(tokens[:5] + ["1.5"] + tokens[6:]))
    template, reason = BAD_ROWS[kind]
    good = [f"{i % 7},{px(face(100 + i))},Training" for i in range(5)]
    lines = ["emotion,pixels,Usage"] + good[:3] + [template.format(**fmt)] + good[3:]
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerkitError) as e:
        load_fer2013(p, cache=False)
    msg = str(e.value)
    assert "data row 3 (line 5)" in msg and reason in msg and "--skip-bad" in msg
    ds = load_fer2013(p, skip_bad=True, cache=False)
    assert len(ds) == 5 and len(ds.skipped) == 1
    assert ds.skipped[0][0] == 3 and reason in ds.skipped[0][1]
    assert ds.rows.tolist() == [0, 1, 2, 4, 5]  # row ids stay file positions (FER+ alignment)
    assert np.array_equal(ds.images[3], face(103))


def test_csv_skip_bad_counts_several_bad_rows(tmp_path):
    rows = standard_rows((10, 0, 0))
    lines = ["emotion,pixels,Usage"] + [f"{lab},{px(img)},{u}" for lab, img, u in rows]
    lines[2] = lines[2].replace(",Training", ",Nope")
    lines[5] = "9" + lines[5][1:]
    lines[8] = f"0,{' '.join(['300'] + px(rows[7][1]).split(' ')[1:])},Training"
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines))
    ds = load_fer2013(p, skip_bad=True, cache=False)
    assert [r for r, _ in ds.skipped] == [1, 4, 7]
    assert len(ds) == 7


@pytest.mark.parametrize("content,needle", [
    (b"label,image,split\n0,1 2 3,Training\n", "header is 'label,image,split'"),
    (b"emotion,pixels\n0,1 2 3\n", "expected the three columns"),
    (b"", "empty file"),
    (b"emotion,pixels,Usage\n", "no valid data rows"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, "binary file"),
    (b"\xff\xfe\xfa" * 50, "does not start with a text header"),
])
def test_csv_wrong_header_or_not_a_csv_is_a_clear_error(tmp_path, content, needle):
    p = tmp_path / "x.csv"
    p.write_bytes(content)
    with pytest.raises(FerkitError, match=needle):
        load_fer2013(p, cache=False)


def test_csv_archives_truncated_gzip_and_folders_are_clear_errors(tmp_path):
    csv = write_csv(tmp_path / "fer2013.csv", standard_rows())
    z = tmp_path / "fer2013.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(csv, "fer2013.csv")
    with pytest.raises(FerkitError, match="zip archive"):
        load_fer2013(z, cache=False)
    t = tmp_path / "fer2013.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(csv, "fer2013/fer2013.csv")
    with pytest.raises(FerkitError, match="tar archive"):
        load_fer2013(t, cache=False)
    gz = gzip.compress(csv.read_bytes())
    trunc = tmp_path / "trunc.csv.gz"
    trunc.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(FerkitError, match="cannot read"):
        load_fer2013(trunc, cache=False)
    with pytest.raises(FerkitError, match="is a folder"):
        load_fer2013(tmp_path, cache=False)
    with pytest.raises(FerkitError, match="no such file"):
        load_fer2013(tmp_path / "missing.csv", cache=False)


def test_csv_cache_is_used_and_keyed_by_content(tmp_path):
    cache = tmp_path / "cache"
    p = write_csv(tmp_path / "f.csv", standard_rows())
    a = load_fer2013(p, cache_dir=cache)
    files = list(cache.glob("fer2013-*.npz"))
    assert len(files) == 1
    # the second load must come from the cache: make the cache distinguishable from the file
    with np.load(files[0]) as z:
        arrays = dict(z)
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][0] = 6
    np.savez(files[0], **arrays)
    assert load_fer2013(p, cache_dir=cache).labels[0] == 6
    # an edited file has a new hash, so it is parsed again, never served from the stale cache
    write_csv(p, standard_rows()[1:])
    b = load_fer2013(p, cache_dir=cache)
    assert len(b) == len(a) - 1 and b.labels[0] == a.labels[1]
    # a damaged cache file is rebuilt, not an error
    for f in cache.glob("fer2013-*.npz"):
        f.write_bytes(b"garbage")
    assert len(load_fer2013(p, cache_dir=cache)) == len(a) - 1


# ----------------------------------------------------------------------------------------------- splits
def test_usage_split_and_label_sets(tiny_fer_csv):
    s = prepare_splits(tiny_fer_csv)
    assert (len(s.train), len(s.val), len(s.test)) == (60, 14, 14)
    assert s.labels == EMOTIONS and s.get("PublicTest") is s.val and s.get("privatetest") is s.test
    assert s.info["class_counts"]["train"]["angry"] == int((s.train.labels == 0).sum()) > 0
    s6 = prepare_splits(tiny_fer_csv, label_set="fer6")
    assert s6.labels[0] == "angry" and set(s6.train.labels[s.train.labels == 1]) == {0}  # disgust -> angry
    s5 = prepare_splits(tiny_fer_csv, label_set="fer5")
    assert s5.info["dropped_by_label_set"] == int(np.isin(np.concatenate([s.train.labels, s.val.labels, s.test.labels]), [1, 2]).sum())
    assert s5.train.labels.max() == 4
    with pytest.raises(FerkitError, match="needs FER\\+ votes"):
        prepare_splits(tiny_fer_csv, label_set="ferplus8")
    with pytest.raises(FerkitError, match="unknown split method"):
        prepare_splits(tiny_fer_csv, split="kfold")
    with pytest.raises(FerkitError, match="no such file or folder"):
        prepare_splits(str(tiny_fer_csv) + ".missing")
    pre = prepare_splits(load_fer2013(tiny_fer_csv), label_set="fer6")  # an already loaded CSV works too
    assert np.array_equal(pre.train.labels, s6.train.labels)
    lim = prepare_splits(tiny_fer_csv, limit=5)
    assert [len(x) for x in (lim.train, lim.val, lim.test)] == [5, 5, 5]
    assert np.array_equal(lim.train.rows, s.train.rows[:5])


def test_random_split_is_stratified_seeded_and_disjoint(tmp_path):
    p = make_fer_csv(tmp_path / "r.csv", n_per_split=(140, 0, 0))
    a = prepare_splits(p, split="random", seed=3)
    b = prepare_splits(p, split="random", seed=3)
    c = prepare_splits(p, split="random", seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (112, 14, 14)
    assert np.array_equal(a.test.rows, b.test.rows) and not np.array_equal(a.test.rows, c.test.rows)
    all_rows = np.concatenate([a.train.rows, a.val.rows, a.test.rows])
    assert sorted(all_rows.tolist()) == list(range(140))
    assert np.bincount(a.val.labels, minlength=7).tolist() == [2] * 7  # 20 per class -> 16/2/2


def test_stratified_split_fractions():
    y = np.repeat(np.arange(3), 10)
    parts = stratified_split(y, fractions=(0.9, 0.1), seed=0)
    assert [len(p) for p in parts] == [27, 3] and set(y[parts[1]]) == {0, 1, 2}


# ----------------------------------------------------------------------------------------------- image folders
def write_image(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def make_split_tree(root: Path, with_val: bool = False) -> dict:
    """train/{Angry,happiness,SAD}/ (10 each), test/ (3 each), optional validation/ (2 each); PNG and JPG."""
    imgs = {}
    folders = {"Angry": 0, "happiness": 3, "SAD": 4}
    splits = [("train", 10), ("test", 3)] + ([("validation", 2)] if with_val else [])
    k = 0
    for sp, n in splits:
        for name in folders:
            for i in range(n):
                k += 1
                img = face(1000 + k)
                ext = "png" if i % 2 == 0 else "jpg"
                rel = f"{sp}/{name}/img{i:02d}.{ext}"
                write_image(root / rel, img)
                imgs[rel] = img
    return imgs


def test_folder_split_layout_maps_synonyms_and_carves_val(tmp_path):
    imgs = make_split_tree(tmp_path / "fer")
    fd = load_image_folder(tmp_path / "fer", cache=False)
    assert fd.layout == "splits" and len(fd) == 39 and fd.images.shape == (39, 48, 48)
    assert fd.class_folders == {"test/Angry": "angry", "test/SAD": "sad", "test/happiness": "happy",
                                "train/Angry": "angry", "train/SAD": "sad", "train/happiness": "happy"}
    i = fd.paths.index("train/happiness/img00.png")
    assert np.array_equal(fd.images[i], imgs["train/happiness/img00.png"])  # PNG: lossless
    assert fd.labels[i] == EMOTIONS.index("happy")
    j = fd.paths.index("train/SAD/img01.jpg")
    assert np.abs(fd.images[j].astype(int) - imgs["train/SAD/img01.jpg"]).mean() < 40  # JPEG: lossy, same image
    s = prepare_splits(str(tmp_path / "fer"), seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 9)
    assert sorted(s.val.labels.tolist()) == [0, 3, 4]  # stratified: one of each class
    assert "carved val" in s.info["split_used"] and s.info["data_kind"] == "image-folder"
    again = prepare_splits(str(tmp_path / "fer"), seed=1)
    assert np.array_equal(again.val.rows, s.val.rows)


def test_folder_with_val_folder_uses_it(tmp_path):
    make_split_tree(tmp_path / "fer", with_val=True)
    s = prepare_splits(str(tmp_path / "fer"))
    assert (len(s.train), len(s.val), len(s.test)) == (30, 6, 9)
    assert s.info["split_used"] == "folders"
    r = prepare_splits(str(tmp_path / "fer"), split="random", seed=0)
    assert len(r.train) + len(r.val) + len(r.test) == 45 and r.info["split_used"] == "random"
    import shutil

    shutil.rmtree(tmp_path / "fer" / "test")  # train + validation only: test is carved from train
    t = prepare_splits(str(tmp_path / "fer"))
    assert (len(t.train), len(t.val), len(t.test)) == (27, 6, 3) and "carved test" in t.info["split_used"]


def test_flat_folder_gets_random_split_and_images_are_resized(tmp_path):
    root = tmp_path / "photos"
    big = cv2.cvtColor(face(5), cv2.COLOR_GRAY2BGR)
    big = cv2.resize(big, (120, 96), interpolation=cv2.INTER_NEAREST)
    big[:, :, 2] = 255 - big[:, :, 2]  # real colour, so the gray conversion matters
    for k, cls in enumerate(("Surprised", "neutral", "Fearful", "disgusted", "contempt")):
        for i in range(10):
            write_image(root / cls / f"p{i}.png", big if i == 0 else face(2000 + 10 * k + i))
    (root / "README.txt").write_text("notes")
    (root / "neutral" / "labels.json").write_text("{}")
    fd = load_image_folder(root, cache=False)
    assert fd.layout == "flat" and sorted(fd.ignored) == ["README.txt", "neutral/labels.json"]
    i = fd.paths.index("Surprised/p0.png")
    want = cv2.resize(cv2.cvtColor(big, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
    assert np.array_equal(fd.images[i], want)
    s = prepare_splits(str(root), seed=0)  # fer7: contempt has no FER2013 class -> dropped and counted
    assert s.info["split_used"].startswith("random") and s.info["dropped_by_label_set"] == 10
    assert (len(s.train), len(s.val), len(s.test)) == (32, 4, 4)
    s8 = prepare_splits(str(root), label_set="ferplus8")
    assert s8.info["class_counts"]["train"]["contempt"] == 8 and s8.labels == FERPLUS_EMOTIONS
    assert s.info["ignored_files"] == 2


def test_folder_errors_unknown_class_mixed_layout_empty(tmp_path):
    root = tmp_path / "d"
    write_image(root / "happy" / "a.png", face(1))
    write_image(root / "Smiling" / "a.png", face(2))
    write_image(root / "bored" / "a.png", face(3))
    with pytest.raises(FerkitError) as e:
        load_image_folder(root, cache=False)
    msg = str(e.value)
    assert "'Smiling'" in msg and "'bored'" in msg and "folders found: Smiling, bored, happy" in msg
    fd = load_image_folder(root, class_map={"smiling": "happiness", "Bored": "neutral"}, cache=False)
    assert sorted(fd.labels.tolist()) == [3, 3, 6]
    with pytest.raises(FerkitError, match="not a class"):
        load_image_folder(root, class_map={"smiling": "joyful"}, cache=False)
    mixed = tmp_path / "m"
    write_image(mixed / "train" / "happy" / "a.png", face(1))
    write_image(mixed / "happy" / "b.png", face(2))
    with pytest.raises(FerkitError, match="mixes split folders"):
        load_image_folder(mixed, cache=False)
    empty = tmp_path / "e"
    (empty / "happy").mkdir(parents=True)
    with pytest.raises(FerkitError, match="no images found"):
        load_image_folder(empty, cache=False)
    with pytest.raises(FerkitError, match="no sub-folders"):
        load_image_folder(empty / "happy", cache=False)
    with pytest.raises(FerkitError, match="needs the FER2013 CSV"):
        prepare_splits(str(root), ferplus=str(tmp_path / "x.csv"), class_map={"smiling": "happy", "bored": "sad"})


def test_folder_unreadable_images_error_or_are_counted(tmp_path):
    root = tmp_path / "d"
    for i in range(12):
        write_image(root / ("happy" if i % 2 else "sad") / f"{i}.png", face(i))
    (root / "sad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "happy" / "empty.jpg").write_bytes(b"")
    with pytest.raises(FerkitError) as e:
        load_image_folder(root, cache_dir=tmp_path / "cache")
    assert "2 of 14 images" in str(e.value) and "broken.png" in str(e.value) and "--skip-bad" in str(e.value)
    fd = load_image_folder(root, skip_bad=True, cache_dir=tmp_path / "cache")
    assert len(fd) == 12 and sorted(p for p, _ in fd.bad) == ["happy/empty.jpg", "sad/broken.png"]
    s = prepare_splits(str(root), skip_bad=True)
    assert s.info["skipped_rows"] == 2 and len(s.train) + len(s.val) + len(s.test) == 12
    # the cached result still refuses the bad images without skip_bad
    with pytest.raises(FerkitError, match="2 of 14"):
        load_image_folder(root, cache_dir=tmp_path / "cache")


def test_folder_cache_follows_file_changes(tmp_path):
    root = tmp_path / "d"
    for i in range(4):
        write_image(root / "happy" / f"{i}.png", face(i))
    cache = tmp_path / "cache"
    a = load_image_folder(root, cache_dir=cache)
    assert len(list(cache.glob("folder-*.npz"))) == 1
    write_image(root / "happy" / "0.png", face(99))  # new content (and size / mtime)
    write_image(root / "sad" / "x.png", face(98))
    b = load_image_folder(root, cache_dir=cache)
    assert len(b) == len(a) + 1 and np.array_equal(b.images[b.paths.index("happy/0.png")], face(99))
    # the fingerprint (how evaluate knows a model was trained on this data) follows contents, not dates:
    # a copy of the folder, or a touched file, is the same data; new pixels with the old size and date are not
    import shutil

    shutil.copytree(root, tmp_path / "copy")
    os.utime(root / "happy" / "1.png")
    assert load_image_folder(tmp_path / "copy", cache_dir=cache).fingerprint == b.fingerprint
    assert load_image_folder(root, cache_dir=cache).fingerprint == b.fingerprint
    st = os.stat(root / "happy" / "2.png")
    flipped = cv2.imencode(".png", face(2)[:, ::-1])[1].tobytes()  # other pixels, the old modification time
    (root / "happy" / "2.png").write_bytes(flipped)
    os.utime(root / "happy" / "2.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    c = load_image_folder(root, cache_dir=cache)
    assert c.fingerprint != b.fingerprint
    assert np.array_equal(c.images[c.paths.index("happy/2.png")], face(2)[:, ::-1])  # not the cached pixels


def test_folder_given_as_dot_non_utf8_names_limit_and_dropped_classes(tmp_path, monkeypatch):
    root = tmp_path / "d"
    for k, cls in enumerate(("angry", "happy", "sad")):
        for i in range(6):
            write_image(root / cls / f"{i}.png", face(100 * k + i))
    try:
        (root / "sad" / os.fsdecode(b"caf\xe9.png")).write_bytes((root / "sad" / "0.png").read_bytes())
    except (UnicodeEncodeError, OSError):
        pass  # a file system that refuses such names
    monkeypatch.chdir(root)
    fd = load_image_folder(".", cache_dir=tmp_path / "cache")  # relative paths used to lose their first letter
    assert "angry/0.png" in fd.paths and len(fd) >= 18
    sp = prepare_splits(str(root), limit=4)  # a sample of every class, not the first class only
    assert len(set(sp.train.labels.tolist())) >= 2
    os.symlink("..", root / "happy" / "up")  # a link loop: walked once, no endless descent or traceback
    assert len(load_image_folder(root, cache_dir=tmp_path / "cache")) == len(fd)
    only = tmp_path / "contempt_only"
    for i in range(3):
        write_image(only / "contempt" / f"{i}.png", face(i))
    with pytest.raises(FerkitError, match="leaves out"):
        prepare_splits(str(only))


# ----------------------------------------------------------------------------------------------- FER+
FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
# votes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
FERPLUS_CASES = [
    ("clear happy", "fer0.png", [1, 8, 1, 0, 0, 0, 0, 0, 0, 0], 1),
    ("clear neutral", "fer1.png", [6, 0, 1, 1, 0, 0, 0, 0, 2, 0], 0),
    ("tie sad/neutral", "fer2.png", [4, 0, 0, 4, 1, 0, 0, 0, 1, 0], -1),
    ("unknown on top", "fer3.png", [2, 1, 0, 0, 0, 0, 0, 0, 7, 0], -1),
    ("not a face", "fer4.png", [0, 0, 0, 0, 0, 0, 0, 0, 1, 9], -1),
    ("dropped by FER+", "", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], -1),
    ("contempt", "fer6.png", [3, 0, 0, 0, 0, 0, 0, 5, 2, 0], 7),
    ("anger+disgust", "fer7.png", [3, 0, 0, 0, 2, 2, 0, 0, 0, 3], -1),  # tie neutral/NF 3=3 in ferplus8
    ("fear", "fer8.png", [0, 0, 3, 0, 0, 0, 6, 0, 1, 0], 6),
    ("surprise w/ NF tie", "fer9.png", [0, 0, 5, 0, 0, 0, 0, 0, 0, 5], -1),
]


def make_ferplus_pair(tmp_path: Path, usages=None) -> tuple[Path, Path]:
    usages = usages or ["Training"] * 6 + ["PublicTest"] * 2 + ["PrivateTest"] * 2
    rows = [(i % 7, face(500 + i), u) for i, u in enumerate(usages)]
    csv = write_csv(tmp_path / "fer2013.csv", rows)
    lines = [FERPLUS_HEADER] + [f"{u},{name},{','.join(map(str, v))}"
                                for u, (_, name, v, _) in zip(usages, FERPLUS_CASES)]
    fp = tmp_path / "fer2013new.csv"
    fp.write_text("\r\n".join(lines) + "\r\n")
    return csv, fp


def test_ferplus_majority_rule_and_drop_reasons(tmp_path):
    _, fp_path = make_ferplus_pair(tmp_path)
    fp = load_ferplus(fp_path)
    assert fp.votes.shape == (10, 10) and fp.dropped_by_ferplus.tolist() == [False] * 5 + [True] + [False] * 4
    labels, soft, reason = ferplus_targets(fp.votes, "ferplus8", dropped=fp.dropped_by_ferplus)
    assert labels.tolist() == [c[3] for c in FERPLUS_CASES]
    assert [DROP_REASONS[r] for r in reason] == ["kept", "kept", "tie", "unknown", "not_face", "no_image",
                                                  "kept", "tie", "kept", "tie"]
    assert soft.dtype == np.float32 and soft.shape == (10, 8)
    assert np.allclose(soft[0], [0.1, 0.8, 0.1, 0, 0, 0, 0, 0])
    assert np.allclose(soft[1], [6 / 8, 0, 1 / 8, 1 / 8, 0, 0, 0, 0])  # unknown votes are not part of it
    # fer7 from FER+: contempt is excluded, anger+disgust stay separate, fer6 merges them (5 > 3 votes)
    l7, s7, r7 = ferplus_targets(fp.votes, "fer7")
    assert l7[0] == EMOTIONS.index("happy") and l7[8] == EMOTIONS.index("fear")
    assert DROP_REASONS[r7[6]] == "excluded_class" and s7.shape == (10, 7)
    l6, _, _ = ferplus_targets(fp.votes, "fer6")
    assert l6[7] == 0  # angry (merged with disgust)


def test_ferplus_reference_protocol_removes_single_votes_and_needs_a_majority(tmp_path, capsys):
    """The FER+ authors' rule: counts of 1 vote are dropped, then one candidate needs more than half of the rest."""
    csv, fp_path = make_ferplus_pair(tmp_path)
    fp = load_ferplus(fp_path)
    labels, soft, reason = ferplus_targets(fp.votes, "ferplus8", dropped=fp.dropped_by_ferplus, protocol="reference")
    assert labels.tolist() == [1, 0, -1, -1, -1, -1, -1, -1, 6, -1]
    # contempt (5 of 10) and anger+disgust (3 of 10) had a plurality but no majority; unknown keeps its reason
    assert [DROP_REASONS[r] for r in reason] == ["kept", "kept", "no_majority", "unknown", "not_face", "no_image",
                                                  "no_majority", "no_majority", "kept", "no_majority"]
    assert np.allclose(soft[0], np.eye(8)[1])  # the two single votes are gone from the target
    assert np.allclose(soft[1], np.eye(8)[0])  # 6 neutral, 2 unknown: the class votes are all neutral
    assert np.allclose(soft[8], [0, 0, 1 / 3, 0, 0, 0, 2 / 3, 0])
    # single votes removed before counting: 3 of 3 remaining votes is a majority (plurality: 3 of 10 also wins)
    spread = np.array([[3, 1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    lab, sft, why = ferplus_targets(spread, "ferplus8", protocol="reference")
    assert lab.tolist() == [0, -1] and np.allclose(sft[0], np.eye(8)[0])
    assert [DROP_REASONS[r] for r in why] == ["kept", "no_votes"]
    assert ferplus_targets(spread, "ferplus8")[0].tolist() == [0, -1]
    with pytest.raises(FerkitError, match="unknown FER\\+ protocol 'strict'"):
        ferplus_targets(spread, "ferplus8", protocol="strict")
    ref = prepare_splits(str(csv), label_set="ferplus8", ferplus=str(fp_path), ferplus_protocol="reference",
                         ferplus_mode="soft")
    assert ref.train.rows.tolist() == [0, 1] and ref.val.rows.tolist() == [] and ref.test.rows.tolist() == [8]
    assert ref.info["ferplus"]["protocol"] == "reference" and ref.info["ferplus"]["reasons"]["no_majority"] == 4
    for protocol, kept in (("plurality", [2, 1, 1]), ("reference", [2, 0, 1])):  # the CLI counts what each keeps
        assert cli_main(["data", "stats", "--data", str(csv), "--ferplus", str(fp_path), "--ferplus-protocol",
                         protocol, "--json", "--no-plot"]) == 0
        counts = json.loads(capsys.readouterr().out)["class_counts"]
        assert [sum(counts[sp].values()) for sp in ("train", "val", "test")] == kept


def test_prepare_splits_with_ferplus_majority_and_soft(tmp_path):
    csv, fp = make_ferplus_pair(tmp_path)
    maj = prepare_splits(str(csv), label_set="ferplus8", ferplus=str(fp))
    soft = prepare_splits(str(csv), label_set="ferplus8", ferplus=str(fp), ferplus_mode="soft")
    assert maj.labels == FERPLUS_EMOTIONS
    # kept: rows 0, 1 (train), 6 (PublicTest: contempt), 8 (PrivateTest: fear)
    assert maj.train.rows.tolist() == [0, 1] and maj.val.rows.tolist() == [6] and maj.test.rows.tolist() == [8]
    assert maj.train.labels.tolist() == [1, 0] and maj.val.labels.tolist() == [7] and maj.test.labels.tolist() == [6]
    for role in ("train", "val", "test"):
        a, b = maj.get(role), soft.get(role)
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.soft.argmax(1), a.labels) and np.allclose(a.soft.sum(1), 1)
    assert np.array_equal(maj.train.soft[0], np.eye(8, dtype=np.float32)[1])  # majority: one-hot
    assert soft.train.soft.dtype == np.float32 and np.allclose(soft.train.soft[0], [0.1, 0.8, 0.1, 0, 0, 0, 0, 0])
    assert maj.info["ferplus"]["reasons"]["tie"] == 3 and maj.info["ferplus"]["reasons"]["no_image"] == 1
    fer7 = prepare_splits(str(csv), label_set="fer7", ferplus=str(fp))
    assert fer7.val.rows.tolist() == []  # contempt is not in fer7
    with pytest.raises(FerkitError, match="unknown FER\\+ mode 'vote'"):
        prepare_splits(str(csv), ferplus=str(fp), ferplus_mode="vote")


def test_prepare_splits_ferplus_blend_keeps_fer2013_labels(tmp_path):
    csv, fp = make_ferplus_pair(tmp_path)  # FER2013 label of row i is i % 7
    b = prepare_splits(str(csv), label_set="fer7", ferplus=str(fp), ferplus_mode="blend", ferplus_weight=0.5)
    # every image and every label is FER2013's (val and test too): FER+ only shapes the training target
    assert b.train.rows.tolist() == [0, 1, 2, 3, 4, 5] and b.train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert b.val.labels.tolist() == [6, 0] and b.test.labels.tolist() == [1, 2]
    e = {name: i for i, name in enumerate(EMOTIONS)}
    # row 0: FER2013 angry; FER+ votes happy 8, neutral 1, surprise 1 -> half one-hot, half votes
    want0 = np.zeros(7, np.float32)
    want0[e["angry"]], want0[e["happy"]], want0[e["surprise"]], want0[e["neutral"]] = 0.5, 0.4, 0.05, 0.05
    assert np.allclose(b.train.soft[0], want0)
    # row 1: FER2013 disgust; FER+ neutral 6, surprise 1, sad 1 (the 2 unknown votes are not part of it)
    assert b.train.soft[1, e["disgust"]] == pytest.approx(0.5) and b.train.soft[1, e["neutral"]] == pytest.approx(0.375)
    # rows FER+ drops (tie, unknown on top, not a face, dropped) keep the plain one-hot FER2013 label
    for i in (2, 3, 4, 5):
        assert np.array_equal(b.train.soft[i], np.eye(7, dtype=np.float32)[i])
    assert np.allclose(b.train.soft.sum(1), 1)
    assert b.info["ferplus"]["mode"] == "blend" and b.info["ferplus"]["blended"] == 3  # rows 0, 1 and 8
    w1 = prepare_splits(str(csv), label_set="fer7", ferplus=str(fp), ferplus_mode="blend", ferplus_weight=1.0)
    assert w1.train.soft[0, e["angry"]] == 0 and w1.train.soft[0, e["happy"]] == pytest.approx(0.8)
    with pytest.raises(FerkitError, match="FER2013 label set"):
        prepare_splits(str(csv), label_set="ferplus8", ferplus=str(fp), ferplus_mode="blend")
    with pytest.raises(FerkitError, match="blend weight"):
        prepare_splits(str(csv), label_set="fer7", ferplus=str(fp), ferplus_mode="blend", ferplus_weight=1.5)


def test_ferplus_alignment_survives_skipped_csv_rows(tmp_path):
    csv, fp = make_ferplus_pair(tmp_path)
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace(",Training", ",Trainingx")  # data row 0 becomes bad
    csv.write_text("\n".join(lines) + "\n")
    s = prepare_splits(str(csv), label_set="ferplus8", ferplus=str(fp), skip_bad=True)
    assert s.train.rows.tolist() == [1] and s.train.labels.tolist() == [0]  # row 1 is still "clear neutral"
    assert s.test.rows.tolist() == [8]


def test_ferplus_misalignment_and_bad_files_are_errors(tmp_path):
    csv, fp = make_ferplus_pair(tmp_path)
    lines = fp.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FerkitError, match="has 9 data rows but .* has 10"):
        prepare_splits(str(csv), ferplus=str(short), label_set="ferplus8")
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("\n".join([lines[0]] + [lines[6], lines[7]] + lines[1:6] + lines[8:]) + "\n")  # shifted rows
    with pytest.raises(FerkitError, match="Usage differs on 2 rows"):
        prepare_splits(str(csv), ferplus=str(swapped), label_set="ferplus8")
    for text, needle in [
        ("Usage,name,a,b\n", "header is"),
        (FERPLUS_HEADER + "\nTraining,fer0.png,1,2,3\n", "data row 0 .*expected 12 fields"),
        (FERPLUS_HEADER + "\nTraining,fer0.png,1,2,x,0,0,0,0,0,0,0\n", "must be integers"),
        (FERPLUS_HEADER + "\nTraining,fer0.png,1,2,-3,0,0,0,0,0,0,0\n", "must be in 0..1000"),
        (FERPLUS_HEADER + "\nTrain,fer0.png,1,2,3,0,0,0,0,0,0,0\n", "Usage 'Train'"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(FerkitError, match=needle):
            load_ferplus(bad)


# ----------------------------------------------------------------------------------------------- cleaning
def test_blank_and_histogram_rules_thresholds():
    flat = np.full((48, 48), 128, np.uint8)
    almost = flat.copy()
    almost[0, :4] = 130  # std ~0.1
    img = face(3)
    at_350 = img.copy().ravel()
    at_350[:350] = 7
    at_350[350:] = np.where(at_350[350:] == 7, 8, at_350[350:])  # exactly 350 pixels of value 7
    at_351 = at_350.copy()
    at_351[350] = 7
    imgs = np.stack([flat, almost, img, at_350.reshape(48, 48), at_351.reshape(48, 48)])
    assert blank_mask(imgs).tolist() == [True, True, False, False, False]
    assert histogram_mask(imgs).tolist() == [True, True, False, False, True]


def test_duplicates_summary_and_training_side_removal():
    a, b, c, d, e = (face(i) for i in range(5))
    # split 0 train, 1 val, 2 test
    images = np.stack([a, a, b, c, e, b, d, c, d, e])
    split_of = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 0])
    labels = np.array([0, 0, 1, 2, 4, 1, 3, 5, 3, 4])
    groups = duplicate_groups(images)
    assert groups[0] == groups[1] and groups[2] == groups[5] and groups[0] != groups[2]
    summ = duplicate_summary(groups, split_of, ("train", "val", "test"), labels)
    assert summ["within"] == {"train": 2, "val": 0, "test": 0}  # a twice, e twice
    assert summ["across"] == {"train-val": 1, "train-test": 1, "val-test": 1}  # b, c, d
    assert summ["label_conflicts"] == 1 and summ["distinct"] == 5  # c: 2 vs 5
    keep, rep = clean_arrays(images, labels, split_of, np.arange(10) + 100, ["duplicates"],
                             class_names=EMOTIONS)
    assert np.flatnonzero(~keep).tolist() == [1, 2, 3, 9]  # 2nd a, b and c (leak), 2nd e; val/test untouched
    removed = rep["by_rule"]["duplicates"]["removed"]
    assert removed["train"]["rows"] == [101, 102, 103, 109] and removed["val"]["total"] == removed["test"]["total"] == 0
    assert removed["train"]["per_class"]["fear"] == 1 and rep["sizes_after"] == {"train": 2, "val": 2, "test": 2}
    keep_all, _ = clean_arrays(images, labels, split_of, np.arange(10), ["duplicates:all"], class_names=EMOTIONS)
    kept = images[keep_all]
    assert len(np.unique(kept.reshape(len(kept), -1), axis=0)) == len(kept) == 5
    assert keep_all[7] and keep_all[8] and not keep_all[6]  # d is kept in test, dropped from val


def test_parse_rules():
    assert parse_rules(["duplicates", "blank,histogram:all"]) == [("blank", "train"), ("histogram", "all"),
                                                                  ("duplicates", "train")]
    assert parse_rules(None) == []
    with pytest.raises(FerkitError, match="unknown cleaning rule 'blur'"):
        parse_rules(["blur"])
    with pytest.raises(FerkitError, match="unknown scope"):
        parse_rules(["blank:test"])


def make_dirty_csv(path: Path) -> Path:
    rows = standard_rows((14, 7, 7))
    rows[2] = (2, np.zeros((48, 48), np.uint8), "Training")      # blank -> blank and histogram
    holes = face(77).copy()
    holes[:10, :] = 255                                          # 480 pixels at 255 -> histogram only
    rows[5] = (5, holes, "Training")
    rows[16] = (5, holes.copy(), "PublicTest")                   # histogram hit in val: flagged, kept
    rows[9] = (rows[20][0], rows[20][1], "Training")              # leak: row 9 == row 20 (PublicTest)
    rows[11] = (rows[10][0], rows[10][1], "Training")             # within-train copy
    return write_csv(path, rows)


def test_prepare_splits_clean_reports_and_keeps_test_splits_intact(tmp_path):
    p = make_dirty_csv(tmp_path / "dirty.csv")
    plain = prepare_splits(str(p))
    s = prepare_splits(str(p), clean=["blank", "histogram", "duplicates"])
    rep = s.info["cleaning"]
    assert rep["by_rule"]["blank"]["removed"]["train"]["rows"] == [2]
    assert rep["by_rule"]["histogram"]["flagged"]["train"]["total"] == 2  # the blank one and the bright band
    assert rep["by_rule"]["histogram"]["removed"]["train"]["rows"] == [5]  # row 2 already removed by blank
    assert rep["by_rule"]["histogram"]["flagged"]["val"]["total"] == 1
    assert rep["by_rule"]["duplicates"]["removed"]["train"]["rows"] == [9, 11]
    assert rep["by_rule"]["duplicates"]["summary"]["across"]["train-val"] == 2  # row 9 and the histogram pair
    assert rep["removed"] == {"train": 4, "val": 0, "test": 0}
    assert sorted(set(plain.train.rows) - set(s.train.rows)) == [2, 5, 9, 11]
    assert np.array_equal(s.val.rows, plain.val.rows) and np.array_equal(s.test.rows, plain.test.rows)
    s_all = prepare_splits(str(p), clean="histogram:all")
    assert 16 not in s_all.val.rows and s_all.info["cleaning"]["removed"]["val"] == 1
    json.dumps(s.info)  # the info travels into checkpoints: must be plain JSON


def test_folder_cleaning_reports_file_names(tmp_path):
    root = tmp_path / "d"
    for i in range(10):
        write_image(root / "happy" / f"{i}.png", face(i))
    write_image(root / "happy" / "blank.png", np.full((48, 48), 9, np.uint8))
    s = prepare_splits(str(root), clean=["blank:all"], seed=0)
    removed = [f for sp in ("train", "val", "test") for f in s.info["cleaning"]["by_rule"]["blank"]["removed"][sp]["files"]]
    assert removed == ["happy/blank.png"]


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_data_stats_json_table_and_chart(tmp_path, capsys):
    p = make_dirty_csv(tmp_path / "dirty.csv")
    out = tmp_path / "out"
    assert cli_main(["data", "stats", "--data", str(p), "--out", str(out), "--json", "--clean", "blank", "histogram"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["splits"] == list(USAGE_NAMES)
    assert res["class_counts"]["train"]["angry"] == 2 and sum(res["class_counts"]["train"].values()) == 14
    assert res["quality"]["blank"]["train"]["total"] == 1 and res["quality"]["histogram"]["val"]["total"] == 1
    assert res["quality"]["duplicates"]["across"]["train-val"] == 2
    assert sum(res["class_counts_after_cleaning"]["train"].values()) == 12
    chart = cv2.imread(str(out / "class_counts.png"))
    assert chart is not None and chart.shape[0] > 200
    assert cli_main(["data", "stats", "--data", str(p), "--out", str(out), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "Training" in text and "disgust" in text and "histogram rule" in text and "total" in text


def test_cli_data_clean_and_errors(tmp_path, capsys):
    p = make_dirty_csv(tmp_path / "dirty.csv")
    assert cli_main(["data", "clean", "--data", str(p), "--rules", "duplicates", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["by_rule"]["duplicates"]["removed"]["train"]["rows"] == [5, 9, 11]  # 5 has a twin in val (16)
    assert cli_main(["data", "clean", "--data", str(p)]) == 0
    assert "size after" in capsys.readouterr().out
    assert cli_main(["data", "clean", "--data", str(p), "--rules", "sharpness"]) == 2
    assert "unknown cleaning rule" in capsys.readouterr().err
    assert cli_main(["data", "stats", "--data", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferkit: error:") and err.count("\n") == 1


def test_data_command_module_imports_nothing_heavy():
    code = ("import sys, ferkit.commands.data, ferkit.data; "
            "heavy = [m for m in ('torch', 'matplotlib', 'ferkit.data.folders') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------------- real data
README_COUNTS = {  # ../shared/data/fer2013/README.md
    "Training": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "PublicTest": [467, 56, 496, 895, 653, 415, 607],
    "PrivateTest": [491, 55, 528, 879, 594, 416, 626],
}


@pytest.mark.slow
@pytest.mark.realdata
def test_real_fer2013_counts(fer2013_csv):
    ds = load_fer2013(fer2013_csv)
    assert len(ds) == 35887 and not ds.skipped
    assert ds.rows.tolist() == list(range(35887))
    for k, name in enumerate(USAGE_NAMES):
        idx = ds.split(name)
        assert np.bincount(ds.labels[idx], minlength=7).tolist() == README_COUNTS[name]
    assert (ds.split("Training") == np.arange(28709)).all() and ds.split("PrivateTest")[0] == 32298
    s = prepare_splits(str(fer2013_csv))
    assert [len(s.train), len(s.val), len(s.test)] == [28709, 3589, 3589]


@pytest.mark.slow
@pytest.mark.realdata
def test_real_ferplus_alignment(fer2013_csv, ferplus_csv, tmp_path):
    fp = load_ferplus(ferplus_csv)
    ds = load_fer2013(fer2013_csv)
    assert len(fp) == 35887 and (fp.usage == ds.usage).all()
    assert int(fp.dropped_by_ferplus.sum()) == 173
    assert np.bincount(fp.usage[fp.dropped_by_ferplus], minlength=3).tolist() == [148, 10, 15]
    s = prepare_splits(str(fer2013_csv), label_set="ferplus8", ferplus=str(ferplus_csv), ferplus_mode="soft")
    reasons = s.info["ferplus"]["reasons"]
    assert reasons["no_image"] == 173 and sum(reasons.values()) == 35887
    assert len(s.train) + len(s.val) + len(s.test) == reasons["kept"]
    assert s.train.soft.shape == (len(s.train), 8) and np.allclose(s.train.soft.sum(1), 1, atol=1e-5)
    # row 0 of both files: FER+ votes neutral 4, sadness 1, anger 3, disgust 2 -> neutral
    assert s.train.rows[0] == 0 and s.train.labels[0] == FERPLUS_EMOTIONS.index("neutral")
    # a FER+ file shifted by one row is refused (the Usage column stops lining up at the split borders)
    lines = ferplus_csv.read_text().splitlines()
    shifted = tmp_path / "shifted.csv"
    shifted.write_text("\n".join([lines[0], lines[-1]] + lines[1:-1]) + "\n")
    with pytest.raises(FerkitError, match="does not line up"):
        prepare_splits(str(fer2013_csv), label_set="ferplus8", ferplus=str(shifted))
