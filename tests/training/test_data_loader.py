"""training/dataset/loader.py: batches from the cache, per-epoch shuffling and batched augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.dataset.loader import BatchLoader, _affine_grid, augment_batch
from training.dataset.split import Split


def make_split(count: int = 23, size: tuple[int, int] = (12, 10)) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, *size), generator=generator, dtype=torch.uint8)
    return Split(
        images=images,
        labels=torch.arange(count, dtype=torch.int64),  # label = row, to follow each image
        files=[f"f{i}.dcm" for i in range(count)],
        patients=[f"p-{i}" for i in range(count)],
    )


@pytest.mark.parametrize(
    "batch_size, drop_last, batches", [(5, False, 5), (5, True, 4), (23, False, 1), (100, True, 0)]
)
def test_length_and_batch_shapes(batch_size: int, drop_last: bool, batches: int) -> None:
    loader = BatchLoader(make_split(), batch_size=batch_size, shuffle=True, augment=0.0, seed=0, drop_last=drop_last)
    out = list(loader)
    assert len(loader) == len(out) == batches
    for images, labels in out:
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape == (len(labels), 1, 12, 10)


def test_without_augmentation_images_are_the_cache_in_0_1() -> None:
    split = make_split()
    for images, labels in BatchLoader(split, batch_size=6, shuffle=True, augment=0.0, seed=1):
        assert torch.equal(images, split.images[labels].float() / 255.0)


def test_each_epoch_is_a_new_deterministic_permutation() -> None:
    loader = BatchLoader(make_split(), batch_size=4, shuffle=True, augment=0.0, seed=7)

    def order(epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return [int(label) for _, labels in loader for label in labels]

    assert sorted(order(0)) == list(range(23))
    assert order(0) == order(0) and order(1) == order(1) and order(0) != order(1)
    unshuffled = BatchLoader(make_split(), batch_size=4, shuffle=False, augment=0.0, seed=7)
    assert [int(label) for _, labels in unshuffled for label in labels] == list(range(23))


def test_augmentation_changes_images_deterministically_and_stays_in_range() -> None:
    split = make_split(64, (32, 32))
    loader = BatchLoader(split, batch_size=64, shuffle=False, augment=1.0, seed=2)
    (first, labels), (again, _) = next(iter(loader)), next(iter(loader))
    assert torch.equal(first, again)
    assert first.shape == (64, 1, 32, 32) and 0.0 <= first.min() and first.max() <= 1.0
    plain = split.images[labels].float() / 255.0
    assert (first - plain).abs().mean() > 0.05
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], first)


def test_augmentation_flips_about_half_the_images() -> None:
    images = torch.zeros(400, 1, 8, 8)
    images[..., :4] = 1.0  # left half bright
    out = augment_batch(images, 1e-6, torch.Generator().manual_seed(0))  # a flip, and nothing else to speak of
    flipped = (out[..., 4:].mean(dim=(1, 2, 3)) > 0.9).float().mean()
    assert 0.4 < float(flipped) < 0.6


def test_affine_grid_matches_torch() -> None:
    theta = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    expected = F.affine_grid(theta.view(5, 2, 3), [5, 1, 9, 7], align_corners=False)
    torch.testing.assert_close(_affine_grid(theta, 9, 7), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "batch_size"), ({"augment": 1.5}, "augment")])
def test_arguments_are_checked(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"batch_size": 4, "shuffle": True, "augment": 0.0, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        BatchLoader(make_split(), **arguments)  # type: ignore[arg-type]


def test_volumes_are_augmented_in_3d_deterministically_keeping_the_slice_order() -> None:
    """Volumes (B x C x D x H x W) through the same loader: flipped left-right about half the time, never along the
    slice axis, so a volume bright at its first slices stays so (slice order carries anatomy, and may carry a class)."""
    count = 200
    images = torch.zeros(count, 1, 8, 12, 12, dtype=torch.uint8)
    images[:, :, :4, :, :6] = 255  # bright: the first 4 slices, the left half
    split = Split(images=images, labels=torch.arange(count), files=[f"s{i}" for i in range(count)],
                  patients=[f"p-{i}" for i in range(count)])
    loader = BatchLoader(split, batch_size=count, shuffle=False, augment=1e-6, seed=3)
    (first, _), (again, _) = next(iter(loader)), next(iter(loader))
    assert torch.equal(first, again) and first.shape == (count, 1, 8, 12, 12)
    assert bool((first[:, :, :4].mean(dim=(1, 2, 3, 4)) > first[:, :, 4:].mean(dim=(1, 2, 3, 4)) + 0.4).all())
    flipped = (first[..., 6:].mean(dim=(1, 2, 3, 4)) > first[..., :6].mean(dim=(1, 2, 3, 4))).float().mean()
    assert 0.4 < float(flipped) < 0.6
    strong = next(iter(BatchLoader(split, batch_size=count, shuffle=False, augment=1.0, seed=3)))[0]
    assert 0.0 <= strong.min() and strong.max() <= 1.0 and (strong - first).abs().mean() > 0.02
