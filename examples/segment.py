"""How much of one photo each class covers (the full mask is in the JSON; see examples.draw).

    python -m examples.segment [--model segmentation_onnx] [--image F] [--url U] [--key-file K]
"""

from __future__ import annotations

from typing import List, Optional

from examples.client import ask, parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parser("segmentation_onnx", __doc__, "python -m examples.segment").parse_args(argv)
    answer = ask(args)
    print(f"mask {answer['width']}x{answer['height']}, {len(answer['classes'])} class(es) present")
    for item in sorted(answer["classes"], key=lambda c: -c["pixels"]):
        print(f"{item['label']:<16} {100 * item['fraction']:6.2f}%  ({item['pixels']} pixels, class {item['index']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
