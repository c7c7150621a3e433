"""fitslim's Keras 3 callbacks (Keras only; never imports torch at module level).

``Pruning``, ``QuantizationAware``, ``Distillation`` and ``Export`` for ``model.fit(callbacks=[...])``,
with the same names, arguments and defaults as ``lightning_plugins``; ``keras_callbacks.legacy`` handles
tf-keras models wrapped by tfmot. Every in-place change to the user's model lives in ``keras_callbacks._hooks``
and is taken back at fit end (and when the train step raises); after ``fit`` with
``QuantizationAware(keep_fake_quant=True)`` the model runs as its int8 model: ``float_model(model)`` gives a
temporary float view, ``load_model(path)`` reloads a saved one with its ranges.
"""

from __future__ import annotations

from fitslim.extras import require

require("keras_callbacks", {"keras": "Keras 3"}, "keras")  # before the submodules, which import it

from keras_callbacks.distillation import Distillation, FeatureAdapter  # noqa: E402
from keras_callbacks.export import Export  # noqa: E402
from keras_callbacks.pruning import Pruning  # noqa: E402
from keras_callbacks.quantization import QuantizationAware, float_model, load_model  # noqa: E402
from keras_callbacks.recipe import from_recipe  # noqa: E402

__all__ = [
    "Distillation",
    "Export",
    "FeatureAdapter",
    "Pruning",
    "QuantizationAware",
    "float_model",
    "from_recipe",
    "load_model",
]
