"""Writing small WebDataset tar shards for the tests."""

import io
import tarfile
from pathlib import Path


def write_shard(path: Path, items) -> Path:
    """A tar of ``(key, image bytes, label)`` items: ``key.jpg`` and, unless the label is None, ``key.cls``."""
    with tarfile.open(path, "w") as tar:
        for key, data, label in items:
            for name, payload in ((f"{key}.jpg", data), (f"{key}.cls", None if label is None else str(label).encode())):
                if payload is not None:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return path
