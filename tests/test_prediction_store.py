"""The blockwise prediction store (emseg/io/prediction_store.py): one OME-Zarr store that
several processes fill block by block, in any order, readable only once marked complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from emseg.errors import ConfigError, DataError
from emseg.io import open_volume
from emseg.io.prediction_store import (
    StoreLayout,
    check_layout_matches,
    create_prediction_store,
    open_prediction_store,
)


def test_store_takes_blocks_in_any_order_and_opens_only_when_complete(tmp_path):
    layout = StoreLayout((5, 40, 50), (2, 16, 16), {"probabilities": "uint8"}, (50.0, 5.0, 5.0))
    store = create_prediction_store(tmp_path / "out.zarr", layout, {"checkpoint": "x"})
    data = np.random.default_rng(0).integers(0, 255, (5, 40, 50), dtype=np.uint8)
    for z0 in (4, 0, 2):  # any order; the last block is the volume's short end
        for y0, x0 in ((16, 0), (0, 32), (0, 0), (16, 32)):  # tiles: whole chunks, short ends
            box = (slice(z0, z0 + 2), slice(y0, y0 + 24 if y0 else 16), slice(x0, x0 + 32))
            store.write_block((z0, y0, x0), {"probabilities": data[box]})
    with pytest.raises(ValueError, match="z 1-2 is not whole chunks of 2"):
        store.write_block((1, 0, 0), {"probabilities": data[1:3]})
    with pytest.raises(ValueError, match="x 8-41 is not whole chunks of 16"):
        store.write_block((0, 0, 8), {"probabilities": data[0:2, :, :34]})
    with pytest.raises(DataError, match="not complete.*rerun the same"):
        open_volume(tmp_path / "out.zarr" / "probabilities")
    store.mark_complete()
    with open_volume(tmp_path / "out.zarr" / "probabilities") as volume:
        np.testing.assert_array_equal(volume.read(), data)
        assert volume.voxel_size == (50.0, 5.0, 5.0)
    group = json.loads((tmp_path / "out.zarr" / "probabilities" / "zarr.json").read_text())
    (multiscale,) = group["attributes"]["ome"]["multiscales"]
    assert [(a["name"], a["unit"]) for a in multiscale["axes"]] == [
        ("z", "nanometer"),
        ("y", "nanometer"),
        ("x", "nanometer"),
    ]
    scale, translation = multiscale["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == [50.0, 5.0, 5.0] and translation["translation"] == [0.0, 0.0, 0.0]
    array = zarr.open_array(str(tmp_path / "out.zarr" / "probabilities" / "0"))
    assert array.chunks == (2, 16, 16) and array.metadata.dimension_names == ("z", "y", "x")
    assert open_prediction_store(tmp_path / "out.zarr", "r").complete


def test_a_store_is_created_once_and_resumed_only_with_the_same_layout(tmp_path):
    layout = StoreLayout((4, 20, 20), (1, 8, 8), {"probabilities": "uint8", "mask": "uint8"})
    store = create_prediction_store(tmp_path / "o.zarr", layout, {"threshold": 0.5})
    with pytest.raises(ConfigError, match="already exists"):
        create_prediction_store(tmp_path / "o.zarr", layout, {"threshold": 0.5})
    reopened = open_prediction_store(tmp_path / "o.zarr")
    assert reopened.layout == layout and reopened.run == {"threshold": 0.5}
    check_layout_matches(reopened, layout, {"threshold": 0.5}, "output")
    with pytest.raises(ConfigError, match=r"another settings \(threshold: 0.5 there, 0.6 now\)"):
        check_layout_matches(reopened, layout, {"threshold": 0.6}, "output")
    other = StoreLayout((4, 20, 20), (2, 8, 8), {"probabilities": "uint8", "mask": "uint8"})
    with pytest.raises(ConfigError, match="another layout"):
        check_layout_matches(reopened, other, {"threshold": 0.5}, "output")
    with pytest.raises(ValueError, match="blocks of"):
        store.write_block((0, 0, 0), {"probabilities": np.zeros((1, 20, 20), np.uint8)})
    with pytest.raises(ValueError, match="expected"):
        blocks = {name: np.zeros((1, 20, 20), np.float32) for name in layout.arrays}
        store.write_block((0, 0, 0), blocks)
    with pytest.raises(ConfigError, match="blockwise.arrays"):
        StoreLayout((4, 20, 20), arrays={"labels": "uint8"})
