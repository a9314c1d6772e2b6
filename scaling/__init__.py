"""scaling: train one decoder-only transformer LM and record what a scaling-law study needs."""
__version__ = "0.1.0"

from scaling import xla_cpu as _xla_cpu

_xla_cpu.apply()  # XLA:CPU options, before any JAX backend exists (scaling/xla_cpu.py)
