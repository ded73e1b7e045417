"""Video prediction metrics: PSNR, SSIM, LPIPS and FVD on uint8 frames.

PSNR and SSIM need nothing but torch. LPIPS and FVD need network weights that cannot be
downloaded here, so they are built only from files the user names:

* LPIPS: a file with the LPIPS VGG weights in the layout of ``worldmodel/ivideogpt/losses.py``'s
  ``PerceptualLoss`` (the tokenizer's perceptual net), e.g. the published LPIPS v0.1 VGG weights.
* FVD: a TorchScript I3D (the ``i3d_torchscript.pt`` used by StyleGAN-V and most video papers),
  called as ``detector(videos, rescale=False, resize=True, return_features=True)`` on videos
  float [N, 3, T, H, W] in [-1, 1] with T >= 9 (``FVD_MIN_FRAMES``); FVD is the Frechet distance
  of the two feature sets, with covariances normalised by N as in StyleGAN-V and iVideoGPT. It is
  meaningful with at least 256 videos per set (``FVD_RECOMMENDED_VIDEOS``). Needs scipy.

Frames everywhere: uint8 [..., 3, H, W]. Per-frame scores are averaged over all leading dims.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.interface import WorldModelConfigError

PIXEL_MAX = 255.0
SSIM_WINDOW = 11  # Gaussian window of Wang et al. (2004)
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_EPS = 1e-10  # identical frames give a finite (very high) PSNR
FVD_DETECTOR_KWARGS = dict(rescale=False, resize=True, return_features=True)
# I3D (the TF-Hub Kinetics-400 model that i3d_torchscript.pt ports) halves the time axis three
# times with 'SAME' padding (Conv3d_1a_7x7, MaxPool3d_4a_3x3, MaxPool3d_5a_2x2: T -> ceil(T/2))
# and ends with a 'VALID' average pool of 2 frames, so it needs ceil(ceil(ceil(T/2)/2)/2) >= 2,
# i.e. T >= 9 (8 frames leave 1 and fail: "input image (T: 1 ...) smaller than kernel size (kT: 2").
FVD_MIN_FRAMES = 9
FVD_RECOMMENDED_VIDEOS = 256  # fewest videos per set in the FVD literature for 400-dim I3D features
FVD_CHUNK = 16  # videos per I3D call (I3D runs at 224x224: bounds its activation memory)
# The trial video FVD runs the detector on when it is set up [N, T, 3, H, W]: 2 videos (a batch, as
# the evaluation's), the fewest frames I3D takes, small frames (I3D resizes them to 224x224 itself).
FVD_PROBE_SHAPE = (2, FVD_MIN_FRAMES, 3, 32, 32)
FRECHET_EPS = 1e-6  # added to the covariance diagonals when their product is singular (as in pytorch-fid)


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
    """Frechet video distance with a user-given TorchScript I3D (see the module docstring).

    Features are computed ``chunk`` videos at a time (``features``), so any number of videos
    fits in memory; ``distance`` compares two feature sets. scipy (for the matrix square root)
    is imported here, so a missing scipy fails when FVD is set up, not at the first evaluation.
    """

    def __init__(self, i3d_path: str | os.PathLike, device: torch.device | str = "cpu",
                 chunk: int = FVD_CHUNK):
        _require_scipy()
        if not os.path.isfile(i3d_path):
            raise FileNotFoundError(
                f"eval.fvd_i3d={i3d_path} does not exist: give the path of a TorchScript I3D "
                "(i3d_torchscript.pt, as used by StyleGAN-V) or set it to null to skip FVD.")
        if chunk < 1:
            raise ValueError(f"FVD chunk must be >= 1 video (got {chunk}).")
        self.device, self.chunk = torch.device(device), chunk
        self._load_and_probe(str(i3d_path))  # sets self.detector

    def _load_and_probe(self, i3d_path: str) -> None:
        """Load the detector and run it once on a trial video, the way ``features`` calls it: a wrong
        file (a state_dict, a model with another call or output) then fails here, in one line naming
        the setting, not with a TorchScript error at the first open-loop evaluation hours later."""
        wanted = (f"eval.fvd_i3d={i3d_path} is not a usable I3D: it must be a TorchScript I3D "
                  "(i3d_torchscript.pt, as used by StyleGAN-V) called as detector(videos [N, 3, T, H, W] in "
                  f"[-1, 1], {', '.join(f'{k}={v}' for k, v in FVD_DETECTOR_KWARGS.items())}) and returning "
                  "features [N, D]; or set eval.fvd_i3d=null to evaluate without FVD")
        try:
            self.detector = torch.jit.load(i3d_path, map_location=self.device).eval()
            n = FVD_PROBE_SHAPE[0]
            probe = torch.linspace(0, PIXEL_MAX, int(np.prod(FVD_PROBE_SHAPE))).round().to(torch.uint8)
            features = self.features(probe.reshape(FVD_PROBE_SHAPE))
        except Exception as e:  # torch.jit.load and TorchScript calls raise RuntimeError and others
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise WorldModelConfigError(f"{wanted} ({type(e).__name__}: {first_line})") from None
        if features.ndim != 2 or len(features) != n or not np.isfinite(features).all():
            raise WorldModelConfigError(f"{wanted} (it returned {features.dtype} {features.shape} for {n} "
                                        "videos, not finite features [N, D])")

    @staticmethod
    def check_frames(frames: int) -> None:
        """Refuse clips too short for I3D (see FVD_MIN_FRAMES), naming the fixes."""
        if frames < FVD_MIN_FRAMES:
            raise ValueError(
                f"FVD needs clips of at least {FVD_MIN_FRAMES} frames (I3D halves the time axis three "
                f"times before a temporal pool of 2), but the evaluation clips have {frames}: raise "
                f"segment_length to {FVD_MIN_FRAMES} or more (if the model allows it), or set "
                "eval.fvd_i3d=null to evaluate without FVD.")

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> np.ndarray:
        """uint8 [N, T, 3, H, W] -> I3D features float64 [N, D], ``chunk`` videos per I3D call."""
        if videos.dtype != torch.uint8 or videos.ndim != 5:
            raise ValueError(f"FVD takes uint8 videos [N, T, 3, H, W]; got {videos.dtype} {tuple(videos.shape)}.")
        self.check_frames(videos.shape[1])
        parts = []
        for part in videos.split(self.chunk):
            x = part.to(self.device).float() / (PIXEL_MAX / 2) - 1  # [-1, 1]
            feats = self.detector(x.permute(0, 2, 1, 3, 4).contiguous(), **FVD_DETECTOR_KWARGS)
            parts.append(feats.double().cpu().numpy())
        return np.concatenate(parts)

    @staticmethod
    def distance(real_features: np.ndarray, pred_features: np.ndarray) -> float:
        """FVD of two feature sets [N, D] (``frechet_distance``)."""
        return frechet_distance(real_features, pred_features)

    def __call__(self, real: torch.Tensor, pred: torch.Tensor) -> float:
        _check_pair(real, pred)
        return self.distance(self.features(real), self.features(pred))


def _require_scipy() -> None:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError as e:
        raise ImportError(f"FVD needs scipy ({e}): pip install scipy (a dependency in setup.cfg), "
                          "or set eval.fvd_i3d=null to evaluate without FVD.") from None


def _mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance normalised by N (not N-1), as StyleGAN-V's and iVideoGPT's FVD."""
    return features.mean(0), np.atleast_2d(np.cov(features, rowvar=False, bias=True))  # [D, D], also for D = 1


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = FRECHET_EPS) -> float:
    """Frechet distance between Gaussians fitted to feature sets [N, D] and [M, D] (N, M >= 2).

    The square root of cov_a @ cov_b is taken with scipy; when scipy finds the product singular
    (fewer videos than feature dims, constant features) or the root is not finite, ``eps`` is
    added to both diagonals and it is taken again (as pytorch-fid does); its imaginary part
    (numerical noise) is dropped, as in the reference FVD / FID code."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 videos per set (raise eval.fvd_videos).")
    (mu_a, cov_a), (mu_b, cov_b) = _mean_cov(np.asarray(a, np.float64)), _mean_cov(np.asarray(b, np.float64))
    covmean = _sqrtm_or_none(cov_a @ cov_b)
    if covmean is None:  # singular: regularise both covariances
        offset = np.eye(len(cov_a)) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
        if not np.isfinite(covmean).all():  # logged as nan, named here, rather than a silent nan
            warnings.warn("FVD: the square root of the feature covariances' product is not finite even after "
                          f"regularising with eps={eps}; FVD is nan for this evaluation (non-finite I3D features?).",
                          RuntimeWarning, stacklevel=2)
            return float("nan")
    covmean = np.real(covmean)  # the imaginary part of the root of a PSD product is numerical noise
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


SQRTM_RESIDUAL = 1e-3  # relative error ||root @ root - matrix|| beyond which a root is not trusted


def _sqrtm_or_none(matrix: np.ndarray) -> np.ndarray | None:
    """scipy's matrix square root, or None when it is not finite or does not square back to the
    matrix (a singular product; checked on the result, which every scipy version returns, rather
    than on its warning, which older ones only print)."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(matrix)
    if not np.isfinite(root).all():
        return None
    residual = np.linalg.norm(root @ root - matrix) / max(np.linalg.norm(matrix), np.finfo(float).tiny)
    return root if residual <= SQRTM_RESIDUAL else None
