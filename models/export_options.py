"""What an export can be asked for: formats, Parquet codecs, readers, the chunk size.

Kept apart from `models.export` so that the command line can offer the choices without
importing pandas and pyarrow: `redflag-server serve` and the admin commands never load
them (about 100 MB less memory and a second less start-up per API process).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

ExportFormat: TypeAlias = Literal["csv", "parquet"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "parquet")
# "auto": the Arrow reader where it can read the database, else the frames reader.
ExportReader: TypeAlias = Literal["auto", "arrow", "frames"]
READERS: tuple[ExportReader, ...] = ("auto", "arrow", "frames")
DEFAULT_CHUNK_SIZE = 50_000
# Parquet codecs. snappy, the format's usual default, is the fastest to write; zstd makes
# files about 40% smaller (a million events: 61 MiB against 107 MiB) for about 1.4 s more.
ParquetCompression: TypeAlias = Literal["snappy", "zstd", "lz4", "gzip", "none"]
PARQUET_COMPRESSIONS: tuple[ParquetCompression, ...] = ("snappy", "zstd", "lz4", "gzip", "none")
