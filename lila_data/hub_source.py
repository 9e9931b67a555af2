# SPDX-License-Identifier: AGPL-3.0-or-later
"""FineWeb-Edu (or FineWeb) on the Hugging Face hub, streamed with ``datasets``.

Spec: ``hf:HuggingFaceFW/fineweb-edu?config=sample-10BT[&revision=main][&mirror=/local/snapshot]``.

How a shard reaches its rows: the config names a folder of the dataset repo (``sample-10BT`` →
``sample/10BT/``, ``CC-MAIN-2024-10`` → ``data/CC-MAIN-2024-10/``, ``default`` → ``data/``). Its parquet
files, sorted by path, are the source's files; a shard is ``(file path in the repo, row range)``. Row
counts come from each file's parquet footer (a few KB fetched with a range request). A shard is read by
streaming exactly that one file::

    datasets.load_dataset("parquet", data_files={"train": ["hf://datasets/REPO@REV/FILE"]},
                          split="train", streaming=True).select_columns(COLS).skip(START).take(STOP - START)

``skip`` discards the rows before ``START`` while streaming, so a shard deep inside a file downloads the
file up to its end row; planning shards of a few thousand documents keeps that cheap (FineWeb-Edu files
hold ~1 M documents each; peers lease consecutive shards and cache nothing).

``mirror`` points at a local copy laid out like the repo (e.g. made with ``huggingface-cli download
HuggingFaceFW/fineweb-edu --repo-type dataset --include 'sample/10BT/*' --local-dir DIR``): the same
file names and row ranges are then streamed from disk, with no network.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pyarrow as pa
import pyarrow.parquet as pq

from lila_data.errors import DataError
from lila_data.source_base import Source

logger = logging.getLogger(__name__)

SUPPORTED_REPOS = ("HuggingFaceFW/fineweb-edu", "HuggingFaceFW/fineweb")
SAMPLE_CONFIGS = {
    "sample-10BT": "sample/10BT",
    "sample-100BT": "sample/100BT",
    "sample-350BT": "sample/350BT",
}
DEFAULT_CONFIG_FOLDER = "data"
DUMP_CONFIG_RE = re.compile(r"CC-MAIN-\d{4}-\d{2}")
SPEC_KEYS = ("config", "revision", "mirror")
DEFAULT_REVISION = "main"
PARQUET_SUFFIX = ".parquet"


def config_folder(repo: str, config: str, *, spec: str) -> str:
    """The repo folder holding the parquet files of ``config``; unknown names raise :class:`DataError`."""
    if config in SAMPLE_CONFIGS:
        return SAMPLE_CONFIGS[config]
    if config == "default":
        return DEFAULT_CONFIG_FOLDER
    if DUMP_CONFIG_RE.fullmatch(config):
        return f"{DEFAULT_CONFIG_FOLDER}/{config}"
    raise DataError(
        f"source {spec!r}: unknown config {config!r} of {repo}; use one of {', '.join(SAMPLE_CONFIGS)}, "
        "'default' (every dump) or a dump name like 'CC-MAIN-2024-10'"
    )


@dataclass(frozen=True)
class _FileInfo:
    num_rows: int
    columns: list[str]


class HubSource(Source):
    """A config of a FineWeb(-Edu) hub dataset; see the module docstring for how shards are streamed."""

    def __init__(self, spec: str, *, repo: str, config: str, revision: str, mirror: Path | None) -> None:
        super().__init__(spec)
        if repo not in SUPPORTED_REPOS:
            raise DataError(
                f"source {spec!r}: dataset {repo!r} is not supported by hf: specs (supported: "
                f"{', '.join(SUPPORTED_REPOS)}); download other parquet datasets and use parquet:PATH"
            )
        self.repo, self.config, self.revision, self.mirror = repo, config, revision, mirror
        self.folder = config_folder(repo, config, spec=spec)
        if mirror is not None and not (mirror / self.folder).is_dir():
            raise DataError(
                f"source {spec!r}: the mirror {mirror} has no folder {self.folder}/; download the config "
                f"there (huggingface-cli download {repo} --repo-type dataset --include '{self.folder}/*' "
                f"--local-dir {mirror}) or drop &mirror= to stream from the hub"
            )
        self._files: list[str] | None = None
        self._info: dict[str, _FileInfo] = {}

    @classmethod
    def from_spec(cls, spec: str, rest: str) -> HubSource:
        """Parse the part of an ``hf:`` spec after the scheme."""
        repo, _, query = rest.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(params) - set(SPEC_KEYS))
        if unknown:
            raise DataError(f"source {spec!r}: unknown parameter(s) {unknown}; known: {', '.join(SPEC_KEYS)}")
        if "config" not in params or not params["config"]:
            raise DataError(
                f"source {spec!r}: name a config, e.g. hf:{repo or SUPPORTED_REPOS[0]}?config=sample-10BT"
            )
        mirror = Path(params["mirror"]).expanduser() if params.get("mirror") else None
        return cls(
            spec,
            repo=repo.strip("/"),
            config=params["config"],
            revision=params.get("revision") or DEFAULT_REVISION,
            mirror=mirror,
        )

    def url(self, name: str) -> str:
        """Where ``datasets`` streams file ``name`` from (an ``hf://`` URL, or a path in the mirror)."""
        if self.mirror is not None:
            return str(self.mirror / name)
        return f"hf://datasets/{self.repo}@{self.revision}/{name}"

    def _hub_error(self, what: str, exc: Exception) -> DataError:
        return DataError(
            f"source {self.spec!r}: {what} failed ({type(exc).__name__}: {exc}); check the network and "
            "HF_TOKEN, or download the files and add &mirror=/path/to/copy to the spec"
        )

    def _filesystem(self) -> tuple[Any, str]:
        """An fsspec filesystem and the repo root in it: the hub, or the local mirror (same layout)."""
        if self.mirror is not None:
            import fsspec

            return fsspec.filesystem("file"), self.mirror.resolve().as_posix()
        from huggingface_hub import HfFileSystem

        return HfFileSystem(), f"datasets/{self.repo}@{self.revision}"

    def file_names(self) -> list[str]:
        if self._files is None:
            try:
                fs, root = self._filesystem()
                found = fs.glob(f"{root}/{self.folder}/**/*{PARQUET_SUFFIX}")
            except Exception as exc:  # network, auth, hub errors all mean the same to the user
                raise self._hub_error("listing the dataset files", exc) from exc
            files = sorted(path[len(root) + 1 :] for path in found if path.startswith(root + "/"))
            if not files:
                raise DataError(
                    f"source {self.spec!r}: no parquet files under {self.folder}/; check the config name and "
                    "revision (or the mirror's contents)"
                )
            self._files = files
        return list(self._files)

    def _file_info(self, name: str) -> _FileInfo:
        if name not in self._info:
            self.check_file(name)
            try:
                fs, root = self._filesystem()
                with fs.open(f"{root}/{name}", "rb") as handle:
                    meta = pq.ParquetFile(handle).metadata
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(
                    f"{self.where(name)}: not a readable parquet file ({exc}); re-download it"
                ) from exc
            except Exception as exc:
                raise self._hub_error(f"reading the footer of {name}", exc) from exc
            self._info[name] = _FileInfo(meta.num_rows, list(meta.schema.to_arrow_schema().names))
        return self._info[name]

    def num_rows(self, name: str) -> int:
        return self._file_info(name).num_rows

    def column_names(self, name: str) -> list[str]:
        return self._file_info(name).columns

    def _read(
        self, name: str, row_start: int, row_stop: int, columns: Sequence[str], batch_rows: int
    ) -> Iterator[pa.Table]:
        import datasets

        try:
            stream = datasets.load_dataset(
                "parquet", data_files={"train": [self.url(name)]}, split="train", streaming=True
            )
            stream = stream.select_columns(list(columns)).skip(row_start).take(row_stop - row_start)
            yield from stream.with_format("arrow").iter(batch_size=batch_rows)
        except DataError:
            raise
        except Exception as exc:
            raise self._hub_error(f"streaming rows [{row_start}, {row_stop}) of {name}", exc) from exc
