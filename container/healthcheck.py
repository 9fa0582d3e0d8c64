"""The image's HEALTHCHECK: TorchServe's /ping answers 200 once every model has its workers (exit 0), else 1."""

import os
import sys
import urllib.request

port = os.environ.get("TSVISION_INFERENCE_PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as error:  # refused, 500 (workers not ready), timeout: unhealthy
    print(f"unhealthy: {error}")
    sys.exit(1)
