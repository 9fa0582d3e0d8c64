"""``tsvision batch``: an archive over a folder, a glob or a list of paths, on Ray Data (one row per image)."""
