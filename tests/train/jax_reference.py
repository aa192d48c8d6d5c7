"""Independent reference for TrainModel's gradients: the Llama forward written in jax.numpy
(float64) from the parameters, batch and config lowbit's test wrote, differentiated by jax.grad.

usage: jax_reference.py DIR...   for each DIR reads DIR/config.json, DIR/params.f32, DIR/tokens.i32;
                                 writes DIR/grads.f64 (the flat gradient, lowbit's layout) and DIR/loss.txt
"""
import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def main(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    flat = np.fromfile(d / "params.f32", dtype=np.float32).astype(np.float64)
    toks = np.fromfile(d / "tokens.i32", dtype=np.int32)
    B, T = cfg["B"], cfg["T"]
    inputs = toks[: B * T].reshape(B, T)
    targets = toks[B * T :].reshape(B, T)
    C, NH, NKV, L = cfg["dim"], cfg["heads"], cfg["kv_heads"], cfg["layers"]
    hs = C // NH
    eps, theta = cfg["eps"], cfg["theta"]
    info = cfg["params"]
    params = {p["name"]: flat[p["offset"] : p["offset"] + p["rows"] * p["cols"]].reshape(p["rows"], p["cols"]) for p in info}

    # RoPE angles: position t, pair (i, i+1) of each head, frequency theta^(-i/hs).
    inv = 1.0 / theta ** (np.arange(0, hs, 2) / hs)
    ang = np.arange(T)[:, None] * inv[None, :]  # (T, hs/2)
    cos, sin = jnp.asarray(np.cos(ang)), jnp.asarray(np.sin(ang))

    def rope(x):  # (B, T, H, hs)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        return jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(x.shape)

    def rmsnorm(x, w):
        return w.reshape(-1) * (x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps))

    mask = np.tril(np.ones((T, T), dtype=bool))

    def loss_fn(p):
        x = p["tok_embeddings"][inputs]  # (B, T, C)
        for l in range(L):
            g = lambda n: p[f"layers.{l}.{n}"]  # noqa: E731
            h = rmsnorm(x, g("attn_norm"))
            q = rope((h @ g("wq").T).reshape(B, T, NH, hs))
            k = rope((h @ g("wk").T).reshape(B, T, NKV, hs))
            v = (h @ g("wv").T).reshape(B, T, NKV, hs)
            rep = NH // NKV
            k = jnp.repeat(k, rep, axis=2)
            v = jnp.repeat(v, rep, axis=2)
            s = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hs)
            s = jnp.where(mask[None, None], s, -jnp.inf)
            a = jax.nn.softmax(s, axis=-1)
            o = jnp.einsum("bhts,bshd->bthd", a, v).reshape(B, T, C)
            x = x + o @ g("wo").T
            h = rmsnorm(x, g("ffn_norm"))
            f = jax.nn.silu(h @ g("w1").T) * (h @ g("w3").T)
            x = x + f @ g("w2").T
        x = rmsnorm(x, p["final_norm"])
        w = p["classifier"] if "classifier" in p else p["tok_embeddings"]
        logits = x @ w.T
        lp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(lp, targets[..., None], axis=-1))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    out = np.zeros_like(flat)
    for p in info:
        out[p["offset"] : p["offset"] + p["rows"] * p["cols"]] = np.asarray(grads[p["name"]]).reshape(-1)
    out.tofile(d / "grads.f64")
    (d / "loss.txt").write_text(repr(float(loss)))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        main(Path(arg))
