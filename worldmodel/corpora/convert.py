"""Convert a corpus into episode files: parallel over source files, resumable, never dies on bad data.

A *reader* (``RLDSReader``, ``BairReader``, ``VideoFolderReader``) lists its source files and
turns one source into named episodes. ``convert_corpus`` runs readers over the sources in worker
processes with a tqdm bar and keeps ``conversion_manifest.json`` in the output folder:

    {"reader": {...the reader's settings...},
     "sources": {"<source path>": {"size", "mtime", "episodes", "errors": [...]}}}

Resume: a source listed in the manifest (same size and mtime) is skipped whole; inside an
unfinished source, episodes whose output file exists are skipped before decoding. Episode
names are derived from the source name and the record index, so a rerun writes the same
files. Bad records (checksum failures, truncated files, undecodable images, corrupt zlib
tensors, missing keys, episodes that fail validation such as NaN actions) are reported by file
and record in the manifest and the summary, and conversion goes on with the next record; a
rerun skips what was written and reports the same bad records again. A source that fails
as a whole (an unexpected error) is reported and left out of the manifest, so the next run
tries it again. A manifest written with other reader settings is refused (use a new folder).
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from tqdm import tqdm

from worldmodel.atomic_file import atomic_write
from worldmodel.episodes import EPISODE_SUFFIX, Episode, EpisodeFormatError, save_episode

log = logging.getLogger(__name__)

MANIFEST_NAME = "conversion_manifest.json"
MANIFEST_FLUSH_SECONDS = 5.0  # rewrite the manifest at most this often (and at the end)
ERRORS_SHOWN = 20  # bad records printed in the summary (all of them are in the manifest)


class Reader(Protocol):
    """What ``convert_corpus`` needs from a corpus reader (the readers are picklable dataclasses)."""

    def sources(self) -> list[Path]:
        """The source files, in a fixed order."""

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output (compared with the manifest on resume). A reader
        may also define ``normalise_settings(settings) -> settings``, applied to the manifest's
        settings before the comparison (e.g. to resolve short feature keys), and a ``notes``
        list of lines for the summary, filled by ``sources`` (e.g. which videos it selected)."""

    def iter_episodes(self, source: Path, exists: Callable[[str], bool],
                      errors: list[str]) -> Iterator[tuple[str, Episode]]:
        """Yield (output name without suffix, episode) for the episodes of ``source`` whose
        name ``exists`` does not report as written; append one line per bad record to
        ``errors`` and go on."""


class ConversionError(RuntimeError):
    """Conversion cannot start (bad paths, a folder converted with other settings)."""


@dataclass
class SourceResult:
    source: str
    size: int
    mtime: float
    written: int = 0
    existing: int = 0
    errors: list[str] = field(default_factory=list)
    failed: str | None = None  # the source as a whole could not be converted


@dataclass
class ConversionReport:
    out_dir: Path
    sources: int = 0  # sources in the corpus
    converted: int = 0  # converted in this run
    resumed: int = 0  # finished in an earlier run, skipped whole
    written: int = 0  # episodes written in this run
    existing: int = 0  # episodes found already written
    bad_records: list[str] = field(default_factory=list)
    failed_sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the reader's (e.g. which videos it selected)

    def summary(self) -> str:
        lines = [f"{self.out_dir}: {self.written} episodes written, {self.existing} already there; "
                 f"{self.converted} of {self.sources} sources converted now, {self.resumed} "
                 "finished before"]
        lines += self.notes
        if self.bad_records:
            lines.append(f"{len(self.bad_records)} bad records skipped (all listed in "
                         f"{self.out_dir / MANIFEST_NAME}):")
            lines += [f"  {e}" for e in self.bad_records[:ERRORS_SHOWN]]
        if self.failed_sources:
            lines.append(f"{len(self.failed_sources)} sources failed and will be retried on resume:")
            lines += [f"  {e}" for e in self.failed_sources[:ERRORS_SHOWN]]
        return "\n".join(lines)


def _source_stat(source: Path) -> tuple[int, float]:
    stat = source.stat()
    return stat.st_size, stat.st_mtime


def convert_source(reader: Reader, source: Path, out_dir: Path) -> SourceResult:
    """Convert one source file (runs in a worker process)."""
    size, mtime = _source_stat(source)
    result = SourceResult(str(source.resolve()), size, mtime)

    def exists(name: str) -> bool:
        done = (out_dir / f"{name}{EPISODE_SUFFIX}").is_file()
        result.existing += done
        return done

    try:
        for name, episode in reader.iter_episodes(source, exists, result.errors):
            try:
                save_episode(out_dir / f"{name}{EPISODE_SUFFIX}", episode)
            except EpisodeFormatError as e:  # an invalid episode the reader let through: one bad record
                result.errors.append(f"{source} episode {name}: {e.fault}")
                continue
            result.written += 1
    except Exception as e:  # report the source, keep the other workers going
        result.failed = f"{source}: {type(e).__name__}: {e}"
        log.debug("source %s failed", source, exc_info=True)
    return result


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise ConversionError(f"{path} is unreadable ({e}); delete it to start the conversion "
                              "over (episode files already written are kept and skipped)") from None


def _as_stored(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON gives them back (tuples become lists)."""
    return json.loads(json.dumps(settings))


def _stored_settings(reader: Reader, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's reader settings, normalised by the reader when it can."""
    stored = manifest.get("reader")
    normalise = getattr(reader, "normalise_settings", None)
    if stored is None or normalise is None:
        return stored
    return _as_stored(normalise(stored))


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(text))


def convert_corpus(reader: Reader, out_dir: str | os.PathLike, workers: int = 1,
                   resume: bool = True, progress: bool = True,
                   max_sources: int | None = None) -> ConversionReport:
    """Convert every source of ``reader`` into episode files under ``out_dir``.

    Args:
        workers: worker processes (1: convert in this process).
        resume: skip sources finished in an earlier run and episodes already written; False
            starts over (existing episode files are overwritten).
        progress: show a tqdm bar over the sources.
        max_sources: convert only the first N sources (a quick look at a corpus).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    settings = _as_stored(reader.settings())
    manifest = _read_manifest(manifest_path) if resume else None
    if manifest is not None and _stored_settings(reader, manifest) != settings:
        before = _stored_settings(reader, manifest) or {}
        diff = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}"
                         for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k))
        raise ConversionError(
            f"{out_dir} was converted with other settings ({diff}); convert into a new folder, "
            "or pass resume=False (--no-resume) to overwrite it")
    if manifest is None:
        manifest = {"reader": settings, "sources": {}}
    done = manifest["sources"]

    sources = reader.sources()[:max_sources]
    report = ConversionReport(out_dir, sources=len(sources), notes=list(getattr(reader, "notes", [])))
    todo = []
    for source in sources:
        entry = done.get(str(source.resolve()))
        if resume and entry is not None and (entry["size"], entry["mtime"]) == _source_stat(source):
            report.resumed += 1
            report.bad_records += entry.get("errors", [])
        else:
            todo.append(source)

    job_reader = reader if resume else _Overwrite(reader)  # no resume: overwrite episodes
    bar = tqdm(total=len(sources), initial=report.resumed, desc=f"convert -> {out_dir.name}",
               unit="file", disable=not progress, dynamic_ncols=True)

    last_flush = [time.monotonic()]

    def record(result: SourceResult) -> None:
        report.written += result.written
        report.existing += result.existing
        report.bad_records += result.errors
        if result.failed:
            report.failed_sources.append(result.failed)
        else:
            report.converted += 1
            done[result.source] = {"size": result.size, "mtime": result.mtime,
                                   "episodes": result.written + result.existing,
                                   "errors": result.errors, "finished": time.time()}
            if time.monotonic() - last_flush[0] > MANIFEST_FLUSH_SECONDS:
                _write_manifest(manifest_path, manifest)
                last_flush[0] = time.monotonic()
        bar.update(1)
        bar.set_postfix(episodes=report.written + report.existing,
                        bad=len(report.bad_records) + len(report.failed_sources))

    _write_manifest(manifest_path, manifest)
    try:
        if workers <= 1 or len(todo) <= 1:
            for source in todo:
                record(convert_source(job_reader, source, out_dir))
        else:
            # spawn: workers start clean (no inherited threads or torch state from the caller)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(convert_source, job_reader, s, out_dir) for s in todo]
                try:
                    for future in as_completed(futures):
                        record(future.result())
                except BrokenProcessPool:
                    raise ConversionError(
                        "a worker process died (out of memory? killed?); what finished is kept: "
                        "rerun to resume, with fewer workers if memory is short") from None
                except BaseException:  # Ctrl-C, or an error here: don't wait for the queued sources
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:  # also on Ctrl-C: what finished is kept for the next run
        _write_manifest(manifest_path, manifest)
        bar.close()
    return report


@dataclass
class _Overwrite:
    """A reader that ignores episodes already written (resume=False)."""
    reader: Any

    def iter_episodes(self, source: Path, exists: Callable[[str], bool],
                      errors: list[str]) -> Iterator[tuple[str, Episode]]:
        return self.reader.iter_episodes(source, lambda name: False, errors)
