"""training/dataset/cache.py through prepare(): decode once, spill to disk, shard by rank, decode in a pool."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.dicom_builders import read_labels_csv, truncate
from training.dataset.cache import MIN_FILES_PER_WORKER
from training.dataset.dicom import load_image
from training.dataset.grayscale import to_uint8
from training.dataset.loader import BatchLoader
from training.dataset.prepare import DataOptions, prepare
from training.synthetic import generate


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    generate(root, count=30, size=64)
    return root


def test_files_are_decoded_once_and_never_read_again(dataset: Path, tmp_path: Path) -> None:
    data = prepare({"train": dataset}, DataOptions(image_size=(24, 24), workers=1))
    assert data.summary["decode"]["files"] == 30
    moved = tmp_path / "gone"
    shutil.move(dataset, moved)  # nothing to read any more
    for split in (data.train, data.validation):
        loader = BatchLoader(split, batch_size=7, shuffle=True, augment=0.5, seed=0)
        for epoch in range(2):
            loader.set_epoch(epoch)
            assert sum(len(labels) for _, labels in loader) == len(split)


def test_cache_rows_are_load_image_quantized_even_after_dropping_bad_files(dataset: Path) -> None:
    rows = read_labels_csv(dataset)
    truncate(dataset / rows[0][0])
    truncate(dataset / rows[17][0])
    data = prepare({"train": dataset}, DataOptions(image_size=(20, 24), on_bad_file="skip", val_fraction=0.3))
    assert len(data.bad_files) == 2
    for split in (data.train, data.validation):
        for row, file in enumerate(split.files):
            expected = to_uint8(load_image(dataset / file, image_size=(20, 24)))
            np.testing.assert_array_equal(split.images[row].numpy(), expected, err_msg=file)


def test_a_tiny_memory_budget_spills_the_cache_to_disk(dataset: Path, tmp_path: Path) -> None:
    in_memory = prepare({"train": dataset}, DataOptions(image_size=(24, 24)))
    cache_dir = tmp_path / "cache"
    on_disk = prepare({"train": dataset}, DataOptions(image_size=(24, 24), cache_memory_mb=0, cache_dir=cache_dir))
    assert in_memory.summary["cache"]["location"] == "memory"
    assert on_disk.summary["cache"]["location"] == "disk"
    assert list(cache_dir.iterdir()) == []  # the memmap's file is unlinked once mapped
    for side in ("train", "validation"):
        a, b = getattr(in_memory, side), getattr(on_disk, side)
        assert a.files == b.files
        assert torch.equal(a.images, b.images)
    batches = list(BatchLoader(on_disk.train, batch_size=8, shuffle=True, augment=1.0, seed=3))
    assert sum(len(labels) for _, labels in batches) == len(on_disk.train)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_shards_that_cover_everything(dataset: Path, world_size: int) -> None:
    whole = prepare({"train": dataset}, DataOptions(image_size=(16, 16)))
    shards = [
        prepare({"train": dataset}, DataOptions(image_size=(16, 16), rank=rank, world_size=world_size))
        for rank in range(world_size)
    ]
    for side in ("train", "validation"):
        parts = [getattr(shard, side).files for shard in shards]
        assert sorted(f for part in parts for f in part) == sorted(getattr(whole, side).files)
        assert len({f for part in parts for f in part}) == sum(len(part) for part in parts)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for rank, shard in enumerate(shards):
        assert shard.summary["decode"]["files"] == len(shard.train) + len(shard.validation)
        assert all(entry["rank"] == rank for entry in shard.summary["files"] if entry["file"] in shard.train.files)


def test_a_process_pool_decodes_the_same_images(tmp_path: Path) -> None:
    root = tmp_path / "train"
    generate(root, count=2 * MIN_FILES_PER_WORKER, size=64)
    one = prepare({"train": root}, DataOptions(image_size=(16, 16), workers=1))
    two = prepare({"train": root}, DataOptions(image_size=(16, 16), workers=2))
    assert (one.summary["decode"]["processes"], two.summary["decode"]["processes"]) == (1, 2)
    assert one.train.files == two.train.files
    assert torch.equal(one.train.images, two.train.images)
