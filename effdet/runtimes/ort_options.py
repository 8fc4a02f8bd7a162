"""The options of every ONNX Runtime session effdet opens: all graph optimisations, one
intra-op thread per core, and errors only in ONNX Runtime's own log.

ONNX Runtime writes its warnings to stderr with colour codes, so they land raw in a rule's log;
the one every engine build gets ("Serializing optimized model with ... NchwcTransformer
enabled") says what the engine is by design, specific to this machine's CPU. Errors still
show, and reach effdet as exceptions too.
"""

from __future__ import annotations

import os
from typing import Any

ERRORS_ONLY = 3  # ONNX Runtime's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def quiet_onnxruntime() -> None:
    """Errors only, also for the sessions effdet does not configure (the int8 quantiser's)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(ERRORS_ONLY)


def session_options() -> Any:
    import onnxruntime

    quiet_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = ERRORS_ONLY
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    return options
