"""Third-party noise: messages from the libraries this package drives that no user can act on.

Everything here imports nothing of this package, so the model modules (:mod:`.bases`,
:mod:`.tinybase`, :mod:`.adapters`, :mod:`.library`, :mod:`.training`) share it without
importing one another for it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

# ------------------------------------------------------------------- third-party noise
#
# Two messages from libraries this package drives reach every user's terminal and
# pytest's warnings summary, though nothing the user does can act on them. Each is
# silenced by its exact text, where it arises; any other message of those libraries
# still gets through.

#: bitsandbytes logs this on import (PEFT imports it) on CPUs with AVX512-BF16 when the
#: optional ``kernels`` package, which downloads kernels from the Hub, is absent; the
#: CPU falls back to bitsandbytes' own kernel.
BNB_KERNELS_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"

#: PEFT reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a
#: model (``get_peft_model``, ``PeftModel``), and its ``prepare_model_for_kbit_training``
#: (QLoRA) calls the deprecated ``gradient_checkpointing_enable``; transformers then warns
#: about PEFT's code.
GRADIENT_CHECKPOINTING_DEPRECATIONS = (
    re.escape("`is_gradient_checkpointing` is deprecated"),
    re.escape("`gradient_checkpointing_enable` is deprecated"),
)


#: Importing PEFT imports bitsandbytes, whose ``torch.compile`` decorators import torch's
#: inductor, whose ``torch.utils.mkldnn`` still uses the deprecated ``script_method``: a
#: DeprecationWarning per use, which pytest lists in the user's warnings summary.
TORCH_SCRIPT_METHOD_DEPRECATION = re.escape("`torch.jit.script_method` is deprecated")


class _DropBitsandbytesKernelsNotice(logging.Filter):
    """Drops bitsandbytes' "no Hub kernels" notice, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(BNB_KERNELS_NOTICE))


def silence_bitsandbytes_kernels_notice() -> None:
    """Filter bitsandbytes' kernels notice out of its logger, once per process.

    Runs when this module is imported, which the CLI and the pytest plugin do (through
    ``settings`` and :mod:`.bases`) before anything imports PEFT or bitsandbytes; getting the logger by
    name now hands bitsandbytes the same logger, filter attached, when it imports.
    """
    logger = logging.getLogger(BNB_KERNELS_LOGGER)
    if not any(isinstance(f, _DropBitsandbytesKernelsNotice) for f in logger.filters):
        logger.addFilter(_DropBitsandbytesKernelsNotice())


silence_bitsandbytes_kernels_notice()


@contextlib.contextmanager
def peft_wrapping_quietly() -> Iterator[None]:
    """Around a PEFT call that wraps or prepares a model: no gradient-checkpointing FutureWarnings.

    A local filter, innermost, so it also holds under pytest's per-test filters and a
    user's ``-W error::FutureWarning``; every other warning passes as before.
    """
    import_peft_quietly()
    with warnings.catch_warnings():
        for message in GRADIENT_CHECKPOINTING_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def import_peft_quietly() -> None:
    """Import PEFT (and with it bitsandbytes) without torch's ``script_method`` deprecations.

    Only the first import warns, so it is done here, under a filter for that one message.
    :func:`.bases.load_base` and :func:`peft_wrapping_quietly` call it: in a pytest session PEFT
    is first needed once a base is loaded. (A command's own Python hides library
    DeprecationWarnings anyway; pytest is what lists them.)
    """
    import sys

    if "peft" in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCH_SCRIPT_METHOD_DEPRECATION,
                                category=DeprecationWarning)
        import peft  # noqa: F401


def quiet_transformers() -> None:
    """No per-shard progress bars: a test run's output is the harness's, not the loader's."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
