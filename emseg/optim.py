"""Parameter groups for the report's ablation: L2 on the final two convolution layers only."""

from __future__ import annotations

from torch import nn

__all__ = ["last_conv_layers", "param_groups"]


def last_conv_layers(model: nn.Module, count: int = 2) -> list[nn.Conv2d]:
    """The last ``count`` ``Conv2d`` modules in registration order.

    For smp's Unet these are the second conv of the last decoder block and the segmentation head.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-count:]


def param_groups(model: nn.Module, l2_last_two: float = 0.0) -> list[dict]:
    """Optimizer parameter groups.

    Args:
        model: the network.
        l2_last_two: weight decay (the optimizer's coupled L2 penalty) applied to the weights of
            the final two conv layers; it overrides the optimizer's own ``weight_decay`` for them.
            0 gives a single group.

    Returns:
        A list of param-group dicts for ``torch.optim`` constructors.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if l2_last_two < 0:
        raise ValueError(f"l2_last_two must be >= 0, got {l2_last_two}")
    if l2_last_two == 0:
        return [{"params": params}]
    penalised = [conv.weight for conv in last_conv_layers(model)]
    ids = {id(p) for p in penalised}
    rest = [p for p in params if id(p) not in ids]
    return [{"params": rest}, {"params": penalised, "weight_decay": l2_last_two}]
