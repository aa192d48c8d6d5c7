#!/usr/bin/env python3
"""Independent references for SmolLM2-135M-Instruct.Q4_1.gguf (issue 8), written before the C++
test SmolLM2CrossCheck.* (tests/model/smollm2_test.cc) reads them:

  smollm2_crosscheck.py write=DIR
    DIR/tensors.json    every tensor of the file: ggml type, lowbit's row-major shape, and the
                        sha256 of gguf.quants.dequantize() of it as little-endian f32 (the `gguf`
                        package is ggml's own Python library)
    DIR/tokenizer.json  texts and the ids Hugging Face `tokenizers` gives them, with a BPE built
                        from the GGUF's tokens and merges, SmolLM2's pre-tokenizer (Digits with
                        individual digits, then ByteLevel without prefix space) and the control
                        tokens as special added tokens — the tokenizer.json SmolLM2 ships, rebuilt
                        from what the GGUF holds

The C++ side compares bit for bit (tensor hashes) and id for id.
"""
import hashlib
import json
import os
import sys

import numpy as np

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
import smollm2  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4


def field(reader, key):
    return reader.fields[key].contents()


def hf_tokenizer(reader):
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
    assert field(reader, "tokenizer.ggml.pre") == "smollm", field(reader, "tokenizer.ggml.pre")
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for t in specials:  # added tokens must keep their vocab ids
        assert tk.token_to_id(t) == tokens.index(t), t
    return tk


def texts():
    with open(os.path.join(HERE, "..", "data", "tokenizer_text.txt"), encoding="utf-8") as f:
        corpus = f.read()
    # The whole corpus, each paragraph alone (different whitespace at the edges) and a few edge cases.
    out = [corpus] + [p for p in corpus.split("\n\n") if p]
    out += ["", " ", "  ", "\n", "a", " a", "a ", "1", " 1", "12", "1 2", "x  y", "\t\tz", "<|im_end|>",
            "<|im_start|><|im_end|>", "<|im_start", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    return out


def main():
    if len(sys.argv) != 2 or not sys.argv[1].startswith("write="):
        sys.exit("usage: smollm2_crosscheck.py write=DIR")
    out = sys.argv[1][len("write="):]
    os.makedirs(out, exist_ok=True)
    reader = gguf.GGUFReader(smollm2.model_path())

    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        values = np.ascontiguousarray(values, dtype="<f4").reshape(shape)
        tensors[t.name] = {"type": t.tensor_type.name, "shape": shape,
                           "sha256": hashlib.sha256(values.tobytes()).hexdigest()}
    with open(os.path.join(out, "tensors.json"), "w") as f:
        json.dump(tensors, f, indent=1)

    tk = hf_tokenizer(reader)
    cases = []
    for text in texts():
        ids = tk.encode(text, add_special_tokens=False).ids
        assert tk.decode(ids, skip_special_tokens=False) == text, repr(text)  # the reference round-trips
        cases.append({"text": text, "ids": ids})
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(cases, f, ensure_ascii=False)
    print(f"smollm2_crosscheck: {len(tensors)} tensors, {len(cases)} texts "
          f"({sum(len(c['ids']) for c in cases)} ids) written to {out}")


if __name__ == "__main__":
    main()
