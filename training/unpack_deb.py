"""`dpkg -x DEB DIR` for machines without dpkg: a .deb is an ar archive holding data.tar.*."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path


def extract(deb: Path, dest: Path) -> None:
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                tar.extractall(dest, filter="tar")
            return
        pos += 60 + size + (size % 2)
    raise SystemExit(f"{deb} holds no data.tar")


if __name__ == "__main__":
    extract(Path(sys.argv[1]), Path(sys.argv[2]))
