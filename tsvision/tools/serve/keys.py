"""TorchServe's token file (``key_file.json`` in the server's working directory, token auth on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from tsvision.tools.command import UsageError

DEFAULT_KEY_FILE = Path("key_file.json")
KEY_FILE_HELP = ("TorchServe's key file (token authorization), written into the folder TorchServe was started in "
                 "(default: ./key_file.json when it exists, else no token)")


def read_key(key_file: Optional[Union[str, Path]], api: str = "inference") -> Optional[str]:
    """The token for ``api`` ("inference" or "management"), or None when there is no such file."""
    if not key_file or not Path(key_file).is_file():
        return None
    return json.loads(Path(key_file).read_text())[api]["key"]


def key_file_or_default(key_file: Optional[Path]) -> Optional[Path]:
    """``--key-file`` as given (argparse checked it exists), else ./key_file.json when there is one, else None."""
    return key_file if key_file is not None else DEFAULT_KEY_FILE if DEFAULT_KEY_FILE.is_file() else None


def checked_key(key_file: Optional[Path], api: str = "inference") -> Optional[str]:
    """``read_key``; a file that is not TorchServe's key file is a one-line ``UsageError`` naming it."""
    try:
        return read_key(key_file, api)
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--key-file {key_file} is not TorchServe's key file (JSON with {api}.key; "
                         f"{type(error).__name__}: {error})") from error


def token_hint(message: str, key_file: Optional[Path]) -> str:
    """What to add to a refusal whose ``message`` says the token was missing or wrong (else "")."""
    if not any(word in message for word in ("InvalidKeyException", "Token Authorization", "Unauthorized",
                                            "UNAUTHENTICATED")):
        return ""
    if key_file is None:
        return ("; no key file was read (no ./key_file.json here): pass --key-file PATH, the key_file.json "
                "in the folder TorchServe was started in")
    return f"; the token in {key_file} was refused (keys expire after 60 minutes; is it this server's key file?)"
