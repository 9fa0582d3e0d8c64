"""Bring a served model to its steady state before it is measured, for every batch size.

TorchScript's default executor (the stock handlers run it) compiles fused kernels for each
new input shape over its first few calls (how long: docs/performance.md). A server that has run
for a while has done this for every batch size it sees, so each batch size from 1 to the
configured one is sent as concurrent bursts until its burst time stops falling.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict

import requests


def warm_batch_sizes(url: str, photo: bytes, headers: Dict[str, str], batch_size: int,
                     max_rounds: int = 12, budget_s: float = 120.0) -> dict:
    """Send bursts of 1..``batch_size`` concurrent requests until each size's burst is no slower
    than twice its fastest; return the rounds and seconds spent."""
    headers = {**headers, "Content-Type": "image/jpeg"}
    started, rounds = time.time(), 0
    with ThreadPoolExecutor(batch_size) as pool, requests.Session() as session:
        for size in range(1, batch_size + 1):
            fastest = float("inf")
            for round_ in range(max_rounds):
                tick = time.perf_counter()
                list(pool.map(lambda _: session.post(url, data=photo, headers=headers, timeout=120), range(size)))
                took = time.perf_counter() - tick
                rounds += 1
                if round_ >= 2 and took <= 2 * fastest:
                    break
                fastest = min(fastest, took)
                if time.time() - started > budget_s:
                    return {"rounds": rounds, "seconds": round(time.time() - started, 1), "complete": False}
    return {"rounds": rounds, "seconds": round(time.time() - started, 1), "complete": True}
