"""The image's HEALTHCHECK: TorchServe's /ping answers 200 once every model has its workers (exit 0), else 1.

TorchServe 0.12's token authorization covers /ping too (400 without the token), so this sends the
inference token from the key file TorchServe wrote in its working directory."""

import json
import os
import sys
import urllib.request

port = os.environ.get("TSVISION_INFERENCE_PORT", "8080")
try:
    with open(os.path.expanduser("~model-server/key_file.json")) as key_file:
        token = json.load(key_file)["inference"]["key"]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ping", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as error:  # no key file yet, refused, 500 (workers not ready), timeout: unhealthy
    print(f"unhealthy: {error}")
    sys.exit(1)
