"""Example clients for the tsvision models served by TorchServe (``python -m examples.<name>``)."""
