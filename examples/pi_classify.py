"""Classify image files or camera frames with an ffedge bundle on a device (no torch needed).

    python pi_classify.py BUNDLE digit1.png digit2.jpg      # image files, must have the bundle's size
    python pi_classify.py BUNDLE --camera 0 --frames 100     # frames from camera 0 (OpenCV), resized

Camera frames are converted to the bundle's channels and resized to its input size
(files are not: use `ffedge predict --resize` for those).
"""

import argparse
import sys
import time

import numpy as np

from ffedge.datasets.base import resize_images
from ffedge.errors import FFEdgeError
from ffedge.runtime.inputs import read_inputs
from ffedge.runtime import Runtime


def show(rt: Runtime, names: list, images: np.ndarray, mode: str) -> None:
    t = time.perf_counter()
    labels, scores = rt.predict(images, mode=mode)
    ms = (time.perf_counter() - t) * 1e3 / max(len(images), 1)
    for name, s in zip(names, scores):
        top = np.argsort(-s)[:3]
        print(f"{name}: " + ", ".join(f"{rt.classes[i]} ({s[i]:.3f})" for i in top) + f"   [{ms:.1f} ms/image]")


def camera(rt: Runtime, index: int, frames: int, mode: str) -> None:
    try:
        import cv2  # pip install opencv-python-headless (or use picamera2 and pass frames the same way)
    except ImportError:
        raise FFEdgeError("--camera needs OpenCV: pip install opencv-python-headless") from None
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise FFEdgeError(f"cannot open camera {index}")
    c, h, w = rt.bundle.input_shape
    try:
        for n in range(frames):
            ok, frame = cap.read()
            if not ok:
                raise FFEdgeError("the camera returned no frame")
            img = (
                cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[..., None] if c == 1 else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            )
            show(rt, [f"frame {n}"], resize_images(img[None], (h, w)), mode)
    finally:
        cap.release()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("images", nargs="*", help="image files (PNG, JPG, ...) or .npy arrays")
    p.add_argument("--camera", type=int, default=None, help="camera index for OpenCV")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--mode", default="all", choices=["all", "head", "topk"])
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    try:
        rt = Runtime(a.bundle, threads=a.threads)
        if a.camera is not None:
            camera(rt, a.camera, a.frames, a.mode)
        else:
            images, names = read_inputs(a.images, rt.bundle.input_shape)
            show(rt, names, images, a.mode)
    except FFEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
