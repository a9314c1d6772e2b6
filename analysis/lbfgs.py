"""A compact L-BFGS in JAX for small problems solved many at a time under `jax.vmap`.

`minimize(value_and_grad, theta0, ...)` minimises one smooth function of a flat parameter
vector; callers vmap it over starts / data sets (analysis.fit). Design choices, and why:
- exactly one value+gradient evaluation per loop iteration: a rejected trial step only
  shrinks the next trial (Armijo backtracking with quadratic interpolation). Under vmap a nested
  line-search loop would make every problem wait for the one needing the most backtracks;
- memory pairs are kept only with positive curvature (s·y > 0), the initial Hessian is scaled by
  s·y / y·y, and a non-descent direction restarts from steepest descent;
- stopping: max |g| <= gtol, or an accepted step whose relative decrease of f is <= ftol
  (relative to |f| itself: scaling-law objectives are ~1e-3, and a floor of 1 as in SciPy's
  test would stop them early), or no progress even along steepest descent (a kink, to
  rounding). Runs in the caller's precision: call it under `jax.enable_x64(True)` for float64.
"""
import jax
import jax.numpy as jnp


def two_loop(g, S_MP, Y_MP, rho_M, n_valid):
    """L-BFGS direction −H·g; rows 0.. of S/Y are the newest..oldest pairs (n_valid of them)."""
    m = S_MP.shape[0]
    valid_M = jnp.arange(m) < n_valid

    def newest_to_oldest(i, carry):
        q, alpha_M = carry
        a_i = jnp.where(valid_M[i], rho_M[i] * jnp.dot(S_MP[i], q), 0.0)
        return q - a_i * Y_MP[i], alpha_M.at[i].set(a_i)

    q, alpha_M = jax.lax.fori_loop(0, m, newest_to_oldest, (g, jnp.zeros_like(rho_M)))
    sy, yy = jnp.dot(S_MP[0], Y_MP[0]), jnp.dot(Y_MP[0], Y_MP[0])
    gamma = jnp.where(n_valid > 0, sy / jnp.where(yy > 0, yy, 1.0), 1.0)

    def oldest_to_newest(j, r):
        i = m - 1 - j
        b_i = rho_M[i] * jnp.dot(Y_MP[i], r)
        return r + jnp.where(valid_M[i], alpha_M[i] - b_i, 0.0) * S_MP[i]

    return -jax.lax.fori_loop(0, m, oldest_to_newest, gamma * q)


def init(value_and_grad, theta0, *, memory, gtol):
    """Solver state at theta0 (a dict of arrays; vmap-able, resumable with `run`)."""
    P = theta0.shape[0]
    f0, g0 = value_and_grad(theta0)
    small_g0 = jnp.max(jnp.abs(g0)) <= gtol
    return dict(
        x=theta0, f=f0, g=g0,
        S=jnp.zeros((memory, P), theta0.dtype), Y=jnp.zeros((memory, P), theta0.dtype),
        rho=jnp.zeros((memory,), theta0.dtype), n_valid=jnp.array(0),
        t=jnp.array(-1.0, theta0.dtype),  # trial step; < 0 means "fresh direction, use t0"
        n_back=jnp.array(0), it=jnp.array(0), done=small_g0 | ~jnp.isfinite(f0),
        converged=small_g0,
    )


def minimize(value_and_grad, theta0, *, max_iter, memory, gtol, ftol, max_backtracks):
    """Minimise one problem from theta0. Returns (theta, f, converged, n_evals)."""
    out = run(value_and_grad, init(value_and_grad, theta0, memory=memory, gtol=gtol),
              max_iter=max_iter, gtol=gtol, ftol=ftol, max_backtracks=max_backtracks)
    return out["x"], out["f"], out["converged"], out["it"]


def run(value_and_grad, state, *, max_iter, gtol, ftol, max_backtracks):
    """Iterate from `state` until done or state["it"] == max_iter (a total, so a run can be
    resumed with a larger max_iter). Returns the new state.

    Exactly one objective+gradient evaluation per loop iteration: a rejected trial step only
    shrinks the step for the next iteration (Armijo backtracking with quadratic interpolation)
    instead of running an inner loop. Under `jax.vmap` a nested line-search loop would make
    every problem wait for the one needing the most backtracks; this form wastes nothing.
    """
    memory = state["S"].shape[0]

    def step(s):
        d = two_loop(s["g"], s["S"], s["Y"], s["rho"], s["n_valid"])
        slope = jnp.dot(s["g"], d)
        bad = ~(slope < 0) | ~jnp.all(jnp.isfinite(d))  # not a descent direction: restart
        d = jnp.where(bad, -s["g"], d)
        slope = jnp.where(bad, -jnp.dot(s["g"], s["g"]), slope)
        n_valid = jnp.where(bad, 0, s["n_valid"])
        # Without curvature information, move at most 1 unit in fit space; else the unit step.
        t0 = jnp.where(n_valid == 0, jnp.minimum(1.0, 1.0 / jnp.max(jnp.abs(d))), 1.0)
        t = jnp.where((s["t"] < 0) | bad, t0, s["t"])
        f_t, g_t = value_and_grad(s["x"] + t * d)
        ok = (f_t <= s["f"] + 1e-4 * t * slope) & jnp.isfinite(f_t)

        # Accepted: update the memory (only pairs with positive curvature) and test convergence.
        sk, yk = t * d, g_t - s["g"]
        sy = jnp.dot(sk, yk)
        keep = ok & (sy > 1e-12 * jnp.linalg.norm(sk) * jnp.linalg.norm(yk)) & (sy > 0)
        S = jnp.where(keep, jnp.roll(s["S"], 1, axis=0).at[0].set(sk), s["S"])
        Y = jnp.where(keep, jnp.roll(s["Y"], 1, axis=0).at[0].set(yk), s["Y"])
        rho = jnp.where(keep, jnp.roll(s["rho"], 1).at[0].set(1.0 / jnp.where(keep, sy, 1.0)),
                        s["rho"])
        small_g = jnp.max(jnp.abs(g_t)) <= gtol
        small_f = (s["f"] - f_t) <= ftol * jnp.maximum(jnp.abs(s["f"]), 1e-300)
        converged = ok & (small_g | small_f)

        # Rejected: shrink to the minimiser of the quadratic through f(0), f'(0), f(t),
        # kept within [t/10, t/2]; after max_backtracks, restart from steepest descent, and
        # if even that fails no progress is possible (at a kink, to rounding): stop.
        curv = f_t - s["f"] - slope * t
        t_q = -slope * t * t / (2.0 * jnp.where(curv > 0, curv, 1.0))
        t_q = jnp.where((curv > 0) & jnp.isfinite(f_t), t_q, 0.1 * t)
        t_back = jnp.clip(t_q, 0.1 * t, 0.5 * t)
        n_back = jnp.where(ok, 0, s["n_back"] + 1)
        give_up = n_back > max_backtracks
        stuck = give_up & (n_valid == 0)
        return dict(
            x=jnp.where(ok, s["x"] + t * d, s["x"]), f=jnp.where(ok, f_t, s["f"]),
            g=jnp.where(ok, g_t, s["g"]), S=S, Y=Y, rho=rho,
            n_valid=jnp.where(keep, jnp.minimum(n_valid + 1, memory),
                              jnp.where(give_up, 0, n_valid)),
            t=jnp.where(ok | give_up, -1.0, t_back), n_back=jnp.where(give_up, 0, n_back),
            it=s["it"] + 1, done=converged | stuck, converged=converged,
        )

    def cond(s):
        return ~s["done"] & (s["it"] < max_iter)

    return jax.lax.while_loop(cond, step, state)
