#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) as the reference for lowbit on SmolLM2-135M-Instruct.

  ref_llamacpp_smollm2.py pin [OUT.json]   writes the pinned data (default tests/data/smollm2_llamacpp.json)
  ref_llamacpp_smollm2.py live LOWBIT      compares a live llama.cpp with the `lowbit` binary; exits 77
                                           (skip) when llama_cpp cannot be imported

llama_cpp is not in the test venv (it is built from source); put it in a venv of its own:
  python3 -m venv /tmp/smol-venv && /tmp/smol-venv/bin/pip install numpy llama_cpp_python-*.whl \\
      diskcache jinja2 typing-extensions
  /tmp/smol-venv/bin/python tests/model/ref_llamacpp_smollm2.py pin
The live test also runs under $LOWBIT_LLAMACPP_PYTHON when that is set.

What is pinned, and why two files. llama.cpp's CPU path multiplies Q4_1 weights with activations
it first quantizes to Q8_1 (and the Q8_0 classifier with Q8_0 activations), and keeps the KV
cache in f16; lowbit dequantizes the weights once and computes in fp32. So:
  - "tokenize": llama.cpp's token ids for the tokenizer test text (Q4_1 file, vocab only).
  - "greedy" and "prefill": llama.cpp on an F32 GGUF holding exactly the dequantized Q4_1
    weights (written here with the gguf package, same metadata), f32 KV cache — the same model
    lowbit runs, so greedy ids must be equal and logits agree to fp32 rounding.
  - "greedy_q4_1": llama.cpp on the Q4_1 file itself, for the record (see docs/results.md).
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "cli"))
import smollm2  # noqa: E402

PROMPTS = [
    "Once upon a time",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n",
]
PREFILL_TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside"
STEPS = 32
TOP_K = 20


def tokenizer_texts():
    with open(os.path.join(ROOT, "tests", "data", "tokenizer_text.txt"), encoding="utf-8") as f:
        corpus = f.read()
    return [corpus] + [p for p in corpus.split("\n\n") if p]


def load(path, **kw):
    # logits_all: llama-cpp-python 0.3 fills Llama.scores only then (greedy reads it).
    from llama_cpp import Llama
    kw.setdefault("logits_all", not kw.get("vocab_only", False))
    return Llama(model_path=path, n_ctx=256, n_batch=256, n_threads=int(os.environ.get("LOWBIT_LLAMACPP_THREADS", "1")), verbose=False, seed=0, **kw)


def tokenize(llm, text):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def greedy(llm, prompt_ids, steps=STEPS):
    import numpy as np
    llm.reset()
    llm.eval(prompt_ids)
    assert np.any(llm.scores[llm.n_tokens - 1] != 0), "llama_cpp left the logits empty"
    out = []
    for _ in range(steps):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def write_f32_gguf(src, dst):
    """The Q4_1 file with every tensor dequantized to F32 and the same metadata."""
    import numpy as np
    import gguf
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=r.fields["general.architecture"].contents())
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, values.reshape([int(d) for d in reversed(t.shape.tolist())]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference():
    import numpy as np
    import llama_cpp
    from llama_cpp import GGML_TYPE_F32
    q41 = smollm2.model_path()
    vocab = load(q41, vocab_only=True)
    data = {"llama_cpp_python": llama_cpp.__version__,
            "tokenize": [{"text": t, "ids": tokenize(vocab, t)} for t in tokenizer_texts()]}
    prompts = [tokenize(vocab, p) for p in PROMPTS]
    prefill_ids = tokenize(vocab, PREFILL_TEXT)
    del vocab

    llm = load(q41)
    data["greedy_q4_1"] = [{"prompt": p, "prompt_ids": ids, "ids": greedy(llm, ids)} for p, ids in zip(PROMPTS, prompts)]
    del llm

    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "smollm2-f32.gguf")
        write_f32_gguf(q41, f32)
        llm = load(f32, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        data["greedy"] = [{"prompt": p, "prompt_ids": ids, "ids": greedy(llm, ids)} for p, ids in zip(PROMPTS, prompts)]
        llm.reset()
        llm.eval(prefill_ids)
        top = []
        for pos in range(len(prefill_ids)):
            row = np.asarray(llm.scores[pos], dtype=np.float32)
            idx = np.argsort(-row, kind="stable")[:TOP_K]
            top.append({"pos": pos, "ids": [int(i) for i in idx], "logits": [float(row[i]) for i in idx]})
        data["prefill"] = {"text": PREFILL_TEXT, "ids": prefill_ids, "top": top}
        del llm
    return data


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "pin":
        out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "data", "smollm2_llamacpp.json")
        data = reference()
        with open(out, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"wrote {out}")
        return 0
    if mode == "live" and len(sys.argv) == 3:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            alt = os.environ.get("LOWBIT_LLAMACPP_PYTHON")
            if alt and os.path.realpath(alt) != os.path.realpath(sys.executable):
                return subprocess.call([alt, *sys.argv])
            print("skip: llama_cpp is not importable (set LOWBIT_LLAMACPP_PYTHON to a Python that has it)")
            return 77
        lowbit = sys.argv[2]
        q41 = smollm2.model_path()
        vocab = load(q41, vocab_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            f32 = os.path.join(tmp, "smollm2-f32.gguf")
            write_f32_gguf(q41, f32)
            from llama_cpp import GGML_TYPE_F32
            llm = load(f32, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
            prompt = PROMPTS[0]
            want = greedy(llm, tokenize(vocab, prompt), 16)
        p = subprocess.run([lowbit, "generate", "--model", q41, "--prompt", prompt, "-n", "16", "--ids"],
                           capture_output=True, text=True, timeout=600)
        got = [int(t) for t in p.stdout.split()] if p.returncode == 0 else None
        if got != want[:len(got or [])] or not got:
            print(f"FAIL: lowbit greedy {got} != llama.cpp {want} (stderr {p.stderr.strip()!r})")
            return 1
        print(f"ok: {len(got)} greedy ids equal llama.cpp's")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
