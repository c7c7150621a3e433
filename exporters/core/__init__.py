"""The exporters' core: what every target shares, written once.

The options and the job (:mod:`~exporters.core.job`), the source model (:mod:`~exporters.core.source`), the shared
ONNX (:mod:`~exporters.core.onnx_hub`), int8 scales (:mod:`~exporters.core.quant`, :mod:`~exporters.core.qdq`),
the target interface and the checks run on every artifact (:mod:`~exporters.core.target`), the comparison
(:mod:`~exporters.core.verify`), latency (:mod:`~exporters.core.latency`), the report (:mod:`~exporters.core.report`),
the orchestrator (:mod:`~exporters.core.export`) and re-running a report's artifacts (:mod:`~exporters.core.runtimes`).
The core never imports a target: targets register themselves (:func:`exporters.core.target.register`).
"""
