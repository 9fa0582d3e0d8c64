"""A handler of your own: a detector that keeps only the classes in ``KEEP`` and counts them.

Archive it with your detector (docs/handlers.md)::

    tsvision archive --model build/detection/model.onnx --settings build/detection/settings.json \\
        --handler examples/handlers/people_counter.py --name people_counter

Its answer: ``{"count": 2, "detections": [{"label": "person", ..., "area": 1234.5}, ...]}``.
Everything else (decoding, batching, per-request errors, statuses) is ObjectDetector's.
"""

from tsvision.serving import ObjectDetector


class PeopleCounter(ObjectDetector):
    """ObjectDetector with one step changed: ``postprocess`` filters, counts and adds each box's area."""

    KEEP = ("person",)

    def postprocess(self, batch):
        self.finish(batch)                  # each image's detections, as ObjectDetector answers them
        batch.update(self.count_kept)       # per image; an exception here is that image's 500 only
        return self.respond(batch)          # statuses, headers, JSON bodies

    def count_kept(self, detections: list) -> dict:
        kept = [dict(d, area=round((d["box"][2] - d["box"][0]) * (d["box"][3] - d["box"][1]), 2))
                for d in detections if d["label"] in self.KEEP]
        return {"count": len(kept), "detections": kept}
