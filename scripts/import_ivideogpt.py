"""Import an official thuml/iVideoGPT checkpoint into this toolkit's save_pretrained format.

    hf download thuml/ivideogpt-oxe-64-act-free --local-dir pretrained/oxe-64-act-free   # huggingface_hub's CLI
    python scripts/import_ivideogpt.py pretrained/oxe-64-act-free pretrained/oxe64_metaworld --action-dim 4
    python mbrl/train_mbpo.py task=metaworld/plate_slide world_model.pretrained=pretrained/oxe64_metaworld

The official directory holds tokenizer/ (diffusers config + weights) and transformer/ (Llama
config + weights). Every official tensor is mapped onto our modules (worldmodel/ivideogpt/
official.py); heads the checkpoint lacks (the action projection of an action-free model, the
reward head) start at zero and are listed. The checkpoint is written to a temp folder, reloaded
and compared, and only then moved to the output directory.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from worldmodel.interface import CONFIG_NAME, WEIGHTS_NAME, WorldModelConfigError  # noqa: E402
from worldmodel.ivideogpt.model import IVideoGPT  # noqa: E402
from worldmodel.ivideogpt.official import import_official  # noqa: E402


def save_verified(model: IVideoGPT, out_dir: str) -> None:
    """``model.save_pretrained`` into a temp folder, reload it and compare, and only then move it
    to ``out_dir``: a checkpoint that does not reload identically never lands there.

    The temp folder lies inside ``out_dir`` when that exists (so the moves stay on its file
    system), else beside it. Into an existing ``out_dir`` (other files in it are kept) the old
    config.json is removed first and the new one moved in last, as save_pretrained does, so its
    config.json never describes other weights."""
    out = os.path.abspath(out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", out_dir)
    exists = os.path.isdir(out)
    tmp = os.path.join(out if exists else os.path.dirname(out), f".import-{uuid.uuid4().hex[:8]}.tmp")
    try:
        model.save_pretrained(tmp)
        reloaded = IVideoGPT.from_pretrained(tmp)
        ours, back = model.state_dict(), reloaded.state_dict()
        if set(ours) != set(back) or any(not torch.equal(ours[k], back[k]) for k in ours):
            raise WorldModelConfigError(f"the written checkpoint does not reload identically; nothing was "
                                        f"written to {out_dir}.")
        if not exists:
            os.replace(tmp, out)
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, CONFIG_NAME))
        os.replace(os.path.join(tmp, WEIGHTS_NAME), os.path.join(out, WEIGHTS_NAME))
        os.replace(os.path.join(tmp, CONFIG_NAME), os.path.join(out, CONFIG_NAME))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after moving it into place


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
    except (WorldModelConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    try:
        save_verified(model, args.out_dir)
    except WorldModelConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out_dir}: {e}", file=sys.stderr)
        return 1
    n_params = sum(v.numel() for v in model.parameters())
    print(f"wrote {args.out_dir} ({n_params / 1e6:.1f}M parameters, {model.image_size}x{model.image_size}, "
          f"action_dim {model.action_dim}, {model.context_frames} context frames); reloaded and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
