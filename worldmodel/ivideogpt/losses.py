"""Optional perceptual and adversarial losses of the tokenizer (VQGAN-style).

``PatchDiscriminator`` mirrors the official discriminator (ported there from Paella): strided
spectral-normalised convs with InstanceNorm and LeakyReLU, then a 1x1 conv to one logit per
patch; parameter names match (``encoder.*``, ``shuffle.*``).

``PerceptualLoss`` is an LPIPS-style distance: unit-normalised features of a frozen VGG-like
net at the end of each stage, squared differences weighted per channel by a 1x1 conv
(``lin*``), averaged over space and summed over stages. Its module names follow the LPIPS code
the official uses (``net.slice{k}.{i}`` with torchvision's VGG feature indices, ``lin{k}.model.1``),
so with the default VGG16 stages a file holding the published LPIPS VGG weights (torchvision
``features.*`` renamed into slices, plus the ``lin*`` layers) loads as is. No weights are
downloaded: without a weights file the perceptual loss is off. torchvision is not needed.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.2
# LPIPS input normalisation (images in [-1, 1])
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class PatchDiscriminator(nn.Module):
    """Frames [N, 3, H, W] -> patch logits [N, 1, H / 2^depth, W / 2^depth]."""

    def __init__(self, in_channels: int = 3, hidden_channels: int = 512, depth: int = 4):
        super().__init__()
        d = max(depth - 3, 3)  # the first layer has hidden / 2^d channels
        width = lambda k: hidden_channels // 2 ** max(k, 0)  # noqa: E731
        sn = nn.utils.spectral_norm
        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, width(d), 3, stride=2, padding=1)),
                                   nn.LeakyReLU(LEAKY_SLOPE)]
        for i in range(depth - 1):
            layers += [sn(nn.Conv2d(width(d - i), width(d - 1 - i), 3, stride=2, padding=1)),
                       nn.InstanceNorm2d(width(d - 1 - i)), nn.LeakyReLU(LEAKY_SLOPE)]
        self.encoder = nn.Sequential(*layers)
        self.shuffle = nn.Conv2d(width(d - depth + 1) if depth > 1 else width(d), 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.encoder(x))


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return (F.relu(1 - real_logits) + F.relu(1 + fake_logits)).mean()


def adaptive_gan_weight(ref_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float) -> Tensor:
    """VQGAN's balance: ||d ref_loss / d W|| / ||d gan_loss / d W|| at the last decoder layer W."""
    g_ref = torch.autograd.grad(ref_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_ref.norm() / g_gan.norm().clamp(min=1e-8)).clamp(max=max_weight).detach()


class _VGGFeatures(nn.Module):
    """VGG-style stages (3x3 conv + ReLU each; 2x2 max-pool before every stage but the first),
    numbered like torchvision's ``vgg.features`` so LPIPS weights keep their names."""

    def __init__(self, stages: list[list[int]]):
        super().__init__()
        idx, c_in = 0, 3
        for k, widths in enumerate(stages):
            s = nn.Sequential()
            if k > 0:
                s.add_module(str(idx), nn.MaxPool2d(2, 2))
                idx += 1
            for c in widths:
                s.add_module(str(idx), nn.Conv2d(c_in, c, 3, padding=1))
                s.add_module(str(idx + 1), nn.ReLU(inplace=False))
                idx, c_in = idx + 2, c
            self.add_module(f"slice{k + 1}", s)
        self.n_slices = len(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for k in range(self.n_slices):
            x = getattr(self, f"slice{k + 1}")(x)
            feats.append(x)
        return feats


class _LinLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class PerceptualLoss(nn.Module):
    """LPIPS-style distance between images in [-1, 1]: [N, 3, H, W] x2 -> [N]. Frozen."""

    def __init__(self, stages: list[list[int]], weights_path: str | os.PathLike):
        super().__init__()
        self.net = _VGGFeatures(stages)
        for k, widths in enumerate(stages):
            self.add_module(f"lin{k}", _LinLayer(widths[-1]))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE)[None, :, None, None], persistent=False)
        self._load(weights_path)
        self.eval().requires_grad_(False)

    def _load(self, path: str | os.PathLike) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"perceptual_weights_path {path} does not exist: give a weights file for the "
                "LPIPS-style net (see worldmodel/ivideogpt/losses.py) or set it to null to turn the "
                "perceptual loss off.")
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        bad = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or bad:
            raise ValueError(
                f"{path} does not fit the perceptual net of config perceptual_channels: missing "
                f"{missing[:4]}, wrong shapes {bad[:4]} (expected keys like 'net.slice1.0.weight', "
                "'lin0.model.1.weight').")
        self.load_state_dict({k: state[k] for k in own})

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # always eval: LPIPS' dropout is never active in the loss

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = 0.0
        for k, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}").model((a - b) ** 2).mean((1, 2, 3))
        return total
