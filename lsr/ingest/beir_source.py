"""Read the files of a BEIR dataset in place, from a folder, a .zip or a .tar.gz.

Archives are read without unpacking to disk, so the shared read-only copies work as-is.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO

# What reading a damaged member raises: a bad CRC, a deflate or gzip stream cut off or garbled
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError)


class BeirSource:
    """Uniform member access over a directory, a zip or a tar archive, rooted at the dataset folder."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.kind, self.names = "dir", {str(p.relative_to(path)).replace("\\", "/") for p in path.rglob("*") if p.is_file()}
        elif zipfile.is_zipfile(path):
            self.kind, self.archive = "zip", zipfile.ZipFile(path)
            self.names = {n for n in self.archive.namelist() if not n.endswith("/")}
        elif tarfile.is_tarfile(path):
            try:  # listing a .tar.gz reads it through: a cut-off one fails here
                self.kind, self.archive = "tar", tarfile.open(path)
                self.names = {m.name for m in self.archive.getmembers() if m.isfile()}
            except (OSError, EOFError, tarfile.TarError) as exc:
                raise ValueError(f"cannot read {path}: {exc} (a damaged or truncated archive?)") from None
        elif path.name.lower().endswith(".zip"):  # a cut-off zip lacks its directory, at the end: "not a ... .zip"
            raise ValueError(f"cannot read {path}: it is no whole zip archive (a damaged or truncated archive?)")
        else:
            raise ValueError(f"{path} is not a BEIR folder, .zip or .tar.gz archive")
        corpus = sorted((n for n in self.names if n == "corpus.jsonl" or n.endswith("/corpus.jsonl")),
                        key=lambda name: (name.count("/"), name))
        if not corpus:
            raise FileNotFoundError(f"{path} holds no corpus.jsonl; is it a BEIR dataset?")
        alike = [name for name in corpus if name.count("/") == corpus[0].count("/")]
        if len(alike) > 1:  # one of them was read, whichever the listing gave first
            shown = ", ".join(name[: -len("corpus.jsonl")] or "./" for name in alike[:4])
            raise ValueError(f"{path} holds {len(alike)} datasets ({shown}{', ...' if len(alike) > 4 else ''}); "
                             "give the one you mean")
        self.root = corpus[0][: -len("corpus.jsonl")]

    def has(self, member: str) -> bool:
        return self.root + member in self.names

    def size(self, member: str) -> int:
        """Uncompressed size in bytes of a member (for progress fractions)."""
        name = self._name(member)
        if self.kind == "dir":
            return (self.path / name).stat().st_size
        if self.kind == "zip":
            return self.archive.getinfo(name).file_size
        return self.archive.getmember(name).size

    def _name(self, member: str) -> str:
        name = self.root + member
        if name not in self.names:
            raise FileNotFoundError(f"{self.path} has no {member}")
        return name

    def open(self, member: str) -> IO[bytes]:
        name = self._name(member)
        if self.kind == "dir":
            return open(self.path / name, "rb")
        member = self.archive.open(name) if self.kind == "zip" else self.archive.extractfile(name)
        return io.BufferedReader(_Member(member, self.path), 1 << 20)


class _Member(io.RawIOBase):
    """An archive member's bytes, its damage one ValueError that names the archive: a bad CRC was zipfile's
    traceback (exit 1), where a damaged file is the user's to fix (exit 2)."""

    def __init__(self, member: IO[bytes], archive: Path) -> None:
        self._member, self._archive = member, archive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._member.read(len(buffer))
        except _DAMAGE as exc:
            raise ValueError(f"cannot read {self._archive}: {exc} (a damaged or truncated archive?)") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._member.close()
        super().close()
