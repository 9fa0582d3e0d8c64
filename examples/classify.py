"""The top-k classes of one photo.

    python -m examples.classify [--model classification_onnx] [--image F] [--url U] [--key-file K]
"""

from __future__ import annotations

from typing import List, Optional

from examples.client import ask, parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parser("classification_onnx", __doc__, "python -m examples.classify").parse_args(argv)
    for rank, item in enumerate(ask(args), 1):
        print(f"{rank}. {item['label']:<28} {item['score']:.4f}  (class {item['index']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
