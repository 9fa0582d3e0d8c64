"""The clients room: ``tsvision predict`` over REST, gRPC and the Open Inference Protocol, the gRPC client and its
stubs, and the KServe v2 gRPC gateway (``tsvision gateway``). Imports the rooms below it, never ``routing``."""
