"""XLA:CPU options the project runs with: set in the environment when `scaling` is imported.

XLA reads XLA_FLAGS once, when the CPU backend is created (the first computation), so the options
take effect in every process that imports `scaling` before running anything with JAX (the CLI,
the sweep workers, the benchmarks, the tests). An option the environment already names is left
as given, so `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=... ` overrides it. GPU/TPU
backends ignore xla_cpu_* options.

- xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT: YNNPACK dot fusions (a dot with
  its neighbouring elementwise ops and sibling dots; the default runs each dot alone). On the
  training step it fuses the SwiGLU backward's two input-gradient matmuls and their add and drops
  the transposing re-computations XLA otherwise emits before the weight-gradient matmuls.
  Measured on this 2-core CPU, one process, alternated, under load: MLP forward + backward 0.70x
  the CPU time; the d256xL4 train step 0.78x the wall time (0.88x CPU). Numerics: the same sums
  reordered (float32 rounding); tests/test_attention_loss.py's tolerances hold with it.
"""
import os

CPU_XLA_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def with_cpu_options(xla_flags: str) -> str:
    """`xla_flags` (an XLA_FLAGS value) plus each of CPU_XLA_OPTIONS it does not already name."""
    extra = [f"--{name}={value}" for name, value in CPU_XLA_OPTIONS.items() if f"--{name}=" not in xla_flags]
    return " ".join([xla_flags.strip(), *extra]).strip()


def apply(environ=os.environ) -> None:
    """Add CPU_XLA_OPTIONS to environ["XLA_FLAGS"] (before the backend exists; see the docstring)."""
    environ["XLA_FLAGS"] = with_cpu_options(environ.get("XLA_FLAGS", ""))
