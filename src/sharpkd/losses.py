"""Training losses: reconstruction, VGG16 perceptual, and distillation.

All image arguments are float tensors (B, 3, H, W), RGB in [0, 1]. Each loss returns a scalar
mean over the batch.

* Reconstruction: L1, Charbonnier sqrt(d^2 + eps^2) (a smooth L1; Charbonnier et al. 1994), or
  minus the per-image PSNR (so that every image counts by its relative, not absolute, error).
* Perceptual: L1 distance between VGG16 features at relu1_2, relu2_2 and relu3_3 (Johnson et al.,
  ECCV 2016), each layer's distance averaged over its elements, then the three averaged.
* Distillation: L1 (or, with the PSNR reconstruction loss, minus the PSNR) between student and
  teacher outputs, and between the student's features,
  mapped by a 1x1 adapter to the teacher's channel count and resized to its resolution, and the
  teacher's features (Romero et al., "FitNets", ICLR 2015). Teacher tensors are never differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from sharpkd.metrics import batch_psnr

VGG_WEIGHTS = Path(__file__).parent / "weights" / "vgg16_hed.safetensors"
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + eps^2)); equals eps for identical inputs."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Minus the mean per-image PSNR (dB, data range 1) divided by 100, so a 1 dB gain lowers it by
    0.01. Unlike L1, each image's error counts relative to its own size: a lightly blurred patch,
    already close to its target, weighs as much as a heavily blurred one, as in a benchmark that
    averages PSNR over images."""
    return -batch_psnr(pred, target).mean() / 100


RECONSTRUCTION = {"l1": l1, "charbonnier": charbonnier, "psnr": psnr_loss}


class VGG16Features(nn.Module):
    """The first three blocks of VGG16, frozen. ``forward`` returns [relu1_2, relu2_2, relu3_3]."""

    LAYERS = (("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
              ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256))
    TAPS = ("conv1_2", "conv2_2", "conv3_3")

    def __init__(self, weights: str | Path = VGG_WEIGHTS):
        super().__init__()
        self.convs = nn.ModuleDict({n: nn.Conv2d(i, o, 3, padding=1) for n, i, o in self.LAYERS})
        state = {f"convs.{k}": v.float() for k, v in load_file(str(weights)).items()}
        self.load_state_dict(state)
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor, taps: int = 3) -> list[torch.Tensor]:
        """The first ``taps`` of relu1_2, relu2_2, relu3_3 (fewer taps: the deeper layers are not run)."""
        x = rgb.flip(1) * 255.0 - self.mean  # Caffe convention: BGR, 0..255, mean removed
        feats = []
        for name, _, _ in self.LAYERS:
            x = F.relu(self.convs[name](x))
            if name in self.TAPS:
                feats.append(x)
                if len(feats) == min(taps, len(self.TAPS)):
                    break
                if name != "conv3_3":
                    x = F.max_pool2d(x, 2)
        return feats


@cache
def vgg16_features() -> VGG16Features:
    """A shared, frozen instance (loaded once per process)."""
    return VGG16Features()


def perceptual(pred: torch.Tensor, target: torch.Tensor, vgg: VGG16Features | None = None,
               taps: int = 3) -> torch.Tensor:
    """Mean over relu1_2/relu2_2/relu3_3 (the first ``taps`` of them) of the mean absolute feature
    difference (Caffe scale, so values are in the tens for clearly different images)."""
    vgg = vgg or vgg16_features().to(pred.device)
    fp = vgg(pred, taps)
    with torch.no_grad():
        ft = vgg(target, taps)
    return torch.stack([l1(a, b) for a, b in zip(fp, ft, strict=True)]).mean()


class FeatureAdapter(nn.Module):
    """1x1 convolution from student feature channels to teacher feature channels."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        f = self.proj(f)
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        return f


def feature_distillation(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
                         adapter: FeatureAdapter) -> torch.Tensor:
    """L1 between adapted student features and teacher features, both divided by the teacher
    features' RMS so the loss scale does not depend on the teacher's activation magnitude."""
    t = teacher_feat.detach()
    scale = t.pow(2).mean().sqrt().clamp_min(1e-6)
    return l1(adapter(student_feat, t.shape[-2:]) / scale, t / scale)


@dataclass(frozen=True)
class LossWeights:
    rec: float = 1.0
    perceptual: float = 0.0
    kd_out: float = 0.0
    kd_feat: float = 0.0
    recon: str = "charbonnier"
    perceptual_taps: int = 3  # VGG16 layers compared: 1 relu1_2, 2 + relu2_2, 3 + relu3_3


def combined_loss(w: LossWeights, pred: torch.Tensor, sharp: torch.Tensor, *,
                  teacher_out: torch.Tensor | None = None, student_feat: torch.Tensor | None = None,
                  teacher_feat: torch.Tensor | None = None, adapter: FeatureAdapter | None = None,
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the enabled terms; returns (total, {term: unweighted value}) for logging.

    ``pred`` may hold more images than ``sharp``: the first ``len(sharp)`` have ground truth, the
    rest are extra inputs that only the teacher labels (they enter the distillation terms only).
    """
    n = sharp.shape[0]
    parts: dict[str, torch.Tensor] = {"rec": RECONSTRUCTION[w.recon](pred[:n], sharp)}
    total = w.rec * parts["rec"]
    if w.perceptual > 0:
        parts["perceptual"] = perceptual(pred[:n], sharp, taps=w.perceptual_taps)
        total = total + w.perceptual * parts["perceptual"]
    if w.kd_out > 0:
        if teacher_out is None:
            raise ValueError("kd_out > 0 needs the teacher's output")
        # the per-image PSNR form, when chosen, applies to matching the teacher as well
        parts["kd_out"] = (psnr_loss if w.recon == "psnr" else l1)(pred, teacher_out.detach())
        total = total + w.kd_out * parts["kd_out"]
    if w.kd_feat > 0:
        if teacher_feat is None or student_feat is None or adapter is None:
            raise ValueError("kd_feat > 0 needs student and teacher features and an adapter")
        parts["kd_feat"] = feature_distillation(student_feat, teacher_feat, adapter)
        total = total + w.kd_feat * parts["kd_feat"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
