"""bench.md from the results dict: the numbers, each beside its target, and where they came from."""

from __future__ import annotations

from typing import Any

__all__ = ["render", "targets"]

GIB = 1024**3
# The targets.
MAX_LIGHTNING_RATIO = 1.05
MAX_INFERENCE_RATIO = 1.3
MAX_RSS_BYTES = 3 * GIB
MAX_STARTUP_S = 20.0
# A precision "keeps fg IoU" when it loses at most this much on the validation hold-out.
FG_IOU_TOLERANCE = 0.005


def _get(results: dict[str, Any], *keys: str) -> Any:
    node: Any = results
    for key in keys:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return node


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every target of the issue: the measured value, the limit, and whether it is met
    (``None`` when the section did not run)."""

    def check(value: Any, limit: float, below: bool = True) -> dict[str, Any]:
        met = None if value is None else (value <= limit if below else value >= limit)
        return {"value": value, "limit": limit, "met": met}

    out = {
        "lightning_over_plain_step": check(
            _get(results, "training", "lightning_ratio"), MAX_LIGHTNING_RATIO
        ),
        "loader_over_model_samples": check(
            _get(results, "data", "loader_over_model"), 1.0, below=False
        ),
        "default_inference_over_plain": check(
            _get(results, "inference", "ratios", "default_vs_plain_whole_volume"),
            MAX_INFERENCE_RATIO,
        ),
        "peak_rss_test_volume_bytes": check(
            _get(results, "inference", "test", "default", "peak_rss_bytes"), MAX_RSS_BYTES
        ),
        "peak_rss_big_volume_bytes": check(
            _get(results, "inference", "big", "default", "peak_rss_bytes"), MAX_RSS_BYTES
        ),
        "startup_seconds": check(_get(results, "startup", "seconds_to_first_step"), MAX_STARTUP_S),
    }
    fastest = _get(results, "training", "auto_is_fastest")
    loss = _get(results, "quality", "bf16_minus_fp32_fg_iou")
    met = None
    if fastest is not None and loss is not None:
        met = bool(fastest) and loss >= -FG_IOU_TOLERANCE
    out["auto_precision_fastest_and_keeps_fg_iou"] = {
        "value": {"auto_is_fastest": fastest, "bf16_minus_fp32_fg_iou": loss},
        "limit": f"fastest, fg IoU loss <= {FG_IOU_TOLERANCE}",
        "met": met,
    }
    return out


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _gib(value: Any) -> str:
    return "–" if value is None else f"{value / GIB:.2f} GiB"


def _met(flag: Any) -> str:
    return {True: "met", False: "NOT met", None: "not run"}[flag]


def _header(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    commit = f"{str(env['git_commit'])[:10]}{'+dirty' if env.get('git_dirty') else ''}"
    flags = ", ".join(env.get("bf16_cpu_flags") or []) or "none"
    quick = " — **quick mode: tiny synthetic sizes, the numbers mean nothing**"
    return [
        "# `make bench`",
        "",
        f"Command: `{results['command']}` (via `make bench`), {env['date_utc']} UTC, "
        f"commit `{commit}`, {results['bench_seconds']:.0f} s in total"
        + (quick if results["quick"] else "")
        + ".",
        "",
        f"Hardware: **{env['cpu_model']}**, {env['cpu_count']} CPUs, torch "
        f"{env['torch']} with {env['torch_threads']} threads, "
        f"`get_cpu_capability()` = `{env['cpu_capability']}`, "
        f"`_is_mkldnn_bf16_supported()` = {env['mkldnn_bf16_supported']}, native bf16 "
        f"= {env['native_bf16']} (CPU flags: {flags}), CUDA: {env['cuda'] or 'none'}. "
        f"Auto precision here: `{env['auto_precision_cpu']}`, channels_last "
        f"{env['auto_channels_last_cpu']}.",
        "",
        f"CPU seconds used by this run: {_f(results.get('own_cpu_seconds'), 0)}; by everything "
        f"else on the machine meanwhile: {_f(results.get('other_cpu_seconds'), 0)}.",
    ]


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets", "", "| target | value | limit | |", "|---|---|---|---|"]
    for name, target in results["targets"].items():
        value, limit = target["value"], target["limit"]
        if name.endswith("bytes"):
            value, limit = _gib(value), _gib(limit)
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {_f(v, 4)}" for k, v in value.items())
        else:
            value = _f(value)
        lines.append(f"| {name} | {value} | {limit} | {_met(target['met'])} |")
    return lines


def _data(data: dict[str, Any], train: dict[str, Any] | None) -> list[str]:
    lines = [
        "",
        "## Data pipeline",
        "",
        f"`EMDataModule.train_dataloader()` with {data['num_workers']} workers, batch "
        f"{data['batch_size']}: **{_f(data['samples_per_s'], 1)} samples/s** "
        f"({data['batches']} batches after warm-up; first batch {_f(data['first_batch_s'], 2)}"
        f" s after setup, setup {_f(data['setup_s'], 2)} s). The model consumes "
        f"{_f(data.get('model_samples_per_s'), 1)} samples/s: loader / model = "
        f"**{_f(data.get('loader_over_model'), 1)}x**.",
    ]
    if train:
        lines.append(
            f"Trainer on the real loader (workers sharing the cores): "
            f"{_f(train['lightning_real_loader']['step_s']['median'])} s/step, "
            f"{_f(train['real_loader_ratio'])}x the in-memory step."
        )
    return lines


def _startup(s: dict[str, Any], hydra_compose_s: float | None) -> list[str]:
    stages = ", ".join(f"{k} +{v:.1f} s" for k, v in s["stages_s"].items())
    return [
        "",
        "## Start-up",
        "",
        f"`{s['command']}` to its first training step: **{_f(s['seconds_to_first_step'], 1)} "
        f"s** ({stages}); `import emseg.train` alone: {_f(s['import_s'], 1)} s; composing "
        f"conf/train.yaml with Hydra (first time in a process): {_f(hydra_compose_s, 2)} s.",
    ]


def _profile(train: dict[str, Any], steps: Any) -> list[str]:
    return [
        "",
        f"## Profile: top ops of {steps} plain-loop training "
        f"steps ({train['precision']}, channels_last {train['channels_last']})",
        "",
        "```",
        train["profile_table"].rstrip(),
        "```",
    ]


def render(results: dict[str, Any]) -> str:
    """The Markdown report (bench.md); failed and skipped sections are named, not shown."""
    lines = [*_header(results), *_targets(results)]
    sections = {k: v for k, v in results.items() if isinstance(v, dict)}
    for name, value in sections.items():
        if "error" in value:
            lines += ["", f"**Section {name} FAILED**: `{value['error']}`"]
        elif "skipped" in value:
            lines += ["", f"Section {name} skipped: {value['skipped']}."]
    shown = {k: v for k, v in sections.items() if "error" not in v and "skipped" not in v}
    train = shown.get("training")
    if train:
        lines += _training(train)
    if shown.get("data"):
        lines += _data(shown["data"], train)
    if shown.get("startup"):
        lines += _startup(shown["startup"], results.get("hydra_compose_s"))
    if shown.get("inference"):
        lines += _inference(shown["inference"])
    if shown.get("quality"):
        lines += _quality(shown["quality"])
    if train:
        lines += _profile(train, results["sizes"].get("profile_steps"))
    return "\n".join(lines) + "\n"


def _training(t: dict[str, Any]) -> list[str]:
    shape = "x".join(map(str, t["batch_shape"]))
    lines = [
        "",
        "## Training step",
        "",
        f"Batch {shape}, precision `{t['precision']}`, channels_last {t['channels_last']}, "
        f"median over {t['lightning']['step_s']['n']} steps after {t['warmup_steps']} warm-up "
        "(interquartile range in brackets). Same network, loss, optimizer, precision and "
        "in-memory batches.",
        "",
        "| loop | s/step | s/image | GFLOP/s |",
        "|---|---|---|---|",
    ]
    images = t["batch_shape"][0]
    flops = t["flops"]["step_flops"]
    rows = [
        ("plain PyTorch", t["plain"]["step_s"]),
        ("plain + emseg's per-step metrics", t["plain_with_metrics"]["step_s"]),
        ("emseg LightningModule + Trainer", t["lightning"]["step_s"]),
        ("same, DataModule loader", t["lightning_real_loader"]["step_s"]),
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {_f(s['median'])} [{_f(s['iqr'])}] | {_f(s['median'] / images)} | "
            f"{_f(flops / s['median'] / 1e9, 1)} |"
        )
    phases = t["plain"]["phases_s"]
    lines += [
        "",
        f"Lightning / plain: **{_f(t['lightning_ratio'])}** (vs plain + metrics: "
        f"{_f(t['lightning_ratio_vs_plain_with_metrics'])}). One step: "
        f"{_f(flops / 1e9, 1)} GFLOP ({_f(t['flops']['gflop_per_image_step'], 1)} per image; "
        f"forward {_f(t['flops']['forward_flops'] / 1e9, 1)}). Plain-loop phases: forward "
        f"{_f(phases['forward'])} s, backward {_f(phases['backward'])} s, optimizer "
        f"{_f(phases['optimizer'])} s. Dense matmul on this CPU (2048^2): fp32 "
        f"{_f(t['matmul_fp32_gflops'], 0)} GFLOP/s, bf16 {_f(t['matmul_bf16_gflops'], 0)} "
        "GFLOP/s.",
    ]
    return [*lines, *_grids(t)]


def _grids(t: dict[str, Any]) -> list[str]:
    """The precision / layout grid and the optimizer implementations (plain loop)."""
    lines = ["", "| precision, layout (plain loop) | s/step | |", "|---|---|---|"]
    for key, value in t["precision_grid"].items():
        tag = " ".join(
            tag for tag, on in (("auto", value["auto"]), ("fastest", key == t["fastest"])) if on
        )
        lines.append(f"| {key} | {_f(value['step_s']['median'])} | {tag} |")
    lines += [
        "",
        "| optimizer implementation (plain loop, auto precision) | s/step | optimizer s |",
        "|---|---|---|",
        f"| configured (torch's CPU default) | {_f(t['plain']['step_s']['median'])} | "
        f"{_f(t['plain']['phases_s']['optimizer'])} |",
    ]
    for name, value in t.get("optimizer_implementations", {}).items():
        if "error" in value:
            lines.append(f"| {name} | failed: {value['error'][:80]} | |")
            continue
        lines.append(
            f"| {name}=True | {_f(value['step_s']['median'])} | "
            f"{_f(value['phases_s']['optimizer'])} |"
        )
    return lines


def _inference(inf: dict[str, Any]) -> list[str]:
    test = inf["test"]
    default = test["default"]
    shape = "x".join(map(str, default["volume_shape"]))
    s = default["settings"]
    lines = [
        "",
        "## Inference",
        "",
        f"Test volume {shape}, each pass in a fresh process (peak RSS = that process's "
        f"`VmHWM`, its high-water mark), precision `{s['precision']}`, "
        f"channels_last {s['channels_last']}, "
        f"{default['threads']} threads. Default settings: max_window_area "
        f"{s['max_window_area']}, tile {s['tile_size']}, overlap {s['overlap']}, border "
        f"{s['border_pad']} ({s['padding_mode']}), {s['mode']}, TTA {s['tta']}.",
        "",
        "| pass | slices | seconds | slices/s | median s/slice | x plain (median slice) | "
        "peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = inf["ratios"]
    factor = {
        "default": ratios["default_vs_plain_median_slice"],
        "plain": 1.0,
        "plain_subset": 1.0,
    }
    for name, row in test.items():
        ratio = factor.get(name, ratios.get(f"{name}_vs_plain_median_slice"))
        lines.append(
            f"| {name} | {row['slices']} | {_f(row['seconds'], 1)} | {_f(row['slices_per_s'], 2)}"
            f" | {_f(row['median_slice_s'])} | {_f(ratio, 2)} | {_gib(row['peak_rss_bytes'])} |"
        )
    lines += [
        "",
        f"Whole volume, default / plain: **{_f(ratios['default_vs_plain_whole_volume'])}**.",
    ]
    big = inf.get("big")
    if big:
        shape = "x".join(map(str, big["default"]["volume_shape"]))
        lines += [
            "",
            f"Synthetic {shape} uint8 volume on disk (test slices reflect-padded; written in "
            f"{_f(big['write_s'], 0)} s), a subset of slices each:",
            "",
            "| pass | slices | median s/slice | peak RSS |",
            "|---|---|---|---|",
        ]
        for name in ("default", "plain", "tiles_1024"):
            row = big[name]
            lines.append(
                f"| {name} | {row['slices']} | {_f(row['median_slice_s'], 2)} | "
                f"{_gib(row['peak_rss_bytes'])} |"
            )
        lines.append(
            f"\nPer slice, default / plain: {_f(big['default_vs_plain_median_slice'])}; "
            f"`tile_size=1024 overlap=0.125` (same 128-px minimum overlap) / plain: "
            f"{_f(big['tiles_1024_vs_plain_median_slice'])}."
        )
    return lines


def _quality(q: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## fg IoU on the validation hold-out ({q['slices']} slices)",
        "",
        f"Checkpoint: `{q['checkpoint']}`. Threshold 0.5, pooled over the slices.",
        "",
        "| inference | precision | channels_last | fg IoU | edge fg IoU | interior fg IoU | "
        "seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in q["variants"].items():
        lines.append(
            f"| {name} | {v['precision']} | {v['channels_last']} | {_f(v['fg_iou'], 4)} | "
            f"{_f(v['edge_fg_iou'], 4)} | {_f(v['interior_fg_iou'], 4)} | "
            f"{_f(v['seconds'], 1)} |"
        )
    lines += [
        "",
        f"bf16 - fp32 fg IoU: {_f(q['bf16_minus_fp32_fg_iou'], 4)}; fp32 takes "
        f"{_f(q['fp32_vs_auto_seconds'], 2)}x the time. Default - previous default fg IoU: "
        f"{_f(q['default_minus_previous_fg_iou'], 4)}.",
    ]
    return lines
