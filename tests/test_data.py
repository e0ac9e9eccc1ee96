import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dst.data import (
    CIFAR10_MEAN,
    DataBundle,
    TensorImageLoader,
    build_data,
    channel_stats,
    imagenet_loaders,
    load_cifar10,
    load_npz,
    make_synthetic,
)

SUBSET = Path(__file__).resolve().parents[2] / "shared/data/cifar10_subset.npz"


def make_loader(n=23, size=8, **kw):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n)  # label == index, so each output sample names its source
    opts = dict(batch_size=5, train=True, augment=True, mean=(0, 0, 0), std=(1, 1, 1), seed=3)
    opts.update(kw)
    return images, TensorImageLoader(images, labels, **opts)


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_determinism_and_epochs():
    _, a = make_loader()
    _, b = make_loader()
    for loader in (a, b):
        loader.set_epoch(4)
    first, second = batches(a), batches(b)
    assert len(first) == len(a) == 23 // 5
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(5)
    other = batches(a)
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))
    _, c = make_loader(seed=4)
    c.set_epoch(4)
    assert not torch.equal(first[0][1], batches(c)[0][1])


def test_augmentation_is_crop_and_flip_of_padded_image():
    images, loader = make_loader(pad=2)
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (5, 3, 8, 8)
    restored = (x * 255).round()
    assert not torch.equal(restored, images[y].float())
    for sample, idx in zip(restored, y.tolist(), strict=True):
        padded = F.pad(images[idx].float()[None], (2, 2, 2, 2), mode="reflect")[0]
        views = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        views += [v.flip(-1) for v in views]
        assert any(torch.equal(sample, v) for v in views)


def test_no_augmentation_normalises_exactly():
    images, loader = make_loader(train=False, augment=False, mean=(0.5, 0.4, 0.3),
                                 std=(0.2, 0.25, 0.5))
    x, y = next(iter(loader))
    assert torch.equal(y, torch.arange(5))
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images[:5].float() / 255 - mean) / std)
    assert len(loader) == 5 and len(batches(loader)[-1][1]) == 3  # eval keeps the last batch


def test_ddp_shards_are_disjoint_and_equal():
    shards = []
    for rank in range(2):
        _, loader = make_loader(rank=rank, world_size=2, batch_size=4, drop_last=False)
        loader.set_epoch(1)
        shards.append(torch.cat([y for _, y in loader]))
    assert len(shards[0]) == len(shards[1]) == 11
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert set(shards[0].tolist()) | set(shards[1].tolist()) <= set(range(23))
    _, single = make_loader(batch_size=4)
    single.set_epoch(1)
    order = single.epoch_indices()
    assert torch.equal(shards[0], order[0:22:2]) and torch.equal(shards[1], order[1:22:2])


def test_iter_from_skips_batches():
    _, loader = make_loader()
    loader.set_epoch(2)
    full = batches(loader)
    resumed = [(x.clone(), y.clone()) for x, y in loader.iter_from(2)]
    assert len(resumed) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="batch_index"):
        loader.iter_from(len(loader) + 1)


def test_channels_last_and_on_device_match():
    _, plain = make_loader()
    _, fancy = make_loader(channels_last=True, on_device=True)
    (xa, ya), (xb, yb) = next(iter(plain)), next(iter(fancy))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_rejects_bad_arguments():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.int64)
    common = dict(batch_size=2, train=True, augment=True, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="uint8"):
        TensorImageLoader(images.float(), labels, **common)
    with pytest.raises(ValueError, match="one value per channel"):
        TensorImageLoader(images, labels, **{**common, "mean": (0, 0)})
    with pytest.raises(ValueError, match="rank"):
        TensorImageLoader(images, labels, rank=2, world_size=2, **common)


def write_npz(path, channels_last):
    rng = np.random.default_rng(0)
    shape = (6, 8, 8, 3) if channels_last else (6, 3, 8, 8)
    train_x = rng.integers(0, 256, shape, dtype=np.uint8)
    test_x = train_x[:2].copy()
    np.savez(path, train_x=train_x, train_y=np.arange(6) % 3, test_x=test_x,
             test_y=np.array([0, 2]))
    return train_x


@pytest.mark.parametrize("channels_last", [False, True])
def test_npz_layouts(tmp_path, channels_last):
    raw = write_npz(tmp_path / "d.npz", channels_last)
    train_x, train_y, test_x, test_y = load_npz(tmp_path / "d.npz")
    assert train_x.shape == (6, 3, 8, 8) and test_x.shape == (2, 3, 8, 8)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    expected = raw.transpose(0, 3, 1, 2) if channels_last else raw
    assert np.array_equal(train_x.numpy(), expected)
    bundle = build_data("npz", path=str(tmp_path / "d.npz"), batch_size=4)
    assert isinstance(bundle, DataBundle)
    assert bundle.num_classes == 3 and bundle.input_shape == (3, 8, 8)


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")
    x = np.zeros((2, 3, 8, 8), np.uint8)
    np.savez(tmp_path / "partial.npz", train_x=x, train_y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="test_x, test_y"):
        load_npz(tmp_path / "partial.npz")
    np.savez(tmp_path / "float.npz", train_x=x.astype(np.float32), train_y=np.zeros(2),
             test_x=x, test_y=np.zeros(2))
    with pytest.raises(ValueError, match="uint8"):
        load_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "labels.npz", train_x=x, train_y=np.zeros(3, np.int64), test_x=x,
             test_y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="one label per image"):
        load_npz(tmp_path / "labels.npz")
    np.savez(tmp_path / "chan.npz", train_x=np.zeros((2, 5, 8, 8), np.uint8),
             train_y=np.zeros(2, np.int64), test_x=x, test_y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="channel axis"):
        load_npz(tmp_path / "chan.npz")


def test_channel_stats():
    x = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)
    x[:, 1] = 255
    x[:2, 0] = 51
    mean, std = channel_stats(x, chunk=3)
    assert mean == pytest.approx((0.1, 1.0)) and std[0] == pytest.approx(0.1)


def test_real_cifar10_subset():
    if not SUBSET.is_file():
        pytest.skip(f"shared CIFAR-10 subset not found at {SUBSET}")
    train_x, train_y, test_x, test_y = load_npz(SUBSET)
    assert train_x.shape == (5085, 3, 32, 32) and test_x.shape == (1017, 3, 32, 32)
    assert set(train_y.unique().tolist()) == set(range(10))
    mean, _ = channel_stats(train_x)
    assert mean == pytest.approx(CIFAR10_MEAN, abs=0.02)


def write_fake_cifar(root: Path):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # The official files are Python 2 pickles whose str keys torchvision reads (encoding latin1)
    # as str; a Python 3 pickle with str keys loads the same way.
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 "labels": [0, 1, 2, 9], "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    return folder


def test_cifar10_loader_on_fake_release(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    folder = write_fake_cifar(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    train_x, train_y, test_x, test_y = load_cifar10(tmp_path)
    assert train_x.shape == (20, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (4, 3, 32, 32) and test_y.tolist() == [0, 1, 2, 9]
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"][0]
    assert np.array_equal(train_x[0].numpy().reshape(-1), raw)  # official rows are CHW
    bundle = build_data("cifar10", root=str(tmp_path), batch_size=8)
    assert bundle.num_classes == 10 and len(bundle.train) == 2 and len(bundle.test) == 1


def test_cifar10_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "data")
    msg = str(info.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "test_batch" in msg
    assert "data.download=true" in msg


def write_image_folder(root: Path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(root / split / cls / f"{i}.{ext}")


def test_image_folder_loaders(tmp_path):
    write_image_folder(tmp_path)
    train, val = imagenet_loaders(tmp_path, batch_size=2, workers=0, seed=1, image_size=8,
                                  resize=9, eval_batch_size=4)
    assert train.classes == ["cat", "dog"] and len(train) == 3 and len(val) == 2
    train.set_epoch(1)
    x, y = next(iter(train))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = batches(train)
    assert torch.equal(again[0][0], x)
    skipped = batches(train.iter_from(1))
    assert len(skipped) == 2 and torch.equal(skipped[0][0], again[1][0])
    train.set_epoch(2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(again, batches(train), strict=True))
    xv, yv = next(iter(val))
    assert xv.shape == (4, 3, 8, 8) and yv.tolist() == [0, 0, 0, 1]
    bundle = build_data("imagenet", root=str(tmp_path), workers=0, image_size=8, resize=9,
                        batch_size=2)
    assert bundle.num_classes == 2 and bundle.input_shape == (3, 8, 8)


def test_image_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/<class>/\\*.JPEG"):
        imagenet_loaders(tmp_path, batch_size=2, workers=0)


def test_build_data_errors():
    with pytest.raises(ValueError, match="valid names: cifar10, npz, synthetic, imagenet"):
        build_data("mnist")
    with pytest.raises(ValueError, match="valid options: n_train"):
        build_data("synthetic", n_trian=5)


def test_synthetic_is_deterministic_and_learnable():
    a = make_synthetic(n_train=256, n_test=64, seed=5)
    b = make_synthetic(n_train=256, n_test=64, seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert a[0].dtype == torch.uint8 and a[0].shape == (256, 3, 32, 32)
    bundle = build_data("synthetic", n_train=256, n_test=64, batch_size=64, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(8):
        bundle.train.set_epoch(epoch)
        for x, y in bundle.train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in bundle.test)
    assert correct / 64 > 0.5  # chance is 0.1
