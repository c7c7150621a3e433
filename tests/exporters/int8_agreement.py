"""Top-1 agreement of an int8 artifact with its fp32 source that holds on any CPU.

The digits CNN trains a little differently on each CPU (oneDNN / MLAS / XNNPACK kernels sum in another order), so
which of the 269 test images sit on a class boundary changes from machine to machine. A bound such as "top-1
agreement >= 0.99" over all of them is decided by 3 or 4 images and encodes one machine's training trajectory
(an Intel Xeon with AVX-512 VNNI measured 0.985 for ncnn and TFLite and 0.9888 for TensorRT's Q/DQ file).

What int8 may legitimately flip is a sample whose top-2 margin is within its quantization error. So:

- every *decisive* sample (reference top-2 margin >= ``DECISIVE_MARGIN`` (0.5) of the outputs' input-to-input
  spread, see ``exporters.core.verify.compare``) must keep its class, with an allowance of 1% (2 of the ~240 decisive
  digits images) as margin. Measured on an AMD EPYC (AVX2): 0 of 239 flip for ncnn, TFLite and the TensorRT Q/DQ
  file, and the int8 error shrank no decisive sample's margin below 0.89 of the decisive threshold: a flip needs
  several times the measured int8 error;
- over all samples, top-1 agreement >= 0.95: the Intel run's worst was 4 flips of 269 (0.985), so 0.95 leaves
  three times that for the non-decisive samples;
- the RMS error stays under 0.1 of the outputs' spread (measured 0.022 for the three targets: 4.5x margin);
- at least ``MIN_DECISIVE`` samples are decisive, or the rule above would judge nothing.

:func:`assert_int8_agrees` also checks that the same rule rejects a garbled copy of the outputs (the class
order reversed, as an output layer written in the wrong order would give), so it cannot pass vacuously.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from exporters.core.verify import compare

MIN_DECISIVE_TOP1 = 0.99
MIN_TOP1 = 0.95
MAX_SPREAD_ERROR = 0.1
MIN_DECISIVE = 50


def int8_agreement_problems(reference: npt.ArrayLike, output: npt.ArrayLike) -> list[str]:
    """Why ``output`` (N, classes) does not agree with ``reference`` as an int8 artifact must (empty: it does)."""
    a = compare(reference, output)
    why = []
    if a.decisive < MIN_DECISIVE or a.decisive_top1 is None:
        why.append(f"only {a.decisive} of {a.samples} samples are decisive (need {MIN_DECISIVE})")
    elif a.decisive_top1 < MIN_DECISIVE_TOP1:
        why.append(f"top-1 {a.decisive_top1:.4f} on {a.decisive} decisive samples < {MIN_DECISIVE_TOP1}")
    if a.top1_agreement is None or a.top1_agreement < MIN_TOP1:
        why.append(f"top-1 {a.top1_agreement} on all {a.samples} samples < {MIN_TOP1}")
    if a.spread_error > MAX_SPREAD_ERROR:
        why.append(f"RMS error {a.spread_error:.3f} of the spread > {MAX_SPREAD_ERROR}")
    return why


def assert_int8_agrees(reference: npt.ArrayLike, output: npt.ArrayLike) -> None:
    """Assert the agreement rule for ``output``, and that the rule rejects a garbled copy of it."""
    problems = int8_agreement_problems(reference, output)
    assert not problems, problems
    garbled = np.asarray(output)[:, ::-1]
    assert int8_agreement_problems(reference, garbled), "the agreement rule accepts a garbled artifact"


def result_agreement_problems(result: object, max_spread_error: float = MAX_SPREAD_ERROR) -> list[str]:
    """The same rule on a ``TargetResult``'s verification fields (the exporter's own comparison with the source).

    Args:
        result: a ``TargetResult``.
        max_spread_error: the RMS bound; a model whose outputs vary less from input to input (a third of its
            filters zeroed without fine-tuning) has a larger relative int8 error.
    """
    decisive = getattr(result, "decisive_samples", 0)
    decisive_top1 = getattr(result, "decisive_top1", None)
    top1 = getattr(result, "top1_agreement", None)
    spread = getattr(result, "spread_error", None)
    why = []
    if decisive < MIN_DECISIVE or decisive_top1 is None:
        why.append(f"only {decisive} samples are decisive (need {MIN_DECISIVE})")
    elif decisive_top1 < MIN_DECISIVE_TOP1:
        why.append(f"top-1 {decisive_top1:.4f} on {decisive} decisive samples < {MIN_DECISIVE_TOP1}")
    if top1 is None or top1 < MIN_TOP1:
        why.append(f"top-1 {top1} on all samples < {MIN_TOP1}")
    if spread is None or spread > max_spread_error:
        why.append(f"RMS error {spread} of the spread > {max_spread_error}")
    return why
