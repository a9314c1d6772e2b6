"""The batched L-BFGS: known minima (Rosenbrock), and vmapped quadratics vs a linear solve."""
import jax
import jax.numpy as jnp
import numpy as np

from analysis import lbfgs

OPTS = dict(max_iter=2000, memory=10, gtol=1e-10, ftol=0.0, max_backtracks=30)


def test_rosenbrock_reaches_the_known_minimum():
    def rosen(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    with jax.enable_x64(True):
        x, f, conv, it = jax.jit(lambda x0: lbfgs.minimize(jax.value_and_grad(rosen), x0, **OPTS))(
            jnp.array([-1.2, 1.0, -0.5, 0.8]))
    assert bool(conv) and int(it) < 2000
    # gtol 1e-10 on a problem with Hessian eigenvalues O(1)..O(1e3): |x - 1| ~ 1e-10.
    np.testing.assert_allclose(np.asarray(x), np.ones(4), atol=1e-7)
    assert float(f) < 1e-14


def test_vmapped_quadratics_match_linear_solve():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((16, 6, 6))
    A = M @ np.transpose(M, (0, 2, 1)) + 0.5 * np.eye(6)  # SPD, condition number ~1e2
    b = rng.standard_normal((16, 6))

    def solve(A_PP, b_P):
        vg = jax.value_and_grad(lambda x: 0.5 * x @ A_PP @ x - b_P @ x)
        return lbfgs.minimize(vg, jnp.zeros(6), **OPTS)

    with jax.enable_x64(True):
        x, _, conv, _ = jax.jit(jax.vmap(solve))(jnp.asarray(A), jnp.asarray(b))
    assert np.all(np.asarray(conv))
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(A, b[..., None])[..., 0],
                               rtol=1e-7, atol=1e-8)
