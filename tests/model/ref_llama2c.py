#!/usr/bin/env python3
"""Independent numpy reference for llama2.c's run.c: forward pass and greedy decoding.

Reads a version-0 llama2.c checkpoint, optionally encodes --text with a llama2.c tokenizer.bin
(run.c's BPE encode), and prints the token ids: the prompt followed by the greedy ids, stopping
early at id 1 (BOS) as run.c does. Everything is float32, in run.c's order of operations.

  .venv/bin/python tests/model/ref_llama2c.py --model ../shared/models/stories260K.bin \
      --tokenizer ../shared/models/tok512.bin --text "Once upon a time" --steps 68

--steps counts positions as run.c's -n does: prompt included (the last prompt position already
produces the first generated id), so n prompt ids and --steps N give N - n + 1 new ids.
"""
import argparse
import struct
import sys

import numpy as np

F32 = np.float32


def load_v0(path):
    """Legacy llama2.c checkpoint: 7 int32, then fp32 tensors (export.py legacy_export)."""
    with open(path, "rb") as f:
        raw = f.read()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("7i", raw, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    head_size = dim // n_heads
    kv_dim = head_size * n_kv_heads
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        t = data[pos:pos + n].reshape(shape)
        pos += n
        return t

    w = {}
    w["tok"] = take(vocab, dim)
    w["rms_att"] = take(n_layers, dim)
    w["wq"] = take(n_layers, dim, dim)
    w["wk"] = take(n_layers, kv_dim, dim)
    w["wv"] = take(n_layers, kv_dim, dim)
    w["wo"] = take(n_layers, dim, dim)
    w["rms_ffn"] = take(n_layers, dim)
    w["w1"] = take(n_layers, hidden, dim)
    w["w2"] = take(n_layers, dim, hidden)
    w["w3"] = take(n_layers, hidden, dim)
    w["rms_final"] = take(dim)
    take(seq_len, head_size // 2)  # freq_cis_real: unused, RoPE is recomputed as run.c does
    take(seq_len, head_size // 2)  # freq_cis_imag
    w["wcls"] = w["tok"] if shared else take(vocab, dim)
    if pos != data.size:
        sys.exit(f"{path}: {data.size - pos} floats left after the last tensor; not a v0 checkpoint?")
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
               vocab=vocab, seq_len=seq_len, head_size=head_size, kv_dim=kv_dim)
    return cfg, w


def rmsnorm(x, weight):
    # run.c: ss = sum(x^2) / n + 1e-5; ss = 1 / sqrt(ss); o = weight * (ss * x)
    ss = F32(np.dot(x, x)) / F32(x.size)
    ss = F32(ss + F32(1e-5))
    ss = F32(1.0) / np.sqrt(ss, dtype=F32)
    return (weight * (ss * x)).astype(F32)


def softmax(x):
    m = x.max()
    e = np.exp((x - m).astype(F32), dtype=F32)
    return (e / e.sum(dtype=F32)).astype(F32)


class Transformer:
    def __init__(self, cfg, w):
        self.c, self.w = cfg, w
        L, S, kv = cfg["n_layers"], cfg["seq_len"], cfg["kv_dim"]
        self.key_cache = np.zeros((L, S, kv), dtype=F32)
        self.value_cache = np.zeros((L, S, kv), dtype=F32)
        hs = cfg["head_size"]
        # run.c: head_dim = i % head_size; freq = 1 / powf(10000, head_dim / (float)head_size)
        i = np.arange(0, cfg["dim"], 2)
        head_dim = (i % hs).astype(F32)
        self.freq = (F32(1.0) / np.power(F32(10000.0), head_dim / F32(hs), dtype=F32)).astype(F32)
        self.rope_i = i

    def rope(self, vec, pos, n):
        # Rotates the pairs (i, i+1) for i < n.
        sel = self.rope_i < n
        i = self.rope_i[sel]
        val = (F32(pos) * self.freq[sel]).astype(F32)
        fcr, fci = np.cos(val, dtype=F32), np.sin(val, dtype=F32)
        v0, v1 = vec[i].copy(), vec[i + 1].copy()
        vec[i] = v0 * fcr - v1 * fci
        vec[i + 1] = v0 * fci + v1 * fcr

    def forward(self, token, pos):
        c, w = self.c, self.w
        dim, hs, kv_dim = c["dim"], c["head_size"], c["kv_dim"]
        kv_mul = c["n_heads"] // c["n_kv_heads"]
        x = w["tok"][token].astype(F32).copy()
        for l in range(c["n_layers"]):
            xb = rmsnorm(x, w["rms_att"][l])
            q = (w["wq"][l] @ xb).astype(F32)
            k = (w["wk"][l] @ xb).astype(F32)
            v = (w["wv"][l] @ xb).astype(F32)
            self.rope(q, pos, dim)
            self.rope(k, pos, kv_dim)
            self.key_cache[l, pos] = k
            self.value_cache[l, pos] = v
            att_out = np.zeros(dim, dtype=F32)
            scale = np.sqrt(F32(hs), dtype=F32)
            for h in range(c["n_heads"]):
                qh = q[h * hs:(h + 1) * hs]
                kvh = (h // kv_mul) * hs
                keys = self.key_cache[l, :pos + 1, kvh:kvh + hs]  # (pos+1, hs)
                att = ((keys @ qh).astype(F32) / scale).astype(F32)
                att = softmax(att)
                vals = self.value_cache[l, :pos + 1, kvh:kvh + hs]
                att_out[h * hs:(h + 1) * hs] = (att @ vals).astype(F32)
            x = (x + (w["wo"][l] @ att_out).astype(F32)).astype(F32)
            xb = rmsnorm(x, w["rms_ffn"][l])
            hb = (w["w1"][l] @ xb).astype(F32)
            hb2 = (w["w3"][l] @ xb).astype(F32)
            # SwiGLU as run.c: val *= 1 / (1 + expf(-val)); val *= hb2
            hb = (hb * (F32(1.0) / (F32(1.0) + np.exp(-hb, dtype=F32)))).astype(F32)
            hb = (hb * hb2).astype(F32)
            x = (x + (w["w2"][l] @ hb).astype(F32)).astype(F32)
        x = rmsnorm(x, w["rms_final"])
        return (w["wcls"] @ x).astype(F32)


def load_tokenizer(path, vocab_size):
    """llama2.c tokenizer.bin: int32 max_token_length, then per token float score, int32 len, bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    off = 4
    vocab, scores = [], []
    for _ in range(vocab_size):
        score, n = struct.unpack_from("fi", raw, off)
        off += 8
        vocab.append(raw[off:off + n])
        off += n
        scores.append(score)
    return vocab, scores


def encode(text, vocab, scores):
    """run.c encode(text, bos=1, eos=0)."""
    lookup = {piece: i for i, piece in enumerate(vocab)}
    tokens = [1]  # BOS
    if text:
        tokens.append(lookup[b" "])  # dummy prefix, as sentencepiece's add_dummy_prefix
    for ch in text:
        b = ch.encode("utf-8")
        if b in lookup:
            tokens.append(lookup[b])
        else:
            tokens.extend(x + 3 for x in b)  # byte fallback: <0x00> is id 3
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            tid = lookup.get(vocab[tokens[i]] + vocab[tokens[i + 1]], -1)
            if tid != -1 and scores[tid] > best_score:
                best_score, best_id, best_idx = scores[tid], tid, i
        if best_idx == -1:
            break
        tokens[best_idx:best_idx + 2] = [best_id]
    return tokens


def decode_piece(vocab, prev, token):
    piece = vocab[token]
    if prev == 1 and piece.startswith(b" "):
        piece = piece[1:]
    if piece.startswith(b"<0x") and piece.endswith(b">") and len(piece) == 6:
        piece = bytes([int(piece[3:5], 16)])
    return piece


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/stories260K.bin")
    ap.add_argument("--tokenizer", default="../shared/models/tok512.bin")
    ap.add_argument("--ids", type=int, nargs="+", help="prompt token ids (BOS included if wanted)")
    ap.add_argument("--text", help="prompt text, encoded with --tokenizer (BOS prepended)")
    ap.add_argument("--steps", type=int, default=256, help="positions as run.c's -n, prompt included")
    ap.add_argument("--show-text", action="store_true", help="also print the decoded text to stderr")
    args = ap.parse_args()

    cfg, w = load_v0(args.model)
    vocab = scores = None
    if args.text is not None or args.show_text:
        vocab, scores = load_tokenizer(args.tokenizer, cfg["vocab"])
    if args.ids:
        prompt = args.ids
    elif args.text is not None:
        prompt = encode(args.text, vocab, scores)
    else:
        ap.error("give --ids or --text")
    steps = min(args.steps, cfg["seq_len"])

    model = Transformer(cfg, w)
    out = list(prompt)
    token, pos = prompt[0], 0
    while pos < steps:
        logits = model.forward(token, pos)
        nxt = prompt[pos + 1] if pos < len(prompt) - 1 else int(np.argmax(logits))  # first max, as run.c
        pos += 1
        if nxt == 1:  # BOS delimits sequences: run.c stops here
            print(f"stopped at id 1 after {len(out) - len(prompt)} generated ids", file=sys.stderr)
            break
        if pos >= len(prompt):
            out.append(nxt)
        token = nxt
    print(" ".join(str(t) for t in out))
    if args.show_text:
        text = b"".join(decode_piece(vocab, p, t) for p, t in zip([0] + out[:-1], out) if t != 1)
        print(text.decode("utf-8", errors="replace"), file=sys.stderr)


if __name__ == "__main__":
    main()
