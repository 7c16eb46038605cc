"""An in-memory file that counts the bytes read from it, for header parsers' "reads only N bytes" checks."""

from __future__ import annotations

import io


class TallyFile(io.BytesIO):
    """A BytesIO that counts the bytes read from it in ``read_bytes``."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data
