"""Convert a downloaded video corpus into episode files for world-model pretraining.

    # Open X-Embodiment / RLDS: point at the TFDS builder folder (features.json + shards)
    python scripts/convert_dataset.py rlds ~/oxe/fractal20220817_data/0.1.0 --out data/oxe/fractal20220817_data
    python scripts/convert_dataset.py rlds ~/oxe/bridge/0.1.0 --out data/oxe/bridge --workers 8
    python scripts/convert_dataset.py rlds <dir> --list-features          # which keys there are
    python scripts/convert_dataset.py rlds <dir> --out <out> --image-key image_1 \\
        --action-keys world_vector,rotation_delta --fps 10              # any dataset, by its keys
    python scripts/convert_dataset.py rlds <dir> --out <out> --spec my_dataset.yaml   # same, from a file

    # BAIR robot pushing (bair_robot_pushing_dataset_v0.tar, extracted)
    python scripts/convert_dataset.py bair ~/bair/softmotion30_44k --split train --out data/bair/train

    # a folder of videos (e.g. Something-Something v2), action-free. --labels selects the videos:
    # only the ids listed in train.json are converted (the folder also holds the validation and
    # test videos), their captions in the episode meta; --classes keeps only the classes listed
    # in a text file, one class (template) a line. The summary says how many were selected.
    python scripts/convert_dataset.py videos ~/ssv2/20bn-something-something-v2 --out data/ssv2 \\
        --frame-step 2 --max-frames 32 --labels ~/ssv2/labels/train.json [--classes my_classes.txt]

Runs in parallel (--workers), shows a progress bar, and resumes where it stopped: rerun the
same command. Bad records are reported by file (and in <out>/conversion_manifest.json) and
skipped. Exit status 0 when every source was read (bad records included), 1 when a source
failed as a whole (a rerun retries it), 2 on bad arguments. The mixes in cfgs/data/ point at the
output folders.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worldmodel.corpora.convert import ConversionError, convert_corpus  # noqa: E402
from worldmodel.corpora.frames import RESIZE_MODES  # noqa: E402

RLDS_SPEC_KEYS = ("split", "image_key", "action_keys", "reward_key", "terminal_key",
                  "success_reward", "fps", "preset", "image_size", "resize")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=False, help="output folder of episode files")
    parser.add_argument("--image-size", type=int, default=None, help="frame size (default 64)")
    parser.add_argument("--resize", choices=RESIZE_MODES, default=None,
                        help="how frames become square (default center_crop)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over: rewrite episodes and the manifest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--max-sources", type=int, default=None,
                        help="convert only the first N source files (a quick look)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)

    rlds = sub.add_parser("rlds", help="Open X-Embodiment / RLDS TFDS shards")
    rlds.add_argument("path", help="TFDS builder folder (features.json + *.tfrecord-* shards)")
    rlds.add_argument("--split", default=None, help="shards of this split (default train)")
    rlds.add_argument("--preset", default=None, help="known dataset layout (default: by folder name)")
    rlds.add_argument("--image-key", default=None, help="e.g. steps/observation/image or image_0")
    rlds.add_argument("--action-keys", default=None,
                      help="comma-separated action features (auto | none | a,b,...)")
    rlds.add_argument("--reward-key", default=None,
                      help="per-step reward feature, full key or name under steps (default steps/reward; "
                      "'none': zeros); a key the dataset lacks is an error listing the features")
    rlds.add_argument("--terminal-key", default=None,
                      help="per-step terminal flag, resolved the same way (default steps/is_terminal; "
                      "'none': no terminal steps)")
    rlds.add_argument("--success-reward", type=float, default=None,
                      help="reward at or above which a step counts as success")
    rlds.add_argument("--fps", type=float, default=None, help="control frequency (meta)")
    rlds.add_argument("--spec", default=None, help="YAML with any of: " + ", ".join(RLDS_SPEC_KEYS))
    rlds.add_argument("--no-verify-crc", action="store_true", help="skip TFRecord checksums")
    rlds.add_argument("--list-features", action="store_true",
                      help="print the dataset's per-step features and exit")
    _common(rlds)

    bair = sub.add_parser("bair", help="BAIR robot pushing softmotion30_44k .tfrecords")
    bair.add_argument("path", help="softmotion30_44k folder, a split folder or one file")
    bair.add_argument("--split", default="train", choices=("train", "test"))
    bair.add_argument("--camera", default="aux1", choices=("aux1", "main"))
    bair.add_argument("--no-verify-crc", action="store_true", help="skip TFRecord checksums")
    _common(bair)

    videos = sub.add_parser("videos", help="a folder of video files -> action-free episodes")
    videos.add_argument("path", help="folder searched recursively for videos")
    videos.add_argument("--frame-step", type=int, default=1, help="keep every k-th frame")
    videos.add_argument("--max-frames", type=int, default=None, help="at most N frames per episode")
    videos.add_argument("--min-frames", type=int, default=2, help="skip shorter videos")
    videos.add_argument("--extensions", default=None, help="comma-separated, e.g. mp4,webm")
    videos.add_argument("--labels", default=None,
                        help="JSON list of {id, label|template} (e.g. SSv2 labels/train.json): only the "
                        "videos it lists are converted, with their label as the task")
    videos.add_argument("--classes", default=None,
                        help="text file, one class (template) a line: only listed videos of these "
                        "classes are converted (needs --labels)")
    _common(videos)
    return parser


def make_reader(args: argparse.Namespace):
    sizes = {k: v for k, v in (("image_size", args.image_size), ("resize", args.resize)) if v is not None}
    if args.format == "rlds":
        from worldmodel.corpora.rlds import RLDSReader
        options = {}
        if args.spec:
            import yaml
            options = yaml.safe_load(Path(args.spec).read_text()) or {}
            unknown = sorted(set(options) - set(RLDS_SPEC_KEYS))
            if unknown:
                raise ValueError(f"{args.spec}: unknown keys {unknown}; allowed: {list(RLDS_SPEC_KEYS)}")
        flags = {"split": args.split, "preset": args.preset, "image_key": args.image_key,
                 "reward_key": args.reward_key, "terminal_key": args.terminal_key,
                 "success_reward": args.success_reward, "fps": args.fps}
        if args.action_keys is not None:
            keys = [k.strip() for k in args.action_keys.split(",") if k.strip()]
            flags["action_keys"] = keys[0] if keys in (["auto"], ["none"]) else tuple(keys)
        options.update({k: v for k, v in flags.items() if v is not None}, **sizes)
        if isinstance(options.get("action_keys"), list):
            options["action_keys"] = tuple(options["action_keys"])
        return RLDSReader(args.path, verify_crc=not args.no_verify_crc, **options)
    if args.format == "bair":
        from worldmodel.corpora.bair import BairReader
        sizes.pop("resize", None)  # BAIR frames are square already
        return BairReader(args.path, split=args.split, camera=args.camera,
                          verify_crc=not args.no_verify_crc, **sizes)
    from worldmodel.corpora.video_folder import VIDEO_EXTENSIONS, VideoFolderReader
    extensions = tuple(args.extensions.split(",")) if args.extensions else VIDEO_EXTENSIONS
    return VideoFolderReader(args.path, frame_step=args.frame_step, max_frames=args.max_frames,
                             min_frames=args.min_frames, extensions=extensions,
                             labels=args.labels, classes=args.classes, **sizes)


def list_features(reader) -> None:
    print(f"{reader.dataset} ({reader.builder_dir}): per-step features")
    for key, spec in reader.specs.items():
        if spec.per_step:
            print(f"  {key:55s} {spec.kind:6s} {spec.dtype:8s} {list(spec.shape)} {spec.encoding}")
    print(f"image key: {reader.image_key}; action keys: {reader.action_keys}; reward key: "
          f"{reader.reward_key}; terminal key: {reader.terminal_key}; fps: {reader.fps}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        reader = make_reader(args)
        if getattr(args, "list_features", False):
            list_features(reader)
            return 0
        if not args.out:
            parser.error("--out is required")
        report = convert_corpus(reader, args.out, workers=args.workers, resume=not args.no_resume,
                                progress=not args.no_progress, max_sources=args.max_sources)
    except (ConversionError, FileNotFoundError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(report.summary())
    print(json.dumps({"written": report.written, "existing": report.existing,
                      "bad_records": len(report.bad_records),
                      "failed_sources": len(report.failed_sources)}))
    return 1 if report.failed_sources else 0


if __name__ == "__main__":
    sys.exit(main())
