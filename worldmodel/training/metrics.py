"""Video prediction metrics: PSNR, SSIM, LPIPS and FVD on uint8 frames.

PSNR and SSIM need nothing but torch. LPIPS and FVD need network weights that cannot be
downloaded here, so they are built only from files the user names:

* LPIPS: a file with the LPIPS VGG weights in the layout of ``worldmodel/ivideogpt/losses.py``'s
  ``PerceptualLoss`` (the tokenizer's perceptual net), e.g. the published LPIPS v0.1 VGG weights.
* FVD: a TorchScript I3D (the ``i3d_torchscript.pt`` used by StyleGAN-V and most video papers),
  called as ``detector(videos, rescale=False, resize=True, return_features=True)`` on videos
  float [N, 3, T, H, W] in [-1, 1]; FVD is the Frechet distance of the two feature sets.

Frames everywhere: uint8 [..., 3, H, W]. Per-frame scores are averaged over all leading dims.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_MAX = 255.0
SSIM_WINDOW = 11  # Gaussian window of Wang et al. (2004)
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_EPS = 1e-10  # identical frames give a finite (very high) PSNR
FVD_DETECTOR_KWARGS = dict(rescale=False, resize=True, return_features=True)


def _unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 [N, 3, H, W] in [0, 1]."""
    if frames.dtype != torch.uint8:
        raise ValueError(f"metrics take uint8 frames [..., 3, H, W]; got {frames.dtype}.")
    return frames.reshape(-1, *frames.shape[-3:]).float() / PIXEL_MAX


def _check_pair(real: torch.Tensor, pred: torch.Tensor) -> None:
    if real.shape != pred.shape:
        raise ValueError(f"real {tuple(real.shape)} and predicted {tuple(pred.shape)} frames differ in shape.")


def psnr(real: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB, uint8 [..., 3, H, W] x2 -> [...]."""
    _check_pair(real, pred)
    mse = (_unit(real) - _unit(pred)).pow(2).mean((1, 2, 3))  # [N]
    return (10 * torch.log10(1.0 / (mse + PSNR_EPS))).reshape(real.shape[:-3])


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, SSIM_WINDOW, SSIM_WINDOW)  # one per channel


def ssim(real: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM (Gaussian 11x11, sigma 1.5, per channel then averaged), uint8 x2 -> [...]."""
    _check_pair(real, pred)
    x, y = _unit(real), _unit(pred)  # [N, 3, H, W]
    w = _gaussian_window(x.device)
    blur = lambda t: F.conv2d(t, w, groups=3)  # noqa: E731  valid conv, as the reference SSIM
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean((1, 2, 3)).reshape(real.shape[:-3])


class LPIPS:
    """LPIPS distance with user-given weights (see the module docstring); uint8 x2 -> [...]."""

    def __init__(self, weights_path: str | os.PathLike, device: torch.device | str = "cpu"):
        from worldmodel.ivideogpt.losses import PerceptualLoss
        from worldmodel.ivideogpt.tokenizer_configs import VGG16_STAGES

        self.net = PerceptualLoss(VGG16_STAGES, weights_path).to(device)

    @torch.no_grad()
    def __call__(self, real: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        _check_pair(real, pred)
        device = self.net.shift.device
        x, y = (_unit(t).to(device) * 2 - 1 for t in (real, pred))
        return self.net(x, y).reshape(real.shape[:-3]).cpu()


class FVD:
    """Frechet video distance with a user-given TorchScript I3D (see the module docstring)."""

    def __init__(self, i3d_path: str | os.PathLike, device: torch.device | str = "cpu"):
        if not os.path.isfile(i3d_path):
            raise FileNotFoundError(
                f"eval.fvd_i3d={i3d_path} does not exist: give the path of a TorchScript I3D "
                "(i3d_torchscript.pt, as used by StyleGAN-V) or set it to null to skip FVD.")
        self.device = torch.device(device)
        self.detector = torch.jit.load(str(i3d_path), map_location=self.device).eval()

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> np.ndarray:
        """uint8 [N, T, 3, H, W] -> I3D features float64 [N, D]."""
        x = videos.to(self.device).float() / (PIXEL_MAX / 2) - 1  # [-1, 1]
        feats = self.detector(x.permute(0, 2, 1, 3, 4).contiguous(), **FVD_DETECTOR_KWARGS)
        return feats.double().cpu().numpy()

    def __call__(self, real: torch.Tensor, pred: torch.Tensor) -> float:
        _check_pair(real, pred)
        return frechet_distance(self.features(real), self.features(pred))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets [N, D] and [M, D] (N, M >= 2)."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 videos per set (raise eval.batches).")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))
