"""World-model pretraining at scale (scripts/pretrain.py): an accelerate loop over stages.

    Pretrainer(cfg).run()      trainer.py: stages, checkpoints, resume, evaluation, logs
    build_stage / freeze       stages.py: per-part loss modules that accelerate prepares
    build_datasets             data.py: held-out split, restart-exact data positions
    evaluate                   evaluation.py: PSNR / SSIM / token accuracy / open loop / LPIPS / FVD
    psnr, ssim, LPIPS, FVD     metrics.py
"""
from worldmodel.training.data import build_datasets, held_out_files, position_loader
from worldmodel.training.evaluation import EvalTools, evaluate
from worldmodel.training.metrics import FVD, LPIPS, frechet_distance, psnr, ssim
from worldmodel.training.stages import STAGES, build_stage, freeze, stage_names
from worldmodel.training.trainer import Pretrainer, resolve_pretrained_dir, weights_digest

__all__ = ["Pretrainer", "resolve_pretrained_dir", "weights_digest", "build_stage", "freeze", "stage_names",
           "STAGES", "build_datasets", "held_out_files", "position_loader", "evaluate", "EvalTools",
           "psnr", "ssim", "LPIPS", "FVD", "frechet_distance"]
