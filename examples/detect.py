"""The objects found in one photo, best first, with their boxes in image pixels.

    python -m examples.detect [--model detection_onnx] [--image F] [--url U] [--key-file K] [--show N]
"""

from __future__ import annotations

from typing import List, Optional

from examples.client import ask, parser


def main(argv: Optional[List[str]] = None) -> int:
    p = parser("detection_onnx", __doc__, "python -m examples.detect")
    p.add_argument("--show", type=int, default=10, help="print at most this many detections (default: %(default)s)")
    args = p.parse_args(argv)
    answer = ask(args)
    print(f"{len(answer)} detection(s)")
    for det in answer[: args.show]:
        x1, y1, x2, y2 = det["box"]
        print(f"{det['label']:<16} {det['score']:.3f}  box x {x1:.0f}..{x2:.0f}, y {y1:.0f}..{y2:.0f}")
    if len(answer) > args.show:
        print(f"... and {len(answer) - args.show} more (--show)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
