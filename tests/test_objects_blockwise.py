"""Blockwise instances: per-block fragments merged across faces equal the in-memory path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from emseg.errors import ConfigError
from emseg.objects.blocks import face_pairs, label_block, merge_fragments, relabel_block
from emseg.objects.blockwise import ObjectBlockSettings, uses_blockwise
from emseg.objects.instances import InstanceSettings, label_instances
from tests.conftest import run_script


def _blobs(shape: tuple[int, int, int], seed: int, level: float = 0.52) -> np.ndarray:
    """Random blobs: many objects, some of them crossing every block face."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.2) > level


def _blockwise_labels(
    mask: np.ndarray, block: tuple[int, int, int], connectivity: int, min_size: int
) -> np.ndarray:
    """The blocks' steps run in this process, in the engine's order."""
    shape = mask.shape
    fragments = np.zeros(shape, np.uint64)
    stats, boxes = [], []
    starts = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for index, (z0, y0, x0) in enumerate(
        (z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]
    ):
        box = tuple(slice(a, a + b) for a, b in zip((z0, y0, x0), block, strict=True))
        part, stat = label_block(mask[box], index, (z0, y0, x0), shape, connectivity)
        fragments[box] = part
        stats.append(stat)
        boxes.append(box)
    margin = 1 if connectivity > 1 else 0
    pairs = []
    for box in boxes:
        for axis in range(3):
            start = box[axis].start
            if start == 0:
                continue
            slab = tuple(
                slice(start - 1, start + 1)
                if other == axis
                else slice(max(0, box[other].start - margin), box[other].stop + margin)
                for other in range(3)
            )
            pairs.append(face_pairs(fragments[slab], axis, connectivity))
    merged = merge_fragments(stats, pairs, min_size)
    return relabel_block(fragments, merged.ids, merged.final)


@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("min_size", [0, 6])
def test_blocks_merge_to_the_in_memory_labels(connectivity: int, min_size: int) -> None:
    mask = _blobs((20, 37, 41), seed=connectivity)
    expected = label_instances(mask, InstanceSettings(connectivity=connectivity, min_size=min_size))
    got = _blockwise_labels(mask, (8, 16, 16), connectivity, min_size)
    assert expected.max() > 5
    np.testing.assert_array_equal(got, expected)  # same objects, same ids
    assert got.dtype == expected.dtype == np.uint32


def test_face_pairs_follow_the_connectivity() -> None:
    slab = np.zeros((2, 3, 3), np.uint64)
    slab[0, 1, 1], slab[1, 1, 2] = 5, 9  # diagonal across the face (an edge)
    assert face_pairs(slab, 0, 1).shape == (0, 2)
    assert face_pairs(slab, 0, 2).tolist() == [[5, 9]]
    slab[1, 1, 2], slab[1, 2, 2] = 0, 9  # a corner
    assert face_pairs(slab, 0, 2).shape == (0, 2)
    assert face_pairs(slab, 0, 3).tolist() == [[5, 9]]
    with pytest.raises(ValueError, match="2 voxels thick"):
        face_pairs(np.zeros((3, 2, 2), np.uint64), 0)


def test_label_block_ids_are_unique_per_block_and_first_voxels_global() -> None:
    mask = np.zeros((2, 4, 4), bool)
    mask[1, 2, 3] = mask[0, 0, 0] = True
    fragments, stats = label_block(mask, 3, (10, 20, 30), (20, 40, 40), 1)
    assert stats.ids.tolist() == [(3 << 32) + 1, (3 << 32) + 2]
    assert stats.first.tolist() == [
        np.ravel_multi_index((10, 20, 30), (20, 40, 40)),
        np.ravel_multi_index((11, 22, 33), (20, 40, 40)),
    ]
    assert stats.boxes[1].tolist() == [11, 22, 33, 12, 23, 34]
    assert set(np.unique(fragments).tolist()) == {0, *stats.ids.tolist()}


def _probabilities(path: Path) -> Path:
    mask = _blobs((16, 64, 80), seed=7, level=0.55)
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    tifffile.imwrite(path, np.round(blurred * 255).astype(np.uint8))
    return path


def test_measure_blockwise_equals_in_memory_table(tmp_path: Path, capsys) -> None:
    """measure.py with a Zarr labels output: blocks cut through objects, same table and labels."""
    import zarr

    probs = _probabilities(tmp_path / "probs.tif")
    common = [f"input={probs}", "voxel_size=[5,5,5]", "objects.min_size=10"]
    code, err = run_script(
        "measure.py",
        [*common, f"table={tmp_path / 'mem.csv'}", f"labels_output={tmp_path / 'mem.tif'}"],
        tmp_path,
        capsys,
    )
    assert code == 0, err
    args = [
        *common,
        f"table={tmp_path / 'bw.csv'}",
        f"labels_output={tmp_path / 'bw.zarr'}",
        "blockwise.block_shape=[8,32,32]",
        "blockwise.chunks=[8,32,32]",
        "blockwise.workers=2",
        "blockwise.progress=false",
    ]
    code, err = run_script("measure.py", args, tmp_path, capsys)
    assert code == 0, err
    expected = tifffile.imread(tmp_path / "mem.tif")
    got = zarr.open_group(str(tmp_path / "bw.zarr"), mode="r")["0"][:]
    np.testing.assert_array_equal(got, expected)
    table = (tmp_path / "bw.csv").read_text()
    assert table == (tmp_path / "mem.csv").read_text()
    assert table.count("\n") > 10
    # objects cut by block borders in y and x were merged (one id spans several blocks)
    rows = [line.split(",") for line in table.splitlines()[1:]]
    header = table.splitlines()[0].split(",")
    y0, y1 = header.index("y0"), header.index("y1")
    assert any(int(r[y0]) // 32 != (int(r[y1]) - 1) // 32 for r in rows)
    summary = json.loads((tmp_path / "bw_summary.json").read_text())
    assert summary["blockwise"]["blocks"] == 2 * 2 * 3
    assert summary["outputs"]["labels"] == str(tmp_path / "bw.zarr")
    assert not (tmp_path / "bw.zarr.objects").exists()  # the scratch is removed
    # a second run is refused (nothing replaced) without overwrite
    before = (tmp_path / "bw.csv").read_bytes()
    code, err = run_script("measure.py", args, tmp_path, capsys)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert (tmp_path / "bw.csv").read_bytes() == before


def test_blockwise_refusals(tmp_path: Path, capsys) -> None:
    probs = _probabilities(tmp_path / "probs.tif")
    zarr_out = f"labels_output={tmp_path / 'l.zarr'}"
    cases = [
        (["objects.split=distance", zarr_out], "objects.split=none"),
        ([f"truth={probs}", zarr_out], "truth: instance metrics read"),
        ([f"labels_output={tmp_path / 'l.tif'}", "blockwise.enabled=true"], "Zarr store"),
        ([zarr_out, "blockwise.block_shape=[8,30,32]", "blockwise.chunks=[8,32,32]"], "multiple"),
    ]
    for extra, message in cases:
        code, err = run_script(
            "measure.py",
            [f"input={probs}", f"table={tmp_path / 't.csv'}", *extra],
            tmp_path,
            capsys,
        )
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
        assert not (tmp_path / "t.csv").exists() and not (tmp_path / "l.zarr").exists()
    labels = tmp_path / "ids.tif"
    tifffile.imwrite(labels, np.arange(2 * 6 * 7, dtype=np.uint16).reshape(2, 6, 7))
    code, err = run_script(
        "measure.py", [f"input={labels}", f"table={tmp_path / 't.csv'}", zarr_out], tmp_path, capsys
    )
    assert code == 2 and "holds instance labels" in err


def test_uses_blockwise_by_output() -> None:
    auto = ObjectBlockSettings()
    assert uses_blockwise(auto, "a.zarr") and uses_blockwise(auto, "s.zarr/instances")
    assert not uses_blockwise(auto, "a.tif") and not uses_blockwise(auto, None)
    assert not uses_blockwise(ObjectBlockSettings(enabled=False), "a.zarr")
    with pytest.raises(ConfigError, match="three positive integers"):
        ObjectBlockSettings(block_shape=[8, 0, 8])
