"""The Keras model: ImageNet MobileNetV2 (no top, pooled) + dropout + softmax head.

Following Keras' transfer-learning guide: the backbone starts frozen, its pooled features
are what the head trains on, and fine-tuning unfreezes only the top layers (BatchNorm
stays frozen). The model takes RGB pixels in 0..255 (float) and normalises inside, so the
int8 export can take raw uint8 pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConvertError, DownloadError

SUPPORTED_SIZES = (96, 128, 160, 192, 224)
# The name Keras gives the ImageNet no-top weights it downloads (alpha as Keras writes it)
NO_TOP_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5"


def build_backbone(alpha: float, size: int, weights: str):
    """MobileNetV2 without top, pooled; a wrong-alpha or corrupt weights file is an error."""
    import keras

    if size not in SUPPORTED_SIZES:
        raise ConvertError(f"--size must be one of {SUPPORTED_SIZES}, got {size}")
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ConvertError(f"weights file not found: {weights}")
    try:
        return keras.applications.MobileNetV2(
            input_shape=(size, size, 3), alpha=alpha, include_top=False, pooling="avg",
            weights=None if weights == "none" else weights)
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConvertError(
            f"cannot load backbone weights {weights} for alpha={alpha}: {first}") from None
    except Exception as exc:  # Keras' get_file raises a bare Exception when it cannot fetch
        if weights != "imagenet" or "URL fetch failure" not in str(exc):
            raise
        raise DownloadError(
            f"cannot download the ImageNet weights for MobileNetV2 alpha={alpha:g} "
            f"(no internet?): pass the Keras no-top weights file with --weights FILE, e.g. "
            f"{NO_TOP_FILE.format(alpha=float(alpha), size=224)} (one file serves every --size)"
        ) from None


def build_model(backbone, n_classes: int, dropout: float = 0.2):
    """Pixels (0..255 RGB) -> [-1, 1] -> backbone -> dropout -> softmax."""
    import keras

    size = backbone.input_shape[1]
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(inputs)
    x = backbone(x, training=False)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="maskwatch_classifier")


def features(backbone, crops: list[np.ndarray], batch: int = 128) -> np.ndarray:
    """Pooled backbone features of RGB uint8 crops (normalised as the model does)."""
    out = []
    for start in range(0, len(crops), batch):
        x = np.stack(crops[start:start + batch]).astype(np.float32) / 127.5 - 1.0
        out.append(backbone.predict_on_batch(x))
    width = backbone.output_shape[-1]
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def unfreeze_top(backbone, layers: int) -> None:
    """Make the top `layers` backbone layers trainable, BatchNorm excepted."""
    import keras

    backbone.trainable = True
    for layer in backbone.layers[:-layers]:
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
