"""The serve room: start and stop TorchServe (``server.TorchServe``), its management API and ``tsvision manage``
(``manage.py``), process trees, token keys. Imports the archive and export rooms, never the rooms above it."""
