"""``export.py format=bioimageio``: one BioImage Model Zoo package (``<output>.zip``).

The package is described with ``bioimageio.spec``'s own model classes (format 0.5) and written
by ``bioimageio.spec.save_bioimageio_package``; it holds

* weights in three formats: ``pytorch_state_dict`` (the root: the state dict plus the
  architecture source :mod:`emseg.zoo.architecture`, its kwargs and a conda environment
  naming torch and segmentation-models-pytorch), ``torchscript`` and ``onnx`` (both converted
  from it by :func:`emseg.export.export_torchscript` / :func:`emseg.export.export_onnx`);
* one input ``raw``, axes ``batch, channel, y, x``: the channels are ``2 * context + 1``
  consecutive z slices (z-k .. z+k) of a ``(Z, Y, X)`` volume (2.5D; a 2D model has one),
  ``y`` / ``x`` in nanometres at the voxel size the model was trained at, sizes ``min + n *
  32`` (the network's stride), with the checkpoint's normalisation as preprocessing
  (:func:`preprocessing_steps`);
* one output ``mitochondria`` (foreground probability: the network's logit, then the declared
  ``sigmoid``), with a halo for tiled prediction;
* test tensors: a real crop of a real volume (by default the checkpoint's test image) and the
  network's float32 output on it; a cover image; a README with the training data, recipe,
  metrics of record and their command, and the limitations; citations, licence and authors
  (``bioimageio.*`` in conf/export.yaml).

Before the package is kept, ``bioimageio.core``'s model test (the zoo CI's check: load the
package, run the test input through every weight format, compare with the test output) runs
on the CPU; its report is written beside the package (``<output>.test.json`` / ``.md``), and a
failing test leaves neither (one error line). emseg-specific settings (the evaluation block
chosen on validation, the voxel size, the 2.5D context, the data it was trained on) travel in
the package's ``config.emseg``, so ``predict.py model=<package>`` (:mod:`emseg.zoo.load`)
predicts as ``ckpt_path=<checkpoint>`` does.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from emseg.data.dataset import context_slices
from emseg.errors import ConfigError, EmsegError
from emseg.export import _version, export_onnx, export_torchscript
from emseg.inference import Checkpoint, build_pipeline, model_stride
from emseg.io import atomic_paths, check_output_path, open_volume
from emseg.zoo import architecture
from emseg.zoo.processing import Step, apply_steps, check_preprocessing

__all__ = [
    "CITATIONS",
    "INPUT_ID",
    "OUTPUT_ID",
    "channel_names",
    "export_bioimageio",
    "package_paths",
    "preprocessing_steps",
]

log = logging.getLogger(__name__)

INPUT_ID, OUTPUT_ID = "raw", "mitochondria"
ARCHITECTURE_FILE = "emseg_unet.py"
ARCHITECTURE_FACTORY = "emseg.model.build_unet"
# Weight formats converted from the pytorch_state_dict root (bioimageio.converted_weights).
CONVERTED_FORMATS = ("torchscript", "onnx")
# Everything the package cites: the data (EPFL, Lucchi++) and the network.
CITATIONS: tuple[dict[str, str], ...] = (
    {
        "text": "Lucchi A., Smith K., Achanta R., Knott G., Fua P. Supervoxel-Based Segmentation "
        "of Mitochondria in EM Image Stacks With Learned Shape Features. IEEE TMI 31(2), 2012 "
        "(the EPFL CA1 hippocampus volume)",
        "doi": "10.1109/TMI.2011.2171705",
    },
    {
        "text": "Lucchi A., Marquez-Neila P., Becker C., Li Y., Smith K., Knott G., Fua P. "
        "Learning Structured Models for Segmentation of 2-D and 3-D Imagery. IEEE TMI 34(5), "
        "2015 (the EPFL volume's labels)",
        "doi": "10.1109/TMI.2014.2376274",
    },
    {
        "text": "Casser V., Kang K., Pfister H., Haehn D. Fast Mitochondria Detection for "
        "Connectomics. MIDL 2020, PMLR 121 (the Lucchi++ re-annotation)",
        "url": "https://proceedings.mlr.press/v121/casser20a.html",
    },
    {
        "text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for "
        "Biomedical Image Segmentation. MICCAI 2015 (the network)",
        "doi": "10.1007/978-3-319-24574-4_28",
    },
)


def package_paths(output: str | Path) -> tuple[Path, Path, Path]:
    """``(<output>.zip, <output>.test.json, <output>.test.md)``; a ``.zip`` suffix is kept."""
    stem = Path(str(output))
    if stem.suffix == ".zip":
        stem = stem.with_suffix("")
    return tuple(stem.with_name(stem.name + ext) for ext in (".zip", ".test.json", ".test.md"))  # type: ignore[return-value]


def channel_names(context: int) -> list[str]:
    """The input channel names: ``z_minus_1, z, z_plus_1`` for context 1, ``z`` for 2D."""
    below = [f"z_minus_{k}" for k in range(context, 0, -1)]
    return [*below, "z", *(f"z_plus_{k}" for k in range(1, context + 1))]


def preprocessing_steps(checkpoint: Checkpoint, dtype: np.dtype) -> list[Step]:
    """The checkpoint's normalisation as bioimage.io steps, for raw input of ``dtype``.

    Fixed statistics (emseg's ``(x / dtype_max - mean) / std``): ``ensure_dtype`` float32,
    ``scale_linear`` by ``1 / dtype_max`` (integer input), ``fixed_zero_mean_unit_variance``
    with the checkpoint's mean / std, ``ensure_dtype`` float32 (else the spec appends a cast
    back to the raw dtype). With ``data.percentiles`` (each volume mapped by its own
    percentiles, ``clip((x - p_low) / (p_high - p_low), 0, 1)``): ``scale_range`` at those
    percentiles over the sample (``channel, y, x``), ``clip`` to [0, 1], then the fixed
    mean / std; a tool computes the percentiles of the image it is given, emseg of the volume.
    """
    pre = checkpoint.preprocessing
    steps: list[Step] = [("ensure_dtype", {"dtype": "float32"})]
    if pre.percentiles is not None:
        low, high = pre.percentiles
        steps.append(
            (
                "scale_range",
                {"min_percentile": low, "max_percentile": high, "axes": ["channel", "y", "x"]},
            )
        )
        steps.append(("clip", {"min": 0.0, "max": 1.0}))
    elif np.dtype(dtype).kind in "ui":
        steps.append(("scale_linear", {"gain": 1.0 / float(np.iinfo(dtype).max), "offset": 0.0}))
    steps.append(("fixed_zero_mean_unit_variance", {"mean": pre.mean, "std": pre.std}))
    # Last, explicitly: bioimage.io appends a cast to the input's declared dtype otherwise.
    steps.append(("ensure_dtype", {"dtype": "float32"}))
    return steps


def _voxel_size(cfg: DictConfig, checkpoint: Checkpoint) -> tuple[float, float, float]:
    """The ``(z, y, x)`` nm voxel size the model was trained at: the command line's
    ``voxel_size`` or the checkpoint's ``data.voxel_size``; an error naming both otherwise."""
    given = cfg.get("voxel_size")
    if given is None:
        given = (checkpoint.config.get("data") or {}).get("voxel_size")
    if given is None:
        raise ConfigError(
            f"ckpt_path: {checkpoint.path} records no data.voxel_size (the voxel size in nm it "
            "was trained at, which the package must state): give voxel_size=[z,y,x], e.g. "
            "voxel_size=[5,5,5] for the EPFL volume"
        )
    values = (
        list(given) if isinstance(given, Sequence | np.ndarray) or OmegaConf.is_list(given) else []
    )
    ok = len(values) == 3 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values
    )
    if not ok:
        raise ConfigError(
            f"voxel_size must be three positive numbers [z, y, x] in nm, got {given!r}"
        )
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.bioimageio`` as plain values, with the required authors checked."""
    zoo = OmegaConf.to_container(cfg.get("bioimageio") or {}, resolve=True)
    assert isinstance(zoo, dict)
    authors = zoo.get("authors")
    if not authors or not all(isinstance(a, Mapping) and a.get("name") for a in authors):
        raise ConfigError(
            "bioimageio.authors: the package must name who trained the model, as a list of "
            "{name, affiliation, orcid, github_user, email} (name required), e.g. "
            "'bioimageio.authors=[{name: Ada Lovelace, affiliation: EPFL}]'"
        )
    converted = zoo.get("converted_weights", list(CONVERTED_FORMATS))
    if not isinstance(converted, list) or not set(converted) <= set(CONVERTED_FORMATS):
        raise ConfigError(
            f"bioimageio.converted_weights must be a list of {', '.join(CONVERTED_FORMATS)} "
            f"(pytorch_state_dict is always included), got {converted!r}"
        )
    size = zoo.get("test_size", 256)
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"bioimageio.test_size must be a positive integer, got {size!r}")
    return zoo


def _sample_crop(
    path: str, context: int, size: int, min_size: int, stride: int
) -> tuple[np.ndarray, str]:
    """A real crop ``(1, 2k+1, S, S)`` of ``path`` (raw dtype): the middle slice with its 2.5D
    neighbours, the centre ``S x S`` (``S`` = ``size`` rounded down to a valid input size)."""
    with open_volume(Path(path)) as source:
        depth, height, width = source.shape
        side = min(size, height, width)
        side = min_size + max(0, (side - min_size) // stride) * stride
        if side > min(height, width):
            raise ConfigError(
                f"bioimageio.sample_image: {path} is {height} x {width}, smaller than the "
                f"package's minimum input of {min_size} x {min_size}"
            )
        z = depth // 2
        y0, x0 = (height - side) // 2, (width - side) // 2
        ys, xs = slice(y0, y0 + side), slice(x0, x0 + side)
        stack = np.stack([source.read(int(i), ys, xs) for i in context_slices(z, depth, context)])
    where = f"{Path(path).name} slice {z} (of {depth}), y {y0}:{y0 + side}, x {x0}:{x0 + side}"
    return stack[None], where


def _network_output(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """float32 logits of the network for preprocessed ``(1, C, Y, X)`` input, on the CPU."""
    with torch.inference_mode():
        return net.float().cpu()(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _cover(raw: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """A 2:1 cover: the crop's centre slice, and the same with probabilities above 0.5 in green."""
    from PIL import Image

    image = raw.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    gray = ((image - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    overlay = rgb.copy()
    mask = probs > 0.5
    overlay[mask] = (0.5 * overlay[mask] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
    Image.fromarray(np.concatenate([rgb, overlay], axis=1)).save(path)


def _metrics_section(metrics_path: str | None) -> str:
    """The metrics of record, read from an ``eval.py`` metrics.json, and its command."""
    if not metrics_path:
        return (
            "Not given at export (`bioimageio.metrics=<eval.py run>/metrics.json` adds the "
            "test-volume metrics of `eval.py` and its command here).\n"
        )
    path = Path(str(metrics_path))
    if not path.is_file():
        raise ConfigError(f"bioimageio.metrics: {path} is not a file (an eval.py metrics.json)")
    try:
        record = json.loads(path.read_text())
        metrics = record["metrics"]
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"bioimageio.metrics: {path} is not an eval.py metrics.json") from err
    overrides_file = path.parent / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else None
    command = "python eval.py " + (
        " ".join(str(o) for o in overrides)
        if overrides
        else f"ckpt_path={record.get('checkpoint')}"
    )
    rows = [
        f"| {key} | {metrics[key]:.4f} |"
        for key in ("fg_iou", "mean_iou", "dice", "accuracy", "precision", "recall")
        if key in metrics
    ]
    settings = record.get("checkpoint_settings") or {}
    return "\n".join(
        [
            f"On `{record.get('test_image')}` against `{record.get('test_mask')}` "
            f"({record.get('slices')} slices, pooled over the volume, threshold "
            f"{record.get('threshold')}; fg IoU, the IoU of the mitochondria class, is the "
            "metric of record), predicted by emseg's pipeline with its chosen settings "
            f"({', '.join(f'{k}={v}' for k, v in settings.items()) or 'defaults'}):",
            "",
            "| metric | value |",
            "|---|---|",
            *rows,
            "",
            f"Command: `{command}`",
            "",
        ]
    )


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in kwargs.items()
    )


def _cite_ref(citation: Mapping[str, str]) -> str:
    return f"doi:{citation['doi']}" if "doi" in citation else citation["url"]


def _documentation(
    checkpoint: Checkpoint,
    zoo: dict[str, Any],
    voxel: tuple[float, float, float],
    steps: list[Step],
    tiling: dict[str, int],
    sample: str,
    dtype: np.dtype,
) -> str:
    """The package README: what the model does, its input, training, metrics, limitations."""
    config = checkpoint.config
    data, model = config.get("data") or {}, config.get("model") or {}
    trainer, optim = config.get("trainer") or {}, config.get("optim") or {}
    pre, context = checkpoint.preprocessing, checkpoint.preprocessing.context
    names = ", ".join(channel_names(context))
    evaluation = {k: v for k, v in (config.get("evaluation") or {}).items() if k != "chosen_on"}
    steps_text = " -> ".join(f"{name}({_kwargs_text(kw)})" for name, kw in steps)
    two_d = "This is a 2D model: one slice."
    two_and_half = "This 2.5D input gives the network the neighbouring sections' context."
    neighbours = (
        "The z neighbours must be real neighbouring sections of the same volume, in order."
        if context
        else "Each slice is predicted alone (no z context)."
    )
    statistics = f"mean {pre.mean:.4g}, std {pre.std:.4g} of the [0, 1]-scaled training slices"
    normalisation = (
        "each volume's own percentiles, then the training statistics"
        if pre.percentiles is not None
        else "the training volume's (fixed), not the input's"
    )
    citations = "\n".join(f"- {c['text']} ({_cite_ref(c)})" for c in CITATIONS)
    made_with = f"[emseg]({zoo['git_repo']})" if zoo.get("git_repo") else "emseg"
    loss_cfg = config.get("loss") or {}
    loss = str(loss_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if isinstance(loss_cfg.get("losses"), Mapping):  # a weighted sum: name its terms
        loss = " + ".join(str(name) for name in loss_cfg["losses"])
    names_of = {k: Path(str(data.get(k))).name for k in ("train_image", "train_mask", "test_image")}
    tags = ", ".join(str(t) for t in config.get("tags") or []) or "none"
    init = model.get("encoder_weights") or "random"
    optimizer = str(optim.get("_target_", "")).rsplit(".", 1)[-1]
    scheduler = str((config.get("scheduler") or {}).get("_target_", "none")).rsplit(".", 1)[-1]
    percentile_note = (
        "\n- **Per-volume percentiles.** The model was trained with every volume mapped by its "
        f"own {pre.percentiles[0]:g}th / {pre.percentiles[1]:g}th intensity percentiles. A "
        "bioimage.io tool computes `scale_range` on the image (or tile) it is given; emseg "
        "measures them on the whole volume (at most 64 slices, 2^22 voxels). Give tools whole "
        "slices or volumes, not small tiles.\n"
        if pre.percentiles is not None
        else ""
    )
    return f"""# {zoo.get("name") or "emseg mitochondria U-Net"}

{zoo.get("description") or ""}

Semantic segmentation of mitochondria in electron-microscopy volumes: for every pixel of a z
slice, the probability that it belongs to a mitochondrion. Made with
{made_with} (PyTorch Lightning + Hydra + segmentation_models_pytorch) from the
checkpoint `{checkpoint.path.name}`.

## Input

One tensor `{INPUT_ID}`, axes `batch, channel, y, x`, {np.dtype(dtype).name} intensities.
The {2 * context + 1} channel(s) ({names}) are **consecutive z slices** of a `(Z, Y, X)`
volume: to predict slice z, stack slices z-{context} .. z+{context} as channels (at the volume's
first and last slices, repeat the end slice). {two_d if context == 0 else two_and_half}
Height and width: {tiling["min"]} + n x {tiling["step"]} pixels (multiples of the network's
stride, {tiling["step"]}); voxel size **{voxel[0]:g} x {voxel[1]:g} x {voxel[2]:g} nm (z, y, x)**.

Preprocessing (declared in rdf.yaml, applied by bioimage.io tools): {steps_text}.
{percentile_note}
## Output

One tensor `{OUTPUT_ID}`, axes `batch, channel, y, x`, same height and width as the input:
the network's logit, then the declared `sigmoid` postprocessing: a foreground probability in
[0, 1] (emseg thresholds it at 0.5). Tiled prediction: discard a halo of {tiling["halo"]} pixels
at tile borders (tiles overlapping by {2 * tiling["halo"]}). emseg's own pipeline (sliding
windows of {tiling["tile"]} px with Gaussian blending, then its chosen post-processing
{json.dumps(evaluation) if evaluation else "(none)"}, including a 3D median over z where chosen)
is not part of the package: it needs whole volumes (`predict.py model=<this package>` runs it).

## Training

- data: `{names_of["train_image"]}` / `{names_of["train_mask"]}`, the last
  {data.get("val_slices")} slices held out for validation; test volume
  `{names_of["test_image"]}`;
  {statistics};
- network: smp `Unet`, encoder `{model.get("encoder_name")}`, decoder channels
  {model.get("decoder_channels")}, {2 * context + 1} input channel(s), 1 logit; encoder
  initialisation: {init};
- recipe (experiment tags: {tags}): loss `{loss}`, optimizer `{optimizer}` lr
  {optim.get("lr")}, scheduler `{scheduler}`, {trainer.get("max_epochs")} epochs x
  {trainer.get("limit_train_batches")} steps of {data.get("batch_size")} patches of
  {data.get("patch_size")}² px, foreground fraction {data.get("fg_fraction")}, seed
  {config.get("seed")}, precision `{trainer.get("precision")}`.

## Validation

Metrics of record on the held-out test volume.
{_metrics_section(zoo.get("metrics"))}
## Test tensors

`test_input.npy`: a real crop ({sample}), `test_output.npy`: this network's float32 output
on it (preprocessing, network, sigmoid), checked by `bioimageio.core`'s model test for every
weight format before the package was kept.

## Limitations

- Trained on the volume named above only (for `training.tif` of EPFL: mouse CA1
  hippocampus, FIB-SEM), at {voxel[1]:g} nm per pixel in y / x and {voxel[0]:g} nm sections:
  other voxel sizes must be resampled to it; other tissues, stainings and microscopes were not
  tested.
- Intensities are expected as EM contrast like the training volume's (dark membranes); the
  normalisation is {normalisation}.
- Semantic segmentation only (no instances: separate touching mitochondria yourself).
- {neighbours}

## Citations

{citations}
"""


def _descr(
    tmp: Path,
    checkpoint: Checkpoint,
    zoo: dict[str, Any],
    voxel: tuple[float, float, float],
    steps: list[Step],
    tiling: dict[str, int],
    dtype: np.dtype,
    opset: int,
    converted: Sequence[str],
) -> Any:
    """The bioimageio.spec 0.5 ``ModelDescr`` of the files written to ``tmp``."""
    from bioimageio.spec.model import v0_5 as spec

    context = checkpoint.preprocessing.context
    model_cfg = checkpoint.config.get("model") or {}
    space = {"unit": "nanometer"}
    size = spec.ParameterizedSize(min=tiling["min"], step=tiling["step"])
    in_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(
            channel_names=[spec.Identifier(n) for n in channel_names(context)],
            description=f"z slices z-{context} .. z+{context} (2.5D context)"[:128],
        ),
        spec.SpaceInputAxis(id=spec.AxisId("y"), size=size, scale=voxel[1], **space),
        spec.SpaceInputAxis(id=spec.AxisId("x"), size=size, scale=voxel[2], **space),
    ]
    out_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(OUTPUT_ID)]),
        *(
            spec.SpaceOutputAxisWithHalo(
                id=spec.AxisId(axis),
                halo=tiling["halo"],
                size=spec.SizeReference(
                    tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(axis)
                ),
                scale=scale,
                **space,
            )
            for axis, scale in (("y", voxel[1]), ("x", voxel[2]))
        ),
    ]
    pre_descrs = {
        "ensure_dtype": lambda kw: spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(**kw)),
        "scale_linear": lambda kw: spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(**kw)),
        "clip": lambda kw: spec.ClipDescr(kwargs=spec.ClipKwargs(**kw)),
        "scale_range": lambda kw: spec.ScaleRangeDescr(
            kwargs=spec.ScaleRangeKwargs(**{**kw, "axes": [spec.AxisId(a) for a in kw["axes"]]})
        ),
        "fixed_zero_mean_unit_variance": lambda kw: spec.FixedZeroMeanUnitVarianceDescr(
            kwargs=spec.FixedZeroMeanUnitVarianceKwargs(**kw)
        ),
    }
    torch_version = spec.Version(torch.__version__.split("+")[0])
    kwargs = {
        "encoder_name": model_cfg.get("encoder_name"),
        "in_channels": 2 * context + 1,
        "classes": int(model_cfg.get("classes", 1)),
        "decoder_use_norm": model_cfg.get("decoder_use_norm", "batchnorm"),
        "decoder_channels": list(model_cfg.get("decoder_channels")),
    }
    entries = dict(  # noqa: C408 (keyword names = the spec's weight formats)
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=tmp / "weights.pt",
            architecture=spec.ArchitectureFromFileDescr(
                source=tmp / ARCHITECTURE_FILE,
                callable=spec.Identifier("build_unet"),
                kwargs=kwargs,
            ),
            pytorch_version=torch_version,
            dependencies=spec.FileDescr(source=tmp / "environment.yaml"),
            comment="emseg checkpoint's network (state dict of smp.Unet)",
        ),
        torchscript=spec.TorchscriptWeightsDescr(
            source=tmp / "weights_torchscript.pt",
            pytorch_version=torch_version,
            parent="pytorch_state_dict",
            comment="torch.jit.script of the same network",
        )
        if "torchscript" in converted
        else None,
        onnx=spec.OnnxWeightsDescr(
            source=tmp / "weights.onnx",
            opset_version=opset,
            parent="pytorch_state_dict",
            comment="torch.onnx.export (dynamo), dynamic batch / height / width",
        )
        if "onnx" in converted
        else None,
    )
    weights = spec.WeightsDescr(**{k: v for k, v in entries.items() if v is not None})
    emseg_config = {
        "context": context,
        "voxel_size": list(voxel),
        "evaluation": checkpoint.config.get("evaluation") or {},
        "data": {
            k: (checkpoint.config.get("data") or {}).get(k)
            for k in ("train_image", "train_mask", "test_image", "test_mask", "mean", "std")
        },
        "percentiles": list(checkpoint.preprocessing.percentiles or []) or None,
        "checkpoint": checkpoint.path.name,
        "emseg_version": _version("emseg"),
        "tile_size": tiling["tile"],
    }
    fields: dict[str, Any] = dict(  # noqa: C408 (keyword names = the spec's fields)
        name=zoo.get("name") or "emseg mitochondria U-Net",
        description=(zoo.get("description") or "")[:1024],
        authors=[spec.Author(**a) for a in zoo["authors"]],
        cite=[spec.CiteEntry(**c) for c in CITATIONS],
        license=spec.LicenseId(str(zoo.get("license"))),
        tags=list(zoo.get("tags") or []),
        documentation=spec.FileDescr(source=tmp / "README.md"),
        covers=[spec.FileDescr(source=tmp / "cover.png")],
        git_repo=zoo.get("git_repo") or None,
        inputs=[
            spec.InputTensorDescr(
                id=spec.TensorId(INPUT_ID),
                description=f"{2 * context + 1} consecutive z slices of an EM volume"[:128],
                axes=in_axes,
                test_tensor=spec.FileDescr(source=tmp / "test_input.npy"),
                data=spec.IntervalOrRatioDataDescr(type=np.dtype(dtype).name),
                preprocessing=[pre_descrs[name](kw) for name, kw in steps],
            )
        ],
        outputs=[
            spec.OutputTensorDescr(
                id=spec.TensorId(OUTPUT_ID),
                description="mitochondria probability",
                axes=out_axes,
                test_tensor=spec.FileDescr(source=tmp / "test_output.npy"),
                data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                postprocessing=[spec.SigmoidDescr()],
            )
        ],
        weights=weights,
        config=spec.Config(emseg=emseg_config),  # type: ignore[call-arg]
        timestamp=spec.Datetime(datetime.datetime.now(datetime.timezone.utc)),
    )
    try:
        return spec.ModelDescr(**fields)
    except ValueError as err:  # pydantic's ValidationError: a bioimageio.* value, named
        errors = getattr(err, "errors", lambda: [])() or [{"loc": (), "msg": str(err)}]
        first = errors[0]
        loc = ".".join(str(part) for part in first.get("loc", ()))
        message = " ".join(str(first.get("msg", "")).split())[:300]
        raise ConfigError(
            f"bioimageio: the package description is invalid at {loc or 'top level'}: {message}"
        ) from err


def _environment_yaml() -> str:
    """The conda environment of the ``pytorch_state_dict`` weights (versions of this export)."""
    smp = _version("segmentation-models-pytorch") or "0.6"
    torch_version = torch.__version__.split("+")[0]
    return (
        "name: emseg-unet\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n"
        f"  - python>=3.10\n  - pytorch>={torch_version}\n  - pip\n  - pip:\n"
        f"      - segmentation-models-pytorch=={smp}\n"
    )


def _check_checkpoint(checkpoint: Checkpoint) -> None:
    model_cfg = checkpoint.config.get("model") or {}
    target = model_cfg.get("_target_")
    if target != ARCHITECTURE_FACTORY:
        raise ConfigError(
            f"ckpt_path: {checkpoint.path} was built by model._target_={target}; format="
            f"bioimageio exports {ARCHITECTURE_FACTORY} networks (its source is packaged)"
        )
    if int(model_cfg.get("classes", 1)) != 1:
        raise ConfigError(
            f"ckpt_path: {checkpoint.path} has model.classes={model_cfg.get('classes')}; the "
            "package describes one foreground logit"
        )


def _one_line(summary: Any) -> str:
    """The first failed check of a bioimageio.core ValidationSummary, in one line."""
    for detail in summary.details:
        if detail.status == "failed":
            errors = [" ".join(str(e.msg).split()) for e in detail.errors] or [""]
            return f"{detail.name}: {errors[0]}"[:500]
    return str(summary.status)


def test_package(path: Path, report_json: Path | None = None, report_md: Path | None = None) -> Any:
    """``bioimageio.core.test_model`` of the package at ``path`` on the CPU (every weight
    format); the report written to ``report_json`` / ``report_md`` when given.

    Raises:
        EmsegError: the test failed (its first failure, one line).
    """
    from bioimageio.core import test_model

    summary = test_model(path, devices=["cpu"])
    if report_json is not None:
        report_json.write_text(summary.model_dump_json(indent=2) + "\n")
    if report_md is not None:
        report_md.write_text(summary.format_md() if hasattr(summary, "format_md") else str(summary))
    if summary.status != "passed":
        raise EmsegError(
            f"bioimageio.core's model test failed for {path.name}: {_one_line(summary)}"
        )
    return summary


def export_bioimageio(cfg: DictConfig) -> dict[str, Any]:
    """Write ``<cfg.output>.zip`` (a bioimage.io model package) and its test report.

    Args:
        cfg: the composed conf/export.yaml with ``format=bioimageio``: ``ckpt_path``,
            ``output``, ``overwrite``, ``opset``, ``voxel_size`` and the ``bioimageio`` block.

    Returns:
        ``{"package": <zip>, "report": <json>, "status": "passed" | "not tested"}``.

    Raises:
        ConfigError: an output that exists (without ``overwrite=true``), no authors, no voxel
            size, a model emseg cannot package; CheckpointError: the checkpoint (e.g. without
            data.mean / data.std); EmsegError: the package fails bioimageio.core's test.
    """
    zip_path, report_json, report_md = package_paths(cfg.output)
    for path, key in ((zip_path, "output"), (report_json, "output (test report)")):
        check_output_path(path, key, bool(cfg.overwrite))
    check_output_path(report_md, "output (test report)", bool(cfg.overwrite))
    zoo = _settings(cfg)
    converted = list(zoo.get("converted_weights", CONVERTED_FORMATS))
    pipeline = build_pipeline(cfg)
    checkpoint, window = pipeline.checkpoint, pipeline.window
    _check_checkpoint(checkpoint)
    voxel = _voxel_size(cfg, checkpoint)
    net, context = checkpoint.net.float().cpu().eval(), checkpoint.preprocessing.context
    stride = model_stride(net)
    tile = int(window.tile_size or 512)
    halo = max(stride, int(round(float(window.overlap) * tile / 2 / stride)) * stride)
    tiling = {"min": 2 * halo + stride, "step": stride, "halo": halo, "tile": tile}
    sample_path = str(
        zoo.get("sample_image") or (checkpoint.config.get("data") or {}).get("test_image")
    )
    raw, where = _sample_crop(
        sample_path, context, int(zoo.get("test_size", 256)), tiling["min"], stride
    )
    steps = preprocessing_steps(checkpoint, raw.dtype)
    checked = check_preprocessing(steps, "export")
    measured = []
    for name, kw in checked:  # scale_range on the test crop itself, as a tool computes it
        if name == "scale_range":
            values = apply_steps(raw, checked[: checked.index((name, kw))])
            measured.append(
                tuple(np.percentile(values, (kw["min_percentile"], kw["max_percentile"])))
            )
    x = apply_steps(raw, checked, measured)
    probs = 1.0 / (1.0 + np.exp(-_network_output(net, x).astype(np.float64)))
    probs = probs.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="emseg-bioimageio-") as tmp_dir:
        tmp = Path(tmp_dir)
        np.save(tmp / "test_input.npy", raw)
        np.save(tmp / "test_output.npy", probs)
        _cover(raw[0, context], probs[0, 0], tmp / "cover.png")
        torch.save(net.state_dict(), tmp / "weights.pt")
        shutil.copyfile(architecture.__file__, tmp / ARCHITECTURE_FILE)
        (tmp / "environment.yaml").write_text(_environment_yaml())
        if "torchscript" in converted:
            export_torchscript(net, tmp / "weights_torchscript.pt")
        if "onnx" in converted:
            export_onnx(net, tmp / "weights.onnx", 2 * context + 1, int(cfg.opset))
        doc = _documentation(checkpoint, zoo, voxel, steps, tiling, where, raw.dtype)
        (tmp / "README.md").write_text(doc)
        descr = _descr(
            tmp, checkpoint, zoo, voxel, steps, tiling, raw.dtype, int(cfg.opset), converted
        )
        from bioimageio.spec import save_bioimageio_package

        with atomic_paths(zip_path, report_json, report_md) as (tmp_zip, tmp_json, tmp_md):
            save_bioimageio_package(descr, output_path=tmp_zip)
            status = "not tested"
            if zoo.get("test", True):
                status = test_package(tmp_zip, tmp_json, tmp_md).status
                for report in (tmp_json, tmp_md):  # the package's final name, not the temporary
                    report.write_text(report.read_text().replace(tmp_zip.name, zip_path.name))
            else:
                tmp_json.write_text(json.dumps({"status": status}) + "\n")
                tmp_md.write_text(f"bioimageio.core model test: {status}\n")
    log.info("wrote %s (bioimageio.core model test: %s) and %s", zip_path, status, report_json)
    return {"package": str(zip_path), "report": str(report_json), "status": str(status)}
