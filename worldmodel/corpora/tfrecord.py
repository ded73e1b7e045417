"""TFRecord files and ``tf.train.Example`` records, without TensorFlow.

A TFRecord file is a sequence of records, each framed as

    uint64 length            little-endian
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

where ``masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32) of the CRC-32C
(Castagnoli) checksum. A file may also be gzip-compressed as a whole (detected by its magic).

The records of RLDS / TFDS shards and of the BAIR release are serialized ``tf.train.Example``
protobufs (``Features``: a map from a string key to a ``Feature`` holding one of a bytes, float
or int64 list). The message classes are built here at import from their schema (same field
names and numbers as tensorflow/core/example/{example,feature}.proto), in a private descriptor
pool: no generated code, so any protobuf >= 4 runtime works and an installed TensorFlow is not
disturbed. Files written by ``write_records`` are read by ``tf.data.TFRecordDataset``.

Corruption: a record whose data checksum fails is skipped and reported, and reading goes on
with the next record (its framing is intact); a bad length checksum or a truncated file ends
the file (nothing after it can be framed), and so does damage inside a gzip-compressed file
(a corrupt deflate stream: nothing after it can be decompressed); the records before the
fault are kept. With ``errors=None`` the first fault raises
``TFRecordError`` instead.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from worldmodel.atomic_file import atomic_write

log = logging.getLogger(__name__)

CRC_MASK_DELTA = 0xA282EAD8
LENGTH_BYTES, CRC_BYTES = 8, 4
GZIP_MAGIC = b"\x1f\x8b"
CASTAGNOLI_POLY = 0x82F63B78  # reversed polynomial of CRC-32C


# ----- CRC-32C -----
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (CASTAGNOLI_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c_python(data: bytes) -> int:
    """CRC-32C in pure Python (about 5 MB/s: the fallback when google-crc32c is missing)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # the C implementation (PyPI google-crc32c), hundreds of times faster
    import google_crc32c

    def crc32c(data: bytes) -> int:
        return google_crc32c.value(bytes(data))

    FAST_CRC = google_crc32c.implementation == "c"
except ImportError:  # pragma: no cover - depends on the install
    crc32c = crc32c_python
    FAST_CRC = False


_WARNED_SLOW_CRC = False


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


# ----- framing -----
class TFRecordError(ValueError):
    """A TFRecord file or one of its records is corrupt."""

    def __init__(self, path: str | os.PathLike, fault: str, record: int | None = None,
                 offset: int | None = None, fatal: bool = True):
        self.path, self.fault, self.record, self.offset = str(path), fault, record, offset
        self.fatal = fatal  # True: nothing after it in the file can be read
        where = f" record {record} (byte {offset})" if record is not None else ""
        super().__init__(f"{path}{where}: {fault}")


@dataclass
class RecordError:
    """One skipped record (or the unreadable rest of a file), for reports."""
    path: str
    record: int | None
    offset: int | None
    fault: str
    fatal: bool

    def __str__(self) -> str:
        where = f" record {self.record} (byte {self.offset})" if self.record is not None else ""
        rest = " (rest of the file unreadable)" if self.fatal else ""
        return f"{self.path}{where}: {self.fault}{rest}"


def _open(path: Path) -> BinaryIO:
    """The file's records, through gzip when it is gzip-compressed. A plain file whose first
    record's length happens to start with the gzip magic (about one shard in 65,536) is told
    apart by the length's checksum, which a gzip header matches only by a 2**-32 chance."""
    with open(path, "rb") as f:
        head = f.read(LENGTH_BYTES + CRC_BYTES)
    plain = len(head) == LENGTH_BYTES + CRC_BYTES and \
        masked_crc(head[:LENGTH_BYTES]) == struct.unpack("<I", head[LENGTH_BYTES:])[0]
    return gzip.open(path, "rb") if head[:len(GZIP_MAGIC)] == GZIP_MAGIC and not plain else open(path, "rb")


def _describe(error: BaseException) -> str:
    """A read error for the report (zlib's bare 'error' named as the corrupt gzip data it is)."""
    if isinstance(error, zlib.error):
        return f"corrupt gzip data: {error}"
    return f"{type(error).__name__}: {error}"


def iter_records(path: str | os.PathLike, verify_crc: bool = True,
                 errors: list[RecordError] | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, data)`` for each record of a TFRecord file.

    Args:
        verify_crc: check both checksums of every record.
        errors: where to report bad records (then reading goes on where it can); None: raise
            ``TFRecordError`` on the first fault.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFRecord file {path} does not exist")
    global _WARNED_SLOW_CRC
    if verify_crc and not FAST_CRC and not _WARNED_SLOW_CRC:
        _WARNED_SLOW_CRC = True
        log.warning("google-crc32c is not installed: checksums use a slow pure-Python CRC "
                    "(pip install google-crc32c, or turn checksum verification off)")

    def fault(msg: str, index: int, offset: int, fatal: bool) -> None:
        err = TFRecordError(path, msg, index, offset, fatal)
        if errors is None:
            raise err
        errors.append(RecordError(str(path), index, offset, msg, fatal))

    index = offset = 0
    with _open(path) as f:
        while True:
            try:
                header = f.read(LENGTH_BYTES + CRC_BYTES)
            except (OSError, EOFError, zlib.error) as e:  # e.g. a truncated or corrupt gzip stream
                return fault(f"unreadable ({_describe(e)})", index, offset, True)
            if not header:
                return
            if len(header) < LENGTH_BYTES + CRC_BYTES:
                return fault("truncated record header", index, offset, True)
            length_bytes = header[:LENGTH_BYTES]
            (length,) = struct.unpack("<Q", length_bytes)
            (length_crc,) = struct.unpack("<I", header[LENGTH_BYTES:])
            if verify_crc and masked_crc(length_bytes) != length_crc:
                return fault("length checksum mismatch", index, offset, True)
            try:
                data = f.read(length)
                footer = f.read(CRC_BYTES)
            except (OSError, EOFError, zlib.error, OverflowError, MemoryError) as e:
                # zlib.error: a corrupt gzip deflate stream; the last two: a corrupt length, unchecked
                return fault(f"unreadable ({_describe(e)})", index, offset, True)
            if len(data) < length or len(footer) < CRC_BYTES:
                return fault(f"truncated record (expected {length} bytes)", index, offset, True)
            if verify_crc and masked_crc(data) != struct.unpack("<I", footer)[0]:
                fault("data checksum mismatch", index, offset, False)
            else:
                yield index, data
            index += 1
            offset += LENGTH_BYTES + CRC_BYTES + length + CRC_BYTES


def frame_record(data: bytes) -> bytes:
    """One record's bytes as they are stored in a TFRecord file."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc(length)) + data
            + struct.pack("<I", masked_crc(data)))


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> Path:
    """Write a TFRecord file atomically (temp file + rename); returns its path."""
    def write(f: BinaryIO) -> None:
        for data in records:
            f.write(frame_record(data))

    atomic_write(path, write)
    return Path(path)


# ----- tf.train.Example -----
def _example_classes() -> dict[str, type]:
    """Message classes of tensorflow/core/example/{feature,example}.proto, built at runtime."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="worldmodel/corpora/tf_example.proto", package="tensorflow", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> Any:
        msg = proto.message_type.add(name=name)
        for field_name, number, label, ftype, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = type_name
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, rep, F.TYPE_BYTES, None)])
    message("FloatList", [("value", 1, rep, F.TYPE_FLOAT, None)])
    message("Int64List", [("value", 1, rep, F.TYPE_INT64, None)])
    feature = message("Feature", [("bytes_list", 1, opt, F.TYPE_MESSAGE, ".tensorflow.BytesList"),
                                  ("float_list", 2, opt, F.TYPE_MESSAGE, ".tensorflow.FloatList"),
                                  ("int64_list", 3, opt, F.TYPE_MESSAGE, ".tensorflow.Int64List")])
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", [("feature", 1, rep, F.TYPE_MESSAGE,
                                      ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=F.TYPE_MESSAGE,
                    type_name=".tensorflow.Feature")
    message("Example", [("features", 1, opt, F.TYPE_MESSAGE, ".tensorflow.Features")])

    pool = descriptor_pool.DescriptorPool()  # private: never clashes with TensorFlow's own
    pool.Add(proto)
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is None:  # protobuf < 4.22
        factory = message_factory.MessageFactory(pool)
        get_class = factory.GetPrototype
    return {name: get_class(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("Example", "Feature", "Features", "BytesList", "FloatList", "Int64List")}


_CLASSES = _example_classes()
Example = _CLASSES["Example"]



def parse_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """A serialized ``tf.train.Example`` -> {key: list of bytes | float32 array | int64 array}.

    Raises ``ValueError`` when ``data`` is not an Example."""
    example = Example()
    try:
        example.ParseFromString(bytes(data))
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"not a tf.train.Example ({type(e).__name__}: {e})") from None
    out: dict[str, list[bytes] | np.ndarray] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = list(feature.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, dtype=np.int64)
        else:  # an empty Feature: TensorFlow treats it as an empty list
            out[key] = np.zeros(0, dtype=np.float32)
    return out


def make_example(features: dict[str, Any]) -> bytes:
    """{key: bytes | list of bytes | numbers / array} -> serialized ``tf.train.Example``.

    Floating arrays become float lists, integer and bool arrays int64 lists (as TFDS does),
    bytes (or str) values bytes lists."""
    example = Example()
    for key, value in features.items():
        feature = example.features.feature[key]
        if isinstance(value, (bytes, str)):
            value = [value]
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in value)
            continue
        array = np.asarray(value)
        if array.dtype.kind == "f":
            feature.float_list.value.extend(array.astype(np.float32).ravel().tolist())
        elif array.dtype.kind in "iub":
            feature.int64_list.value.extend(array.astype(np.int64).ravel().tolist())
        else:
            raise TypeError(f"feature '{key}': cannot store dtype {array.dtype} in a tf.train.Example")
    return example.SerializeToString()


# What decoding one malformed record can raise: bad values or shapes and invalid episodes
# (ValueError, which includes EpisodeFormatError: NaN actions, wrong lengths), missing keys
# (KeyError), values of the wrong type (TypeError), short lists (IndexError) and corrupt
# zlib-encoded tensors (zlib.error). Such a record is reported and skipped; anything else is a
# bug and fails the source.
BAD_RECORD_ERRORS = (ValueError, KeyError, TypeError, IndexError, zlib.error)


def iter_example_episodes(source: Path, to_episode: Callable[[dict], Any], exists: Callable[[str], bool],
                          errors: list[str], verify_crc: bool = True,
                          digits: int = 5) -> Iterator[tuple[str, Any]]:
    """Each tf.train.Example record of one shard as a named, validated episode (RLDS and BAIR
    store one episode per record). Episodes whose name ``exists`` are skipped before decoding;
    malformed records (``BAD_RECORD_ERRORS``, invalid episodes included) and framing errors are
    appended to ``errors`` by file and record, never raised, and reading goes on with the next
    record. A rerun skips the episodes written and reports the same bad records again."""
    record_errors: list[RecordError] = []
    stem = source.name.replace(".", "_")
    try:
        for index, data in iter_records(source, verify_crc, record_errors):
            name = f"{stem}-{index:0{digits}d}"
            if exists(name):
                continue
            try:
                episode = to_episode(parse_example(data))
                episode.meta.update(source_file=source.name, record=index)
                episode.validate(f"{source} record {index}")
            except BAD_RECORD_ERRORS as e:
                errors.append(_record_fault(source, index, e))
                continue
            yield name, episode
    finally:
        errors.extend(str(e) for e in record_errors)


def _record_fault(source: Path, index: int, error: BaseException) -> str:
    """One line for the bad-record report: file, record and the fault (an EpisodeFormatError's
    fault without the path it carries, which would repeat the file and record)."""
    fault = getattr(error, "fault", None) or f"{type(error).__name__}: {error}"
    return f"{source} record {index}: {fault}"
