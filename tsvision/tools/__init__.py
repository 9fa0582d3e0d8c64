"""Build and operations tooling (export, archive, clients, management, routing): never shipped in an archive."""
