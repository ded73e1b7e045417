"""Import an official thuml/iVideoGPT checkpoint into this toolkit's save_pretrained format.

    hf download thuml/ivideogpt-oxe-64-act-free --local-dir pretrained/oxe-64-act-free   # huggingface_hub's CLI
    python scripts/import_ivideogpt.py pretrained/oxe-64-act-free pretrained/oxe64_metaworld --action-dim 4
    python mbrl/train_mbpo.py task=metaworld/plate_slide world_model.pretrained=pretrained/oxe64_metaworld

The official directory holds tokenizer/ (diffusers config + weights) and transformer/ (Llama
config + weights). Every official tensor is mapped onto our modules (worldmodel/ivideogpt/
official.py); heads the checkpoint lacks (the action projection of an action-free model, the
reward head) start at zero and are listed. The written checkpoint is reloaded and compared
before the command reports success.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from worldmodel.interface import WorldModelConfigError  # noqa: E402
from worldmodel.ivideogpt.model import IVideoGPT  # noqa: E402
from worldmodel.ivideogpt.official import import_official  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("official_dir", help="official checkpoint directory (with tokenizer/ and transformer/)")
    p.add_argument("out_dir", help="directory to write config.json + model.safetensors into")
    p.add_argument("--action-dim", type=int, default=None,
                   help="action dimension of the env (e.g. 4 for Meta-World); default: the checkpoint's "
                        "(0 for the action-free checkpoints)")
    p.add_argument("--image-size", type=int, default=None,
                   help="frame size the env gives; a checkpoint of another resolution is refused "
                        "(default: the checkpoint's)")
    p.add_argument("--context-frames", type=int, default=None,
                   help="context frames (default: the checkpoint's; fewer are allowed)")
    p.add_argument("--max-future-frames", type=int, default=None,
                   help="most imagined frames per reset (default: the model's default, 10)")
    p.add_argument("--attention-dropout", type=float, default=None,
                   help="Llama attention dropout for fine-tuning (the official MBPO uses 0.1; "
                        "default: the checkpoint config's)")
    args = p.parse_args(argv)
    overrides = {}
    if args.max_future_frames is not None:
        overrides["max_future_frames"] = args.max_future_frames
    if args.attention_dropout is not None:
        overrides["transformer"] = {"attention_dropout": args.attention_dropout}
    try:
        model, report = import_official(args.official_dir, action_dim=args.action_dim, image_size=args.image_size,
                                        context_frames=args.context_frames, **overrides)
        print(report.summary())
        model.save_pretrained(args.out_dir)
        reloaded = IVideoGPT.from_pretrained(args.out_dir)
        ours, back = model.state_dict(), reloaded.state_dict()
        if set(ours) != set(back) or any(not torch.equal(ours[k], back[k]) for k in ours):
            raise WorldModelConfigError(f"the checkpoint written to {args.out_dir} does not reload identically.")
    except (WorldModelConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_params = sum(v.numel() for v in model.parameters())
    print(f"wrote {args.out_dir} ({n_params / 1e6:.1f}M parameters, {model.image_size}x{model.image_size}, "
          f"action_dim {model.action_dim}, {model.context_frames} context frames); reloaded and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
