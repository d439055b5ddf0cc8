"""Application kernels: one module per kernel, each defining one :class:`~..kernel.Kernel`."""
