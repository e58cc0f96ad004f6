"""Data sets: the offline default, the official CIFAR layout (the real subset beside the checkout when
present), the opt-in download (exercised offline with a file:// archive), splits and batches."""
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import codesign.data as data
from codesign.data import DataError, batches, load_dataset
from hw_models.errors import CodesignError

SHARED = Path(os.environ.get("CODESIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SUBSET = SHARED / "cifar-10-batches-py"
needs_subset = pytest.mark.skipif(not (SUBSET / "data_batch_1").is_file(),
                                  reason=f"CIFAR-10 subset not found at {SUBSET} (set CODESIGN_SHARED_DATA)")


def test_digits_is_the_offline_default_with_fixed_disjoint_splits():
    b = load_dataset()
    assert b.name == "digits" and b.input_shape == (1, 8, 8) and b.num_classes == 10
    n = len(b.train) + len(b.val) + len(b.test)
    assert n == 1797 and len(b.test) == 359
    assert b.train.x.dtype == torch.uint8 and int(b.train.x.max()) <= 16
    # splits are disjoint: compare the rows themselves (digits has a few duplicate images, so count)
    rows = lambda s: {tuple(r) for r in s.x.view(len(s), -1).tolist()}
    assert len(rows(b.val) & rows(b.test)) <= 2
    again = load_dataset()
    assert torch.equal(again.val.x, b.val.x) and torch.equal(again.test.y, b.test.y)
    other = load_dataset(split_seed=1)
    assert not torch.equal(other.test.y, b.test.y)
    assert set(b.train.y.tolist()) == set(range(10))


def test_weight_arch_split_halves_the_training_split():
    b = load_dataset()
    w, a = b.weight_arch_split(0)
    assert abs(len(w) - len(a)) <= 1 and len(w) + len(a) == len(b.train)
    assert torch.equal(torch.cat([w.y, a.y]).sort().values, b.train.y.sort().values)
    w2, _ = b.weight_arch_split(0)
    assert torch.equal(w2.x, w.x)


@needs_subset
@pytest.mark.parametrize("where", ["parent", "folder"])
def test_reads_the_cifar10_subset_unchanged(where):
    b = load_dataset("cifar10", SHARED if where == "parent" else SUBSET)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10 and b.augment
    assert len(b.train) + len(b.val) == 5 * 1017 and len(b.test) == 1017
    assert b.test.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    x = torch.cat([b.train.x, b.val.x]).double()
    means = x.mean(dim=(0, 2, 3)).tolist()
    assert means == pytest.approx([125.9, 123.6, 114.3], abs=0.3)
    assert b.classes[:3] == ["airplane", "automobile", "bird"]


def test_missing_or_unasked_cifar_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CODESIGN_DATA_DIR", raising=False)
    cases = [
        (dict(name="cifar10"), "needs --data-dir"),
        (dict(name="cifar10", data_dir=tmp_path / "nope"), "does not exist"),
        (dict(name="cifar100", data_dir=tmp_path), "no cifar-100-python/train"),
        (dict(name="mnist"), "unknown dataset 'mnist'"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(CodesignError) as err:
            load_dataset(**kwargs)
        assert msg in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# the official layout, written by hand: CIFAR-100, a malformed file and --download (file:// URL)


def _batch(n, labels_key, rng, n_classes):
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            labels_key: rng.integers(0, n_classes, n).tolist(), "batch_label": "x", "filenames": ["f"] * n}


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _fake_cifar10(folder, rng, n=7):
    for i in range(1, 6):
        _write(folder / f"data_batch_{i}", _batch(n, "labels", rng, 10))
    _write(folder / "test_batch", _batch(5, "labels", rng, 10))
    _write(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})


def test_cifar100_layout_and_any_row_count(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    _write(folder / "train", _batch(40, "fine_labels", rng, 100))
    _write(folder / "test", _batch(9, "fine_labels", rng, 100))
    _write(folder / "meta", {"fine_label_names": [f"n{i}" for i in range(100)]})
    b = load_dataset("cifar100", tmp_path)
    assert b.num_classes == 100 and len(b.train) + len(b.val) == 40 and len(b.test) == 9
    raw = pickle.loads((folder / "test").read_bytes())
    assert torch.equal(b.test.x[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert b.test.y.tolist() == raw["fine_labels"]


def test_malformed_batch_is_a_one_line_error(tmp_path):
    rng = np.random.default_rng(0)
    _fake_cifar10(tmp_path, rng)
    bad = _batch(3, "labels", rng, 10)
    bad["data"] = bad["data"][:, :100]
    _write(tmp_path / "data_batch_3", bad)
    with pytest.raises(DataError, match="data_batch_3: 'data' must be uint8 N x 3072"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR batch"):
        load_dataset("cifar10", tmp_path)


def test_download_fetches_checks_and_extracts_only_when_asked(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    src = tmp_path / "src" / "cifar-10-batches-py"
    _fake_cifar10(src, rng)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    spec = dict(data.CIFAR["cifar10"], url=archive.as_uri(), md5=hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setitem(data.CIFAR, "cifar10", spec)
    root = tmp_path / "root"
    with pytest.raises(DataError):                              # not asked: nothing fetched
        load_dataset("cifar10", root)
    assert not root.exists()
    b = load_dataset("cifar10", root, download=True)
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(b.test) == 5 and b.classes[0] == "c0"
    # a corrupted archive is refused by its checksum
    monkeypatch.setitem(data.CIFAR, "cifar10", dict(spec, md5="0" * 32))
    with pytest.raises(DataError, match="MD5"):
        load_dataset("cifar10", tmp_path / "root2", download=True)


# --------------------------------------------------------------------------------------------
# batches


def test_batches_normalise_and_cover_the_split_once():
    b = load_dataset()
    g = torch.Generator().manual_seed(0)
    xs, ys = zip(*batches(b, b.train, 100, shuffle=True, generator=g))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and x.shape == (len(b.train), 1, 8, 8)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert torch.equal(y.sort().values, b.train.y.sort().values)
    assert not torch.equal(y, b.train.y)                          # shuffled


def test_augmentation_is_a_seeded_shifted_and_flipped_crop():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    a1 = data._augment(x, torch.Generator().manual_seed(5))
    a2 = data._augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a1, a2) and a1.shape == x.shape and a1.dtype == torch.uint8
    pad = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        crops = [pad[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(a1[i], c) or torch.equal(a1[i], c.flip(-1)) for c in crops)
