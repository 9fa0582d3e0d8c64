"""The routing room: the routing file, the bucket split, the router's configuration templates, the router
processes (nginx and HAProxy, ``proxy.py``), ``tsvision route`` (``cli.py``) and ``tsvision report``. The top room."""
