"""Data sets for the search: in-memory uint8 images with fixed train / validation / test splits.

* ``digits`` (the default): scikit-learn's copy of the UCI optical handwritten digits, 1797 real
  8x8 grey images with 17 grey levels, 10 classes. It ships inside scikit-learn, so a search runs
  offline with no arguments.
* ``cifar10`` / ``cifar100``: the official "python version" files read from ``--data-dir`` (either
  the ``cifar-10-batches-py`` / ``cifar-100-python`` folder itself or the folder that holds it; the
  environment variable ``CODESIGN_DATA_DIR`` gives the default). Any number of rows per batch file
  is accepted, so a subset in the official format reads unchanged. Nothing is downloaded unless
  ``download=True`` (``--download``), which fetches the official archive and checks its MD5.

Splits are a pure function of the data and ``split_seed`` (not of the search seed), so every trial
and every search sees the same images: the official test set is the test split (digits: 20 % held
out); ``val_fraction`` of the training images is held out as the validation split that a search
scores architectures on; :meth:`DataBundle.weight_arch_split` halves the rest into the weight and
architecture splits of the differentiable search.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from hw_models.errors import CodesignError

__all__ = ["DATASETS", "Split", "DataBundle", "load_dataset", "batches", "default_data_dir", "DataError"]

DATASETS = ("digits", "cifar10", "cifar100")


class DataError(CodesignError):
    """A data set is missing, malformed or cannot be fetched (one-line message)."""


#: Official archives (https://www.cs.toronto.edu/~kriz/cifar.html) and their published MD5 sums.
CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels", names_key="label_names",
                    classes=10),
    "cifar100": dict(folder="cifar-100-python", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names", classes=100),
}


@dataclass
class Split:
    """Images as uint8 NCHW and int64 labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"Split.x must be uint8 NCHW, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"Split.y must have {self.x.shape[0]} labels, got {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor | Sequence[int]) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.x[index], self.y[index])


@dataclass
class DataBundle:
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]          # per channel, in the units of the stored uint8 values
    std: tuple[float, ...]
    augment: bool                    # random crop (pad 4) + horizontal flip when training
    classes: list[str] = field(default_factory=list)
    source: str = ""

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() - mean) / std

    def weight_arch_split(self, seed: int = 0) -> tuple[Split, Split]:
        """Disjoint halves of the training split: (weights, architecture) for the supernet."""
        g = torch.Generator().manual_seed(10_007 + seed)
        perm = torch.randperm(len(self.train), generator=g)
        half = len(perm) // 2
        return self.train.subset(perm[:half].sort().values), self.train.subset(perm[half:].sort().values)

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (f"{self.name}: {self.num_classes} classes, {c}x{h}x{w}, train {len(self.train)} / "
                f"val {len(self.val)} / test {len(self.test)} images ({self.source})")


def default_data_dir() -> Path | None:
    env = os.environ.get("CODESIGN_DATA_DIR")
    return Path(env) if env else None


# ---------------------------------------------------------------------------------------------


def _hold_out(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[tuple, tuple]:
    """Split off ``fraction`` of the rows (a fixed permutation) -> ((x_rest, y_rest), (x_out, y_out))."""
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    out, rest = np.sort(perm[:k]), np.sort(perm[k:])
    return (x[rest], y[rest]), (x[out], y[out])


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)),
                 torch.from_numpy(np.asarray(y, dtype=np.int64)))


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.astype(np.float64)
    mean = xf.mean(axis=(0, 2, 3))
    std = xf.std(axis=(0, 2, 3))
    std[std == 0] = 1.0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _limit(x: np.ndarray, y: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    return (x, y) if limit is None or limit >= len(y) else (x[:limit], y[:limit])


def _load_digits(val_fraction: float, split_seed: int, train_limit: int | None) -> DataBundle:
    try:
        from sklearn.datasets import load_digits
    except ImportError:                                    # pragma: no cover - sklearn is a dependency
        raise DataError("the digits data set needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]                 # (1797, 1, 8, 8), values 0..16
    y = d.target.astype(np.int64)
    (x_tr, y_tr), (x_te, y_te) = _hold_out(x, y, 0.2, split_seed)
    (x_tr, y_tr), (x_va, y_va) = _hold_out(x_tr, y_tr, val_fraction, split_seed + 1)
    x_tr, y_tr = _limit(x_tr, y_tr, train_limit)
    mean, std = _stats(x_tr)
    return DataBundle("digits", 10, (1, 8, 8), _to_split(x_tr, y_tr), _to_split(x_va, y_va),
                      _to_split(x_te, y_te), mean, std, augment=False,
                      classes=[str(i) for i in range(10)], source="scikit-learn load_digits (UCI ML hand-written digits)")


def _resolve_cifar_dir(name: str, data_dir: Path | None) -> Path | None:
    spec = CIFAR[name]
    if data_dir is None:
        return None
    first = spec["train"][0]
    for cand in (data_dir, data_dir / spec["folder"]):
        if (cand / first).is_file():
            return cand
    return None


def _download(name: str, root: Path) -> Path:
    spec = CIFAR[name]
    root.mkdir(parents=True, exist_ok=True)
    archive = root / Path(spec["url"]).name
    if not archive.is_file():
        tmp = archive.with_suffix(".part")
        try:
            with urllib.request.urlopen(spec["url"], timeout=60) as resp, open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f, length=1 << 20)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(f"could not download {spec['url']}: {getattr(exc, 'reason', exc)}") from None
        tmp.replace(archive)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    if md5 != spec["md5"]:
        raise DataError(f"{archive}: MD5 {md5} does not match the official {spec['md5']}; delete it and retry")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")
    return root / spec["folder"]


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CIFAR batch file ({exc})") from None
    if not isinstance(d, dict) or "data" not in d or label_key not in d:
        raise DataError(f"{path}: not a CIFAR batch (needs 'data' and {label_key!r})")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(name: str, data_dir: Path | None, download: bool, val_fraction: float, split_seed: int,
                train_limit: int | None) -> DataBundle:
    spec = CIFAR[name]
    folder = _resolve_cifar_dir(name, data_dir)
    if folder is None:
        if download:
            root = data_dir or Path.home() / ".cache" / "codesign" / "data"
            folder = _download(name, root)
        elif data_dir is None:
            raise DataError(f"{name} needs --data-dir (the folder holding {spec['folder']}/) or "
                            f"CODESIGN_DATA_DIR; add --download to fetch the official archive")
        else:
            raise DataError(f"{name}: no {spec['folder']}/{spec['train'][0]} under {data_dir}; "
                            f"point --data-dir at it or add --download")
    xs, ys = [], []
    for f in spec["train"]:
        x, y = _read_batch(folder / f, spec["label_key"])
        xs.append(x)
        ys.append(y)
    x_tr, y_tr = np.concatenate(xs), np.concatenate(ys)
    test = [_read_batch(folder / f, spec["label_key"]) for f in spec["test"]]
    x_te, y_te = np.concatenate([t[0] for t in test]), np.concatenate([t[1] for t in test])
    for label, y in (("train", y_tr), ("test", y_te)):
        if y.size and (y.min() < 0 or y.max() >= spec["classes"]):
            raise DataError(f"{folder}: {label} labels outside 0..{spec['classes'] - 1}")
    classes: list[str] = []
    meta = folder / spec["meta"]
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                classes = list(pickle.load(f, encoding="latin1").get(spec["names_key"], []))
        except Exception:                                   # noqa: BLE001 - names are cosmetic
            classes = []
    (x_tr, y_tr), (x_va, y_va) = _hold_out(x_tr, y_tr, val_fraction, split_seed)
    x_tr, y_tr = _limit(x_tr, y_tr, train_limit)
    mean, std = _stats(x_tr)
    return DataBundle(name, spec["classes"], (3, 32, 32), _to_split(x_tr, y_tr), _to_split(x_va, y_va),
                      _to_split(x_te, y_te), mean, std, augment=True, classes=classes, source=str(folder))


def load_dataset(name: str = "digits", data_dir: str | Path | None = None, download: bool = False,
                 val_fraction: float = 0.1, split_seed: int = 0, train_limit: int | None = None) -> DataBundle:
    """Load ``name`` (see :data:`DATASETS`) into memory with fixed train/val/test splits."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    if not 0.0 < val_fraction < 0.9:
        raise DataError(f"validation fraction must be in (0, 0.9), got {val_fraction}")
    if train_limit is not None and train_limit < 1:
        raise DataError(f"train limit must be >= 1, got {train_limit}")
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if name == "digits":
        return _load_digits(val_fraction, split_seed, train_limit)
    if path is not None and not path.exists() and not download:
        raise DataError(f"data directory {path} does not exist")
    return _load_cifar(name, path, download, val_fraction, split_seed, train_limit)


# ---------------------------------------------------------------------------------------------


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip, per image (uint8 in, out)."""
    n, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 8)
    out = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])
    cols = torch.where(flip[:, None], cols.flip(1), cols).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def batches(bundle: DataBundle, split: Split, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, augment: bool = False,
            device: torch.device | str = "cpu", drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches (x, y) on ``device``; shuffling/augmentation use ``generator``."""
    n = len(split)
    generator = generator or torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        x = split.x[idx]
        if augment:
            x = _augment(x, generator)
        yield bundle.normalize(x.to(device, non_blocking=True)), split.y[idx].to(device, non_blocking=True)
