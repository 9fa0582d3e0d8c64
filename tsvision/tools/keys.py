"""TorchServe's token file (``key_file.json`` in the server's working directory, token auth on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union


def read_key(key_file: Optional[Union[str, Path]], api: str = "inference") -> Optional[str]:
    """The token for ``api`` ("inference" or "management"), or None when there is no such file."""
    if not key_file or not Path(key_file).is_file():
        return None
    return json.loads(Path(key_file).read_text())[api]["key"]
