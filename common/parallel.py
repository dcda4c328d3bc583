"""Process pools that use the cores without oversubscribing them."""

from __future__ import annotations


def one_thread_per_worker() -> None:
    """Pool initializer: one BLAS/OpenMP thread per worker process.

    Each worker already owns a core; letting numpy's BLAS start a thread per core in every
    worker (the default) oversubscribes the machine (measured: 60 patients took 22.1 s
    instead of 18.6 s on 2 cores).
    """
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    torch.set_num_threads(1)
