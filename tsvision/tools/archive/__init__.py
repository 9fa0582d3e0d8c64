"""The archive room: inspect a model file, resolve its handler settings, check it through its handler in-process
(``local_worker.LocalWorker``), pack the ``.mar`` (``package.py``); ``tsvision archive`` (``cli.py``) and
``tsvision extra-files``. Imports the export room, never the rooms above it."""
