"""The DIP U-Net: strided-convolution encoder, bilinear-upsampling decoder, 1x1 skip connections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invprior.core.interfaces import Generator
from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.generators.inputs import check_input_kind, operator_image, seeded_noise
from invprior.validation import choice

#: Settings used in the field: 3 scales x 32 channels for 28-64 px images (lin-DIP),
#: 5 scales x 128 channels for 128-512 px CT (DIP+TV, EDIP), 6 scales for 362 px low-dose CT.
PRESETS: dict[str, dict] = {
    "small": {"scales": 3, "channels": 32, "skip_channels": 4},
    "medium": {"scales": 4, "channels": 32, "skip_channels": 4},
    "large": {"scales": 5, "channels": 128, "skip_channels": 4},
    "xlarge": {"scales": 6, "channels": 128, "skip_channels": 4},
}


def _per_scale(value: int | Sequence[int], count: int, name: str, minimum: int) -> list[int]:
    values = [value] * count if isinstance(value, int) else list(value)
    if len(values) != count or not all(isinstance(v, int) and v >= minimum for v in values):
        raise ConfigError(f"{name} must be an int >= {minimum} or a list of {count} such ints, got {value!r}")
    return values


class _ConvBlock(nn.Sequential):
    """conv3x3 (optionally strided) -> norm -> LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, slope: float, kernel: int = 3) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)]
        if groups:
            layers.append(nn.GroupNorm(groups if c_out % groups == 0 else 1, c_out))
        layers.append(nn.LeakyReLU(slope))
        super().__init__(*layers)


class UNet(Generator):
    """The encoder-decoder with skips used by DIP, fully convolutional (any image size).

    Level ``i`` has ``channels[i]`` channels; going down is a stride-2 3x3 convolution, going up
    bilinear upsampling to the skip's size, concatenation with ``skip_channels[i]`` 1x1-projected
    encoder features, and two 3x3 convolutions. Every convolution is followed by GroupNorm
    (``norm_groups`` groups, 0 disables it) and LeakyReLU. The output is a 1x1 convolution,
    optionally through a sigmoid (``forward_pre_sigmoid`` gives the value before it).

    Input: ``input="noise"`` (``input_channels`` channels of ``input_scale * N(0, 1)``, seeded) or
    an image from the measurement (``"fbp"``/``"pseudo_inverse"``, ``"adjoint"``).
    Build from a preset with ``UNet(preset="large")``; explicit arguments override the preset.
    """

    output_shape = None  # fully convolutional: the input fixes the size

    def __init__(self, preset: str | None = "small", scales: int | None = None,
                 channels: int | Sequence[int] | None = None, skip_channels: int | Sequence[int] | None = None,
                 out_channels: int = 1, input: str = "noise", input_channels: int = 1, input_scale: float = 0.1,
                 norm_groups: int = 4, leaky_slope: float = 0.2, sigmoid: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if preset is not None:
            choice(preset, PRESETS, "UNet: preset")
        base = PRESETS.get(preset, {}) if preset else {}
        scales = scales if scales is not None else base.get("scales")
        if not isinstance(scales, int) or scales < 1:
            raise ConfigError(f"{type(self).__name__}: scales must be a positive int, got {scales!r}")
        chans = _per_scale(channels if channels is not None else base.get("channels", 32), scales, "channels", 1)
        skips = _per_scale(skip_channels if skip_channels is not None else base.get("skip_channels", 4),
                           scales - 1, "skip_channels", 0) if scales > 1 else []
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{type(self).__name__}: dropout must lie in [0, 1), got {dropout!r}")
        self.input_kind = check_input_kind(input)
        self.input_channels, self.input_scale = int(input_channels), float(input_scale)
        self.out_channels, self.sigmoid = int(out_channels), bool(sigmoid)
        self.config: dict[str, Any] = {"scales": scales, "channels": chans, "skip_channels": skips,
                                       "norm_groups": norm_groups}
        c_in = self.input_channels if self.input_kind == "noise" else self.out_channels

        def block(a: int, b: int, stride: int = 1, kernel: int = 3) -> _ConvBlock:
            return _ConvBlock(a, b, stride, norm_groups, leaky_slope, kernel)

        self.inc = nn.Sequential(block(c_in, chans[0]), block(chans[0], chans[0]))
        self.down = nn.ModuleList(
            nn.Sequential(block(chans[i - 1], chans[i], stride=2), block(chans[i], chans[i])) for i in range(1, scales))
        self.skip = nn.ModuleList(block(chans[i], skips[i], kernel=1) if skips[i] else nn.Identity()
                                  for i in range(scales - 1))
        self.up = nn.ModuleList(
            nn.Sequential(block(chans[i + 1] + skips[i], chans[i]), block(chans[i], chans[i], kernel=1))
            for i in range(scales - 1))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.outc = nn.Conv2d(chans[0], self.out_channels, 1)

    def forward_pre_sigmoid(self, z: Tensor) -> Tensor:
        """The network output before the optional sigmoid."""
        features = [self.inc(z)]
        for down in self.down:
            features.append(down(features[-1]))
        h = features[-1]
        for i in reversed(range(len(self.up))):
            h = F.interpolate(h, size=features[i].shape[-2:], mode="bilinear", align_corners=False)
            skip = self.skip[i](features[i]) if self.config["skip_channels"][i] else features[i][:, :0]
            h = self.up[i](self.dropout(torch.cat([h, skip], dim=1)))
        return self.outc(h)

    def forward(self, z: Tensor) -> Tensor:
        out = self.forward_pre_sigmoid(z)
        return torch.sigmoid(out) if self.sigmoid else out

    def make_input(self, problem: InverseProblem, seed: int = 0) -> Tensor:
        if self.input_kind == "noise":
            _, h, w = problem.operator.domain_shape[-3:]
            return seeded_noise((problem.batch_size, self.input_channels, h, w), self.input_scale, seed, problem.y)
        return operator_image(problem, self.input_kind)
