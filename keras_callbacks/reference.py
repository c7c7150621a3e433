"""Plain Keras training of the reference digits CNN: what a user's own ``model.fit`` looks like.

The demo, the examples, the tests and the benchmarks train this; fitslim's Keras callbacks must work
on it through ``model.fit(callbacks=[...])`` alone.

Example:
    >>> from keras_callbacks.reference import build_digits_classifier
    >>> model = build_digits_classifier(width=1.0, size=8)
    >>> # model.fit(x, y, epochs=10, callbacks=[...])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_callbacks.models import keras_model

__all__ = ["TORCH_ADAM_EPSILON", "build_digits_classifier", "evaluate_accuracy"]

#: ``torch.optim.Adam``'s default epsilon, the Lightning reference module's (Keras' Adam defaults to 1e-7)
TORCH_ADAM_EPSILON = 1e-8


def build_digits_classifier(width: float = 1.0, size: int = 8, lr: float = 1e-2, epsilon: float = 1e-7) -> Any:
    """The reference digits CNN (NHWC), compiled with Adam and sparse cross-entropy on logits.

    Args:
        width: channel width multiplier (teacher 2-4, student 0.5).
        size: input image side.
        lr: Adam learning rate.
        epsilon: Adam's epsilon; Keras' default 1e-7, or :data:`TORCH_ADAM_EPSILON` to train exactly like the
            Lightning twin (:class:`lightning_plugins.reference.DigitsClassifier`, ``torch.optim.Adam`` defaults).
    """
    import keras

    model = keras_model("digits_cnn", width=width, input_size=size)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, epsilon=epsilon),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def evaluate_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a Keras model on NHWC arrays."""
    logits = np.asarray(model.predict(x, batch_size=256, verbose=0))
    return float((logits.argmax(1) == y).mean())
