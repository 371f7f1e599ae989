"""Batched augmentation: exact crops and flips, identity at strength 0, reproducible, mixtures."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from analysis.errors import InputError
from trainables.augment import MEAN, STD, BatchAugment, cutmix, mixup, normalize

SIZE = 16
Mixed = tuple[torch.Tensor, torch.Tensor]


def _images(batch: int = 12, chans: int = 3, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, chans, size, size), generator=gen, dtype=torch.uint8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _crops_of_padded(image: torch.Tensor, pad: int) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every shift (and mirror) of one image with replicated edges, normalised: the reference."""
    padded = F.pad(image[None].float(), (pad,) * 4, mode="replicate")[0]
    h, w = image.shape[-2:]
    out = {}
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            crop = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
            for mirrored in (False, True):
                view = crop.flip(-1) if mirrored else crop
                out[(dy, dx, mirrored)] = normalize(view.to(torch.uint8))
    return out


def test_normalize_constants_and_range() -> None:
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    y = normalize(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([-2.0, 2.0, (128 / 255 - MEAN) / STD]))
    assert (MEAN, STD) == (0.5, 0.25)
    with pytest.raises(TypeError, match="uint8"):
        normalize(x.float())


@pytest.mark.parametrize("mode", ["pad_crop", "rrc", "none"])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("chans", [1, 3])
def test_output_shape_dtype_range(mode: str, flip: bool, chans: int) -> None:
    images = _images(chans=chans)
    out = BatchAugment(SIZE, mode=mode, flip=flip, strength=2.0)(images, _gen())  # type: ignore[arg-type]
    assert out.shape == images.shape
    assert out.dtype == torch.float32 and out.is_contiguous()
    # Gathers copy pixels and bilinear sampling is a convex combination: never outside the range.
    lo, hi = normalize(images).amin(), normalize(images).amax()
    assert out.amin() >= lo - 1e-5 and out.amax() <= hi + 1e-5


@pytest.mark.parametrize("mode", ["pad_crop", "rrc", "none"])
def test_identity_at_strength_zero(mode: str) -> None:
    images = _images()
    aug = BatchAugment(SIZE, mode=mode, flip=True, strength=0.0)  # type: ignore[arg-type]
    assert torch.equal(aug(images, _gen(1)), normalize(images))


@pytest.mark.parametrize("mode", ["pad_crop", "rrc", "none"])
def test_seeded_generator_reproduces_the_batch(mode: str) -> None:
    images = _images()
    aug = BatchAugment(SIZE, mode=mode, flip=True)  # type: ignore[arg-type]
    assert torch.equal(aug(images, _gen(7)), aug(images, _gen(7)))
    assert not torch.equal(aug(images, _gen(7)), aug(images, _gen(8)))


@pytest.mark.parametrize("mode", ["pad_crop", "rrc"])
def test_each_sample_gets_its_own_crop(mode: str) -> None:
    images = _images(batch=1).expand(32, -1, -1, -1)  # one image, 32 times
    out = BatchAugment(SIZE, mode=mode)(images, _gen())  # type: ignore[arg-type]
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) >= 10  # 25 possible shifts at pad 2; ~18 expected


@pytest.mark.parametrize(("strength", "pad"), [(1.0, 2), (0.5, 1), (2.0, 4)])
def test_pad_crop_is_an_exact_shift_of_the_padded_image(strength: float, pad: int) -> None:
    # pad = round(strength * SIZE / 8); every output must be one of the reference crops.
    images = _images(batch=24, size=SIZE)
    out = BatchAugment(SIZE, mode="pad_crop", flip=True, strength=strength)(images, _gen(3))
    seen = set()
    for image, result in zip(images, out, strict=True):
        matches = [k for k, ref in _crops_of_padded(image, pad).items() if torch.equal(ref, result)]
        assert matches, "output is not a shift of the edge-padded image within the pad"
        seen.add(matches[0])
    assert any(k[2] for k in seen) and not all(k[2] for k in seen)  # both flipped and not
    assert max(max(abs(k[0]), abs(k[1])) for k in seen) == pad  # the full range is used


def test_flip_only_mode_mirrors_about_half() -> None:
    images = _images(batch=64)
    out = BatchAugment(SIZE, mode="none", flip=True)(images, _gen())
    flipped = [torch.equal(o, normalize(i).flip(-1)) for i, o in zip(images, out, strict=True)]
    kept = [torch.equal(o, normalize(i)) for i, o in zip(images, out, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 <= sum(flipped) <= 48


def test_no_flip_keeps_orientation() -> None:
    # A left-right asymmetric image: glyph mode (flip=False) must never mirror it.
    image = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8)
    image[..., :, : SIZE // 2] = 255
    out = BatchAugment(SIZE, mode="pad_crop", flip=False)(image.expand(64, -1, -1, -1), _gen())
    left, right = (
        out[..., : SIZE // 2].mean(dim=(1, 2, 3)),
        out[..., SIZE // 2 :].mean(dim=(1, 2, 3)),
    )
    assert (left > right).all()


def test_rrc_resizes_any_input_and_zooms_in() -> None:
    big = _images(size=24)
    out = BatchAugment(SIZE, mode="rrc")(big, _gen())
    assert out.shape == (12, 3, SIZE, SIZE)
    # Strength 0 with a different input size is a deterministic resize, not a random crop.
    resize = BatchAugment(SIZE, mode="rrc", strength=0.0)
    assert torch.equal(resize(big, _gen(1)), resize(big, _gen(2)))
    # A crop of a smooth ramp shows a smaller span of the ramp than the whole image.
    ramp = torch.linspace(0, 255, SIZE).round().to(torch.uint8).expand(8, 1, SIZE, SIZE)
    crops = BatchAugment(SIZE, mode="rrc", strength=1.0)(ramp.contiguous(), _gen())
    span = crops[..., -1] - crops[..., 0]
    assert (
        span.mean(dim=(1, 2)) < normalize(ramp)[..., -1].mean() - normalize(ramp)[..., 0].mean()
    ).all()


def test_rejects_wrong_inputs() -> None:
    with pytest.raises(TypeError, match="uint8"):
        BatchAugment(SIZE)(_images().float(), _gen())
    with pytest.raises(ValueError, match="16x16"):
        BatchAugment(SIZE)(_images(size=20), _gen())
    with pytest.raises(InputError, match="mode"):
        BatchAugment(SIZE, mode="jitter")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"training\.aug_strength"):
        BatchAugment(SIZE, strength=-1.0)


def test_mixup_targets_are_the_same_mixture_as_the_images() -> None:
    # With one-hot "images", mixing images and targets alike means x_mixed == y_soft exactly.
    y = torch.randint(0, 5, (32,), generator=_gen())
    x = F.one_hot(y, 5).float()
    x_mixed, y_soft = mixup(x, y, 0.4, 5, _gen(1))
    torch.testing.assert_close(y_soft.sum(1), torch.ones(32))
    torch.testing.assert_close(x_mixed, y_soft)
    assert not torch.equal(y_soft, x)  # something was mixed
    again = mixup(x, y, 0.4, 5, _gen(1))
    assert torch.equal(again[0], x_mixed) and torch.equal(again[1], y_soft)


def test_cutmix_targets_match_the_pasted_area() -> None:
    b, h, w = 16, 12, 10
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, h, w).contiguous()
    y = torch.arange(b)  # class = sample index = pixel value
    for seed in range(5):
        mixed, y_soft = cutmix(x, y, 1.0, b, _gen(seed))
        torch.testing.assert_close(y_soft.sum(1), torch.ones(b))
        counts = F.one_hot(mixed[:, 0].long().flatten(1), b).float().mean(1)
        torch.testing.assert_close(y_soft, counts)


@pytest.mark.parametrize("mix", [mixup, cutmix])
def test_alpha_zero_is_one_hot_and_bad_alpha_is_named(mix: Callable[..., Mixed]) -> None:
    y = torch.tensor([0, 2, 1])
    x = torch.randn(3, 1, 4, 4)
    x_out, target = mix(x, y, 0.0, 3, _gen())
    assert x_out is x and torch.equal(target, F.one_hot(y, 3).float())
    with pytest.raises(InputError, match=r"training\.mixup_alpha"):
        mix(x, y, -0.5, 3, _gen())


@pytest.mark.gpu
def test_runs_on_cuda_with_either_generator() -> None:
    images = _images().cuda()
    for mode in ("pad_crop", "rrc"):
        aug = BatchAugment(SIZE, mode=mode, flip=True)
        for gen in (_gen(), torch.Generator(device="cuda").manual_seed(0)):
            out = aug(images, gen)
            assert out.is_cuda and out.shape == images.shape
    cpu = BatchAugment(SIZE, mode="pad_crop", flip=True)(images.cpu(), _gen(5))
    gpu = BatchAugment(SIZE, mode="pad_crop", flip=True)(images, _gen(5)).cpu()
    # the same crops and flips; normalising may round differently on the GPU (a last-bit
    # difference, where another crop would move a pixel by at least 1/255/STD, ~0.015)
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-5)
