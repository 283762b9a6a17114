"""Reading CTranslate2 model files (`model.bin`) without the ctranslate2 package.

The layout of binary version 6 (little-endian), as the format's writer defines it:

    uint32 binary version, string spec name, uint32 spec revision, uint32 variable count,
    per variable: string name, uint8 rank, uint32 × rank shape, uint8 dtype id,
                  uint32 byte count, the bytes (row-major),
    uint32 alias count, per alias: string alias name, string name of the variable it stands for.

A string is a uint16 length (counting a terminating NUL), then its UTF-8 bytes and the NUL.
Dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.

A model may be stored split into parts (byte ranges of one file, in order); `read_index` reads the
variable table across the parts without joining them, so describing a model stays cheap.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.bundled import ConcatenatedFile

SUPPORTED_BINARY_VERSION = 6
_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.float16,
    torch.bfloat16,
)


@dataclass(frozen=True)
class Variable:
    """One stored array: where its bytes start in the (joined) file, its shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int


@dataclass(frozen=True)
class ModelIndex:
    """The variable table of a CTranslate2 model file (or of its parts, read as one)."""

    parts: tuple[Path, ...]
    spec_name: str
    spec_revision: int
    variables: dict[str, Variable]
    aliases: dict[str, str]

    def variable(self, name: str) -> Variable:
        """The variable `name`, following an alias; a missing one is an error naming the file."""
        resolved = self.aliases.get(name, name)
        if resolved not in self.variables:
            raise WordspaceError(
                f"{self.parts[0]}: CTranslate2 model has no variable {name!r}; "
                f"it is not a {self.spec_name} layout this reader knows"
            )
        return self.variables[resolved]

    def scalar(self, name: str) -> int:
        """An integer scalar variable (e.g. a number of attention heads)."""
        return int(read_tensor(self, name).item())


def _open(parts: Sequence[Path]) -> io.BufferedReader:
    return io.BufferedReader(ConcatenatedFile(list(parts)))


def _read_exact(stream: io.BufferedReader, count: int, what: Path) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise WordspaceError(
            f"{what}: CTranslate2 model file ends early; it is truncated or its parts are missing"
        )
    return data


def read_index(parts: Path | Sequence[Path]) -> ModelIndex:
    """The variable table of a `model.bin` (or of its parts in order), without reading weights."""
    parts = (Path(parts),) if isinstance(parts, str | Path) else tuple(Path(p) for p in parts)
    for part in parts:
        if not part.is_file():
            raise WordspaceError(f"{part}: CTranslate2 model file not found; check the path")
    first = parts[0]
    with _open(parts) as stream:

        def unpack(fmt: str) -> tuple[int, ...]:
            return struct.unpack("<" + fmt, _read_exact(stream, struct.calcsize("<" + fmt), first))

        def string() -> str:
            (length,) = unpack("H")
            return _read_exact(stream, length, first)[:-1].decode("utf-8")

        (version,) = unpack("I")
        if version != SUPPORTED_BINARY_VERSION:
            raise WordspaceError(
                f"{first}: CTranslate2 binary version {version} is not supported (this reader "
                f"reads version {SUPPORTED_BINARY_VERSION}); re-convert it with ctranslate2 ≥ 3.0"
            )
        spec_name = string()
        (revision,) = unpack("I")
        (count,) = unpack("I")
        variables = {}
        for _ in range(count):
            name = string()
            (rank,) = unpack("B")
            shape = unpack("I" * rank)
            dtype_id, nbytes = unpack("B") + unpack("I")
            if dtype_id >= len(_DTYPES):
                raise WordspaceError(f"{first}: variable {name!r} has unknown dtype id {dtype_id}")
            variables[name] = Variable(name, shape, _DTYPES[dtype_id], stream.tell(), nbytes)
            stream.seek(nbytes, io.SEEK_CUR)
        (alias_count,) = unpack("I")
        aliases = {}
        for _ in range(alias_count):
            alias = string()
            aliases[alias] = string()
    return ModelIndex(parts, spec_name, revision, variables, aliases)


def read_tensor(index: ModelIndex, name: str) -> torch.Tensor:
    """The array stored as `name` (or aliased to it), with its stored shape and dtype."""
    return read_tensors(index, [name])[name]


def read_tensors(index: ModelIndex, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Several arrays in one pass over the file, in the file's order."""
    wanted = sorted(
        {index.variable(name).name for name in names}, key=lambda n: index.variables[n].offset
    )
    loaded = {}
    with _open(index.parts) as stream:
        for resolved in wanted:
            variable = index.variables[resolved]
            stream.seek(variable.offset)
            data = bytearray(_read_exact(stream, variable.nbytes, index.parts[0]))
            loaded[resolved] = torch.frombuffer(data, dtype=variable.dtype).reshape(variable.shape)
    return {name: loaded[index.variable(name).name] for name in names}
