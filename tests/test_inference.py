"""Sliding-window inference, TTA, slice streaming, post-processing and volume metrics.

No checkpoint is needed here: dummy networks (identity, 3x3 convolutions) whose exact output
is known stand in for the U-Net.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from torch import nn

from emseg.errors import ConfigError, DataError
from emseg.hardware import auto_precision
from emseg.inference import (
    Preprocessing,
    VolumePredictor,
    WindowSettings,
    apply_tta,
    model_stride,
    predict_slice,
    resolve_device,
    resolve_precision,
    tta_transforms,
)
from emseg.inference.sliding_window import gaussian_weights, pad_border, plan_axis
from emseg.io import open_volume
from emseg.metrics import ThresholdSweep, binary_scores
from emseg.postprocess import (
    PostprocessSettings,
    median_filter_slices,
    median_filter_volume,
    remove_small_components,
)
from emseg.volume_scores import (
    INTERVAL_KEYS,
    METRIC_KEYS,
    VolumeScores,
    edge_band_mask,
    evaluate_volume,
)


def conv3x3(weight: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(1, 1, 3, 3))
    return conv.eval().requires_grad_(False)


class CountingModel(nn.Module):
    """Identity that records the batch shapes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x[:, :1]


def slice_probs(model: nn.Module, image: torch.Tensor, **settings) -> torch.Tensor:
    """``predict_slice`` with a U-Net's stride (32) and, unless given, always tiling."""
    window = WindowSettings(**{"max_window_area": 0, **settings})
    return predict_slice(model, image, window, stride=32)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(1, 150, 173, generator=torch.Generator().manual_seed(0))


# --- test-time augmentation -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "flips", "d4"])
def test_tta_pairs_invert_each_other(mode):
    x = torch.randn(2, 3, 5, 7)  # non-square: rotations swap the axes
    transforms = tta_transforms(mode)
    assert len(transforms) == {"none": 1, "flips": 4, "d4": 8}[mode]
    for t in transforms:
        assert torch.equal(t.inverse(t.forward(x)), x), t.name


def test_d4_has_eight_distinct_elements():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    images = {tuple(t.forward(x).flatten().tolist()) for t in tta_transforms("d4")}
    assert len(images) == 8


def test_unknown_tta_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="inference.tta"):
        tta_transforms("rot45")


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_of_an_equivariant_model_equals_no_tta(image, tta):
    model = conv3x3(torch.tensor([[1.0, 2, 1], [2, -12, 2], [1, 2, 1]]))  # D4-symmetric kernel
    kwargs = {"tile_size": 64, "overlap": 0.25, "border_pad": 8}
    plain = slice_probs(model, image, **kwargs)
    augmented = slice_probs(model, image, tta=tta, **kwargs)
    torch.testing.assert_close(augmented, plain, atol=1e-6, rtol=0)


def test_tta_changes_a_non_equivariant_model(image):
    model = conv3x3(
        torch.tensor([[0.0, 0, 0], [0, 0, 3], [0, 0, 0]])
    )  # shift: not flip-equivariant
    x = image[None]
    assert not torch.allclose(apply_tta(model, x, "flips"), model(x))


# --- sliding window -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gaussian", "constant", "naive"])
@pytest.mark.parametrize(
    ("tile", "pad", "padding_mode"), [(64, 16, "reflect"), (48, 0, "constant")]
)
def test_identity_model_is_reproduced_exactly(image, mode, tile, pad, padding_mode):
    out = slice_probs(
        nn.Identity(),
        image,
        tile_size=tile,
        mode=mode,
        border_pad=pad,
        padding_mode=padding_mode,
    )
    assert out.shape == image.shape[1:] and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.sigmoid(image[0]), atol=1e-6, rtol=0)


def test_blended_windows_match_a_whole_image_forward_away_from_the_border(image):
    """A 3x3 convolution is translation-equivariant: only tile edges (zero padding) differ."""
    model = conv3x3(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    whole = torch.sigmoid(model(image[None]))[0, 0]
    inner = (slice(4, -4), slice(4, -4))
    errors = {}
    for mode in ("gaussian", "naive"):
        out = slice_probs(model, image, tile_size=64, overlap=0.25, mode=mode, border_pad=0)
        errors[mode] = float((out - whole)[inner].abs().max())
    assert errors["gaussian"] < 0.01, errors
    # Disjoint tiles keep the tile-edge errors: blending is what removes them.
    assert errors["naive"] > 0.2, errors


def test_a_tile_covering_the_slice_is_a_single_forward():
    model = CountingModel()
    out = slice_probs(model, torch.zeros(1, 96, 130), tile_size=512, border_pad=16)
    assert out.shape == (96, 130)
    assert model.shapes == [(1, 1, 128, 192)]  # (96 + 32, 130 + 32) padded to multiples of 32


def test_naive_mode_cuts_disjoint_tiles():
    model = CountingModel()
    slice_probs(model, torch.zeros(1, 100, 130), tile_size=64, mode="naive", border_pad=0)
    # 100 x 130 is extended to 128 x 192: 2 x 3 disjoint tiles.
    assert sum(shape[0] for shape in model.shapes) == 6


@pytest.mark.parametrize("side", [1100, 1300, 2112, 4160])
@pytest.mark.parametrize(("tile", "overlap"), [(512, 0.25), (1024, 0.125), (500, 0.5)])
def test_tiling_plan_covers_the_side_with_even_windows_of_at_most_the_tile(side, tile, overlap):
    window, starts = plan_axis(side - 64, side, tile, overlap, stride=32)
    assert window <= tile and starts[0] == 0 and starts[-1] + window == side
    steps = np.diff(starts)
    assert len(starts) >= 2 and steps.max() - steps.min() <= 1  # evenly spread
    assert window - steps.max() >= math.ceil(overlap * tile) - 1  # at least the overlap
    # The fewest windows: one less could not cover the side with that overlap.
    fewer = len(starts) - 1
    assert fewer * tile - (fewer - 1) * math.ceil(overlap * tile) < side
    if tile % 32 == 0:
        assert window % 32 == 0  # no extra padding inside the network


def test_tiling_plan_is_one_window_when_the_tile_covers_the_side():
    assert plan_axis(500, 628, 512, 0.25) == (628, [0])  # the tile covers the image side
    assert plan_axis(700, 500, 512, 0.25) == (500, [0])  # the padded side fits the tile
    assert plan_axis(700, 764, None, 0.25) == (764, [0])


def test_a_slice_within_max_window_area_is_one_window_of_the_padded_slice():
    model = CountingModel()
    # 150 x 200 + 2 x 32 border = 214 x 264 -> 224 x 288 (multiples of 32) = 64,512 pixels.
    out = slice_probs(
        model, torch.zeros(1, 150, 200), tile_size=64, border_pad=32, max_window_area=224 * 288
    )
    assert out.shape == (150, 200)
    assert model.shapes == [(1, 1, 224, 288)]


def test_a_slice_beyond_max_window_area_is_tiled_and_blended(image):
    """One pixel over the area: evenly spread windows of at most the tile, Gaussian-blended."""
    model = conv3x3(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    counting = CountingModel()
    kwargs = {"tile_size": 64, "overlap": 0.25, "border_pad": 8}
    area = 192 * 192  # (150 + 16) x (173 + 16) -> 192 x 192 after rounding up to 32
    one = slice_probs(counting, image, max_window_area=area, **kwargs)
    assert counting.shapes == [(1, 1, 192, 192)] and one.shape == image.shape[1:]
    counting.shapes.clear()
    slice_probs(counting, image, max_window_area=area - 1, sw_batch_size=1, **kwargs)
    # 166 x 189 padded: 4 x 4 windows of 64 x 64 (tile multiple of 32), each a separate forward.
    assert counting.shapes == [(1, 1, 64, 64)] * 16
    whole = torch.sigmoid(model(image[None]))[0, 0]
    tiled = slice_probs(model, image, max_window_area=area - 1, **kwargs)
    inner = (slice(4, -4), slice(4, -4))
    assert float((tiled - whole)[inner].abs().max()) < 0.01  # blended: no visible seams


def test_naive_mode_ignores_blending_but_honours_max_window_area():
    model = CountingModel()
    slice_probs(
        model, torch.zeros(1, 100, 130), tile_size=64, mode="naive", border_pad=0, max_window_area=0
    )
    assert len(model.shapes) == 6
    model.shapes.clear()
    slice_probs(
        model,
        torch.zeros(1, 100, 130),
        tile_size=64,
        mode="naive",
        border_pad=0,
        max_window_area=128 * 160,
    )
    assert model.shapes == [(1, 1, 128, 160)]


def test_inference_configs_compose_to_the_documented_settings():
    """default: one window up to 1024^2 with a 32-px border; tiled/naive: always tile."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from tests.conftest import CONFIG_DIR

    settings = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for name in ("default", "tiled", "naive"):
            cfg = compose(config_name="eval", overrides=[f"inference={name}", "ckpt_path=x"])
            settings[name] = cfg.inference
    GlobalHydra.instance().clear()
    assert settings["default"].max_window_area == 1024 * 1024
    assert settings["default"].border_pad == 32 and settings["default"].tile_size == 512
    assert settings["tiled"].max_window_area == 0 and settings["tiled"].border_pad == 64
    assert settings["naive"].max_window_area == 0 and settings["naive"].mode == "naive"
    # The settings object's defaults are the one place the defaults live: the YAML agrees.
    assert instantiate(settings["default"]) == WindowSettings()
    window = WindowSettings(precision="32-true", device="cpu")
    predictor = VolumePredictor(nn.Identity(), Preprocessing(0, 0.0, 1.0), window)
    assert predictor.describe()["max_window_area"] == settings["default"].max_window_area
    assert predictor.describe()["border_pad"] == settings["default"].border_pad


def test_gaussian_weights_peak_in_the_centre_and_stay_positive():
    weights = gaussian_weights((64, 64), 0.125)
    assert float(weights.max()) == pytest.approx(1.0, abs=1e-3)
    assert float(weights.min()) > 0
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.T)
    assert float(weights[0, 32]) < 1e-3  # the tile edge barely counts (sigma = tile / 8)


def test_reflect_padding_wider_than_the_image_matches_numpy():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded = pad_border(x, (9, 2, 7, 1), "reflect")
    expected = np.pad(x.numpy()[0, 0], ((7, 1), (9, 2)), mode="reflect")
    np.testing.assert_array_equal(padded[0, 0].numpy(), expected)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"overlap": 1.0}, "inference.overlap"),
        ({"mode": "max"}, "inference.mode"),
        ({"tta": "rot"}, "inference.tta"),
        ({"tile_size": 0}, "inference.tile_size"),
        ({"padding_mode": "mirror"}, "inference.padding_mode"),
        ({"sw_batch_size": 0}, "inference.sw_batch_size"),
        ({"border_pad": -1}, "inference.border_pad"),
        ({"max_window_area": -1}, "inference.max_window_area"),
    ],
)
def test_invalid_window_settings_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        WindowSettings(**kwargs)


class Strided(nn.Module):
    """Identity with an smp-like ``encoder.output_stride``, recording its input shapes."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.output_stride = stride
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x[:, :1]


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_windows_are_padded_to_the_model_stride(stride):
    model = Strided(stride)
    assert model_stride(model) == stride and model_stride(nn.Identity()) == 1
    out = predict_slice(model, torch.zeros(1, 50, 70), WindowSettings(border_pad=3))
    side = lambda n: -(-(n + 6) // stride) * stride  # noqa: E731
    assert out.shape == (50, 70) and model.shapes == [(1, 1, side(50), side(70))]


def test_precision_and_device_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == auto_precision("cpu")
    assert resolve_precision("32-true", cpu) == "32-true"
    with pytest.raises(ConfigError, match="inference.precision"):
        resolve_precision("8-bit", cpu)
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# --- volume streaming ---------------------------------------------------------------------------


class FirstChannel(nn.Module):
    """Logit = the first input channel: shows which neighbour slice came first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class Source:
    """A (Z, Y, X) volume that records which slices were read."""

    def __init__(self, volume: np.ndarray) -> None:
        self.volume, self.reads = volume, []

    def __len__(self) -> int:
        return len(self.volume)

    def __getitem__(self, z: int) -> np.ndarray:
        self.reads.append(z)
        return self.volume[z]


def _predictor(model: nn.Module, pre: Preprocessing, **kwargs) -> VolumePredictor:
    return VolumePredictor(model, pre, WindowSettings(precision="32-true", device="cpu", **kwargs))


def test_2p5d_context_stacks_clamped_neighbours_and_reads_each_slice_once():
    depth = 5
    volume = np.broadcast_to(np.arange(depth, dtype=np.float32)[:, None, None] / 10, (depth, 8, 8))
    source = Source(volume)
    predictor = _predictor(FirstChannel(), Preprocessing(context=2, mean=0.0, std=1.0))
    probs = [p[0, 0] for p in predictor.predict(source)]
    first_neighbour = np.clip(np.arange(depth) - 2, 0, depth - 1) / 10
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-first_neighbour)), rtol=1e-6)
    assert source.reads == list(range(depth))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_slices_are_normalised_like_training(dtype):
    rng = np.random.default_rng(0)
    unit = rng.random((2, 16, 20)).astype(np.float32)
    volume = unit if dtype == np.float32 else (unit * np.iinfo(dtype).max).astype(dtype)
    pre = Preprocessing(context=0, mean=0.5, std=0.25)
    probs = np.stack(list(_predictor(nn.Identity(), pre).predict(volume)))
    scaled = volume / np.iinfo(dtype).max if dtype != np.float32 else volume
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-(scaled - 0.5) / 0.25)), atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "kwargs", "paged"),
    [
        ((5, 12, 10), {}, True),
        ((12, 10), {}, True),
        ((1, 12, 10), {}, True),
        ((5, 12, 10), {"compression": "zlib"}, True),
        # tifffile stores a (3|4, Y, X) stack as planar samples of one page: memory-mapped.
        ((4, 12, 10), {}, False),
    ],
)
def test_tiff_source_reads_page_by_page(tmp_path, shape, kwargs, paged):
    data = np.random.default_rng(0).integers(0, 65535, shape, dtype=np.uint16)
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, data, **kwargs)
    with open_volume(path) as slices:
        assert slices.ndim == len(shape) and len(slices) == (shape[0] if len(shape) == 3 else 1)
        assert (slices._pages is not None) == paged  # pages, not the whole file
        read = np.stack([slices[z] for z in range(len(slices))])
    np.testing.assert_array_equal(read, data.reshape(-1, 12, 10))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((8, 9, 3), np.uint8), "RGB"),
        (np.zeros((2, 2, 8, 9), np.uint8), "2D .* or 3D"),
        (np.zeros((2, 8, 9), np.int16), "unsupported image dtype"),
    ],
)
def test_tiff_source_rejects_unusable_images(tmp_path, data, message):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(DataError, match=message):
        open_volume(path)


def test_tiff_source_rejects_missing_empty_and_non_tiff_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_volume(tmp_path / "missing.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        open_volume(tmp_path / "empty.tif")
    (tmp_path / "text.tif").write_text("not an image")
    with pytest.raises(DataError, match="not a readable TIFF"):
        open_volume(tmp_path / "text.tif")


# --- post-processing ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("size", [3, 5])
def test_streamed_median_equals_scipy_on_the_whole_volume(depth, size):
    volume = np.random.default_rng(depth).random((depth, 11, 13)).astype(np.float32)
    expected = ndimage.median_filter(volume, size=size, mode="nearest")
    np.testing.assert_array_equal(median_filter_volume(volume, size), expected)
    np.testing.assert_array_equal(np.stack(list(median_filter_slices(iter(volume), 0))), volume)


def test_median_in_row_blocks_on_threads_equals_scipy(monkeypatch):
    """Many small row blocks, filtered on two threads, give the same volume as one pass."""
    import emseg.postprocess as postprocess

    monkeypatch.setattr(postprocess, "MEDIAN_BLOCK_ELEMENTS", 3 * 27 * 13)  # 3 rows a block
    volume = np.random.default_rng(7).random((4, 17, 13)).astype(np.float32)
    expected = ndimage.median_filter(volume, size=3, mode="nearest")
    np.testing.assert_array_equal(median_filter_volume(volume, 3, threads=2), expected)


@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("min_size", [2, 6, 30])
def test_streamed_component_removal_equals_3d_labelling(connectivity, min_size):
    mask = np.random.default_rng(min_size).random((6, 24, 25)) < 0.3
    labels, _ = ndimage.label(mask, ndimage.generate_binary_structure(3, connectivity))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    np.testing.assert_array_equal(
        remove_small_components(mask, min_size, connectivity), keep[labels].astype(np.uint8)
    )


def test_component_removal_hand_case():
    mask = np.zeros((3, 7, 7), np.uint8)
    mask[0, 0, 6] = 1  # 1 voxel: removed
    mask[0:3, 5, 5] = 1  # 3 voxels through z: kept with min_size 3
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # two voxels touching by a corner only
    kept = remove_small_components(mask, 3, connectivity=1)
    assert kept.sum() == 3 and kept[:, 5, 5].all()
    assert remove_small_components(mask, 3, connectivity=3)[[1, 2], [1, 2], [1, 2]].sum() == 0
    assert remove_small_components(mask, 2, connectivity=3)[[1, 2], [1, 2], [1, 2]].sum() == 2


@pytest.mark.parametrize(
    ("args", "key"),
    [((2, 0, 1), "median_size"), ((3, -1, 1), "min_size"), ((3, 0, 4), "connectivity")],
)
def test_invalid_postprocess_settings(args, key):
    with pytest.raises(ConfigError, match=f"postprocess.{key}"):
        PostprocessSettings(*args)


# --- metrics ------------------------------------------------------------------------------------


def test_binary_scores_hand_computed():
    scores = binary_scores(tp=2, fp=1, tn=4, fn=3)
    assert scores == pytest.approx(
        {
            "accuracy": 6 / 10,
            "fg_iou": 2 / 6,
            "bg_iou": 4 / 8,
            "mean_iou": (2 / 6 + 4 / 8) / 2,
            "dice": 4 / 8,
            "precision": 2 / 3,
            "recall": 2 / 5,
        }
    )


def test_binary_scores_of_empty_classes():
    assert set(binary_scores(0, 0, 10, 0).values()) == {1.0}  # nothing to find, nothing found
    missed = binary_scores(0, 0, 10, 4)  # nothing predicted, 4 missed
    assert missed["precision"] == 0.0 and missed["recall"] == 0.0 and missed["fg_iou"] == 0.0


def test_threshold_sweep_hand_computed():
    sweep = ThresholdSweep([0.25, 0.5, 0.75])
    sweep.update(torch.tensor([0.1, 0.5, 0.6, 0.8, 0.3]), torch.tensor([0, 1, 1, 1, 0]))
    thresholds, iou = sweep.compute()
    # > 0.25: TP 3, FP 1 -> 3/4; > 0.5: TP 2, FN 1 -> 2/3 (0.5 itself is background); > 0.75: 1/3
    np.testing.assert_allclose(iou.numpy(), [3 / 4, 2 / 3, 1 / 3])


def test_edge_band_mask():
    band = edge_band_mask(6, 7, 2)
    assert band.sum() == 6 * 7 - 2 * 3 and not band[2:4, 2:5].any()
    assert edge_band_mask(6, 7, 0).sum() == 0 and edge_band_mask(6, 7, 10).all()


def test_edge_and_interior_iou_hand_computed():
    target = np.zeros((1, 6, 6), np.uint8)
    pred = np.zeros((1, 6, 6), np.float32)
    target[0, 0, 0:3] = 1  # edge: 3 target pixels, 2 found and 1 false positive
    pred[0, 0, 1:4] = 1
    target[0, 2:4, 2:4] = 1  # interior (band 2): 4 target pixels, all found
    pred[0, 2:4, 2:4] = 1
    metrics, counts = evaluate_volume(iter(pred), target, edge_band=2)
    assert counts["edge"] == {"tp": 2, "fp": 1, "tn": 28, "fn": 1}
    assert counts["interior"] == {"tp": 4, "fp": 0, "tn": 0, "fn": 0}
    assert metrics["edge_fg_iou"] == pytest.approx(2 / 4)
    assert metrics["interior_fg_iou"] == 1.0
    assert metrics["fg_iou"] == pytest.approx(6 / 8)
    assert metrics["precision"] == pytest.approx(6 / 7) and metrics["recall"] == pytest.approx(
        6 / 7
    )


def test_a_perfect_prediction_scores_one_everywhere():
    target = (np.random.default_rng(0).random((3, 40, 50)) < 0.2).astype(np.uint8)
    metrics, _ = evaluate_volume(iter(target.astype(np.float32)), target, edge_band=8)
    assert set(metrics) == set(METRIC_KEYS) | set(INTERVAL_KEYS)
    assert metrics["fg_iou_ci_low"] is None  # 3 slices of 40 x 50: one block, no interval
    scores = {k: v for k, v in metrics.items() if k in METRIC_KEYS and k != "best_threshold"}
    assert scores == pytest.approx(dict.fromkeys(scores, 1.0))


def test_metrics_pool_counts_over_the_volume():
    target = np.zeros((2, 4, 4), np.uint8)
    target[0, :, :2] = 1  # slice 0: 8 fg, predicted exactly (IoU 1)
    target[1, 0, 0] = 1  # slice 1: 1 fg pixel, missed, 1 FP (IoU 0)
    pred = target.astype(np.float32)
    pred[1, 0, 0], pred[1, 3, 3] = 0.0, 1.0
    metrics, _ = evaluate_volume(iter(pred), target, edge_band=1)
    assert metrics["fg_iou"] == pytest.approx(8 / 10)  # a mean of slices would give 0.5


def test_min_size_filters_before_counting():
    target = np.zeros((2, 8, 8), np.uint8)
    target[:, 2:5, 2:5] = 1
    pred = target.astype(np.float32)
    pred[0, 7, 7] = 0.9  # an isolated false positive voxel
    raw, _ = evaluate_volume(iter(pred), target)
    filtered, _ = evaluate_volume(iter(pred), target, min_size=2)
    assert raw["precision"] < 1.0 and filtered["precision"] == 1.0


def test_volume_scores_reject_a_negative_band():
    with pytest.raises(ConfigError, match="edge_band"):
        VolumeScores(edge_band=-1)
