"""Public video corpora -> the toolkit's episode files, and dataset mixes for pretraining.

    rlds.RLDSReader            Open X-Embodiment / any RLDS dataset, from its TFDS shards
    bair.BairReader            BAIR robot pushing (softmotion30_44k .tfrecords)
    video_folder.VideoFolderReader   a folder of videos (e.g. Something-Something v2), action-free
    convert.convert_corpus     parallel, resumable conversion with a progress bar and bad-record report
    mix.load_mix               cfgs/data/<mix>.yaml -> SegmentDataset sampling folders at their weights
    tfrecord                   TFRecord / tf.train.Example reading and writing without TensorFlow

Command line: scripts/convert_dataset.py. Modules are imported lazily (``mix`` needs torch, the
readers do not).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RLDSReader": "worldmodel.corpora.rlds",
    "BairReader": "worldmodel.corpora.bair",
    "VideoFolderReader": "worldmodel.corpora.video_folder",
    "convert_corpus": "worldmodel.corpora.convert",
    "ConversionReport": "worldmodel.corpora.convert",
    "ConversionError": "worldmodel.corpora.convert",
    "load_mix": "worldmodel.corpora.mix",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worldmodel.corpora' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
