"""Turn a non-causal Vid2World checkpoint into a causal one (Vid2World's weight transfer).

    python scripts/causalize_checkpoint.py runs/noncausal_ckpt runs/causal_ckpt --method extrapolative

Temporal attention becomes causal by masking; each temporal convolution's taps (w0, w1, w2) on
(t-1, t, t+1) move to (t-2, t-1, t) as masked (0, w0, w1), extrapolative (0, w0 - w2, w1 + 2 w2)
or shift (w0, w1, w2). The output directory is a normal save_pretrained checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from worldmodel.interface import WorldModelConfigError  # noqa: E402
from worldmodel.registry import model_directory  # noqa: E402
from worldmodel.vid2world.causalize import causalize  # noqa: E402
from worldmodel.vid2world.configs import TRANSFER_METHODS  # noqa: E402
from worldmodel.vid2world.model import Vid2World  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", help="non-causal checkpoint directory (save_pretrained or scripts/pretrain.py "
                                  "output)")
    p.add_argument("target", help="directory to write the causal checkpoint into")
    p.add_argument("--method", choices=TRANSFER_METHODS, default="extrapolative",
                   help="weight transfer of the temporal convolutions (default: extrapolative)")
    args = p.parse_args(argv)
    try:
        model = Vid2World.from_pretrained(model_directory(args.source))
        if model.config.causal:
            raise WorldModelConfigError(f"{args.source} is already causal; nothing to do.")
        causal = causalize(model, args.method)
    except (WorldModelConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        causal.save_pretrained(args.target)
    except OSError as e:
        print(f"error: cannot write {args.target}: {e}", file=sys.stderr)
        return 1
    print(f"wrote causal checkpoint ({args.method} transfer) to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
