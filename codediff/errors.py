"""The one exception type for bad user input.

Anything raised as `UserError` reaches the user as a single line `codediff: error: ...` with exit
code 2. The message names the problem and the fix. Raise it before writing any output file.
"""


class UserError(Exception):
    """Bad input or environment that the user can fix; the message says how."""


def is_out_of_memory(e: BaseException) -> bool:
    """Did the device run out of memory? CUDA's allocator raises torch.OutOfMemoryError;
    cuBLAS/cuDNN report it as a RuntimeError with their own status names. (By name, so this
    module stays free of torch.)"""
    return type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and any(
            k in str(e) for k in ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                                  "out of memory")))
