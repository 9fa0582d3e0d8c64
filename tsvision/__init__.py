"""tsvision: TorchServe handlers and model archives for computer vision.

``tsvision.serving`` is what runs inside a TorchServe worker (copied whole into every archive;
it imports nothing from the tooling); ``tsvision.tools`` is the tooling (export, archive,
clients, management, routing), behind one ``tsvision`` command. This file stays import-free:
it ships in every archive.
"""

__version__ = "0.2.0"
