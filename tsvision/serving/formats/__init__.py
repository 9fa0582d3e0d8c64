"""Model output formats (handler setting ``detection_format``), one record per (task, format).

Each family has its own file in this package listing its ``Format`` records (``FORMATS``); the
settings' validation, the task selection, the label check, the archive's format detection and the
ultralytics export all read the registry (``formats.registry``). docs/formats.md: how to add one.
"""

from tsvision.serving.formats.registry import (
    Candidates,
    ClassCount,
    Format,
    background_names,
    class_count,
    find,
    guess_format,
    lookup,
    names,
    records,
    ultralytics_tasks,
)

__all__ = ["Candidates", "ClassCount", "Format", "background_names", "class_count", "find", "guess_format", "lookup",
           "names", "records", "ultralytics_tasks"]
