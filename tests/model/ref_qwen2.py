#!/usr/bin/env python3
"""llama.cpp and Hugging Face `tokenizers` as the references for lowbit on Qwen2.5-Coder-1.5B-Instruct
Q4_K_M (issue 14); writes tests/data/qwen2_reference.json, which tests/model/qwen2_test.cc reads.

  ref_qwen2.py pin [LLAMACPP_DIR]     LLAMACPP_DIR: a llama.cpp checkout built in build/ (default
                                      /work/llamacpp/src; the pins were made at c392e50)
  ref_qwen2.py pin-q8 [LLAMACPP_DIR [LIB_DIR]]
                                      adds "q8" only (keeps the rest): LIB_DIR holds the libllama /
                                      libggml* to run (default LLAMACPP_DIR/build/bin; the pins used
                                      an AVX2-only build, -DGGML_NATIVE=OFF -DGGML_AVX2=ON, c392e50)

What is pinned, and why:
  - "tokenize": for the tokenizer test text (whole, per paragraph, edge cases), the ids of
    `llama-tokenize --ids --no-bos --no-escape` on the Q4_K_M file and of a `tokenizers` Tokenizer built from the
    GGUF's vocabulary and merges with Qwen2's normalizer (NFC) and pre-tokenizer (its Split regex,
    then ByteLevel without regex), the control tokens as special added tokens.
  - "greedy" and "prefill": llama.cpp on an F32 GGUF of the same weights (`llama-quantize
    --allow-requantize ... F32`: ggml's own dequantization of every Q4_K/Q6_K tensor), f32 KV
    cache, no flash attention — the model lowbit runs from the Q4_K_M blocks, whose decoding is
    bit-exact to ggml's. Greedy: 32 ids after three prompts (plain, ChatML, code); prefill: the
    top-20 ids and logits at every position of one text. Driven by ref_llamacpp/llamacpp_ref.cc,
    compiled here against the build's llama.h / libllama.
  - "q8": the same greedy and prefill runs on the Q4_K_M file itself: llama.cpp multiplies its
    Q4_K/Q6_K blocks with Q8_K activations, which lowbit does with --ggml-acts q8_K (the same
    quantize_row_q8_K rounding and integer sums; only the fp32 accumulation order differs).
"""
import json
import os
import subprocess
import sys
import tempfile

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lowbit", "models")
MODEL = os.path.join(CACHE, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
PROMPTS = [
    ("plain", "The three primary colors are"),
    ("chatml", f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
               "Write a Python function that checks whether a number is prime.<|im_end|>\n<|im_start|>assistant\n"),
    ("code", "#include <stdio.h>\n\n// Returns the n-th Fibonacci number.\nint fib(int n) {\n"),
]
PREFILL_TEXT = "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:"
STEPS = 32
TOP_K = 20


def texts():
    with open(os.path.join(ROOT, "tests", "data", "tokenizer_text.txt"), encoding="utf-8") as f:
        corpus = f.read()
    out = [corpus] + [p for p in corpus.split("\n\n") if p]
    out += [" ", "  ", "\n", "a", " a", "a ", "1", " 1", "12345", "1 2", "x  y", "\t\tz", "<|im_end|>",
            "<|im_start|><|im_end|>", "<|im_start", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
            "I'LL DON'T we've", "a\r\n\r\nb", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>"]
    return out


def hf_tokenizer(reader):
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert field("tokenizer.ggml.pre") == "qwen2"
    merges = [tuple(m.split(" ")) for m in field("tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(tokens, types) if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tk


def llama_tokenize(bindir, text):
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run([os.path.join(bindir, "llama-tokenize"), "-m", MODEL, "-f", f.name, "--ids", "--no-bos", "--no-escape",
                              "--log-disable"], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


def run_ref(exe, model, mode, n, prompt):
    out = subprocess.run([exe, model, mode, str(n)], input=prompt.encode("utf-8"), check=True, capture_output=True).stdout
    return out.decode().strip().split("\n")


def build_ref(src, libdir, tmp):
    exe = os.path.join(tmp, "llamacpp_ref")
    subprocess.run(["g++", "-O2", "-std=c++17", os.path.join(HERE, "ref_llamacpp", "llamacpp_ref.cc"), "-o", exe,
                    "-I", os.path.join(src, "include"), "-I", os.path.join(src, "ggml", "include"), "-L", libdir,
                    "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{libdir}"], check=True)
    return exe


def greedy_and_prefill(exe, model):
    greedy = []
    for name, prompt in PROMPTS:
        lines = run_ref(exe, model, "greedy", STEPS, prompt)
        greedy.append({"name": name, "prompt": prompt, "prompt_ids": [int(t) for t in lines[0].split()],
                       "ids": [int(t) for t in lines[1].split()]})
        print(f"ref_qwen2: greedy {name}: {greedy[-1]['ids']}", file=sys.stderr)
    lines = run_ref(exe, model, "prefill", TOP_K, PREFILL_TEXT)
    top = []
    for pos, line in enumerate(lines[1:]):
        pairs = [p.split(":") for p in line.split()]
        top.append({"pos": pos, "ids": [int(i) for i, _ in pairs], "logits": [float(v) for _, v in pairs]})
    return greedy, {"text": PREFILL_TEXT, "ids": [int(t) for t in lines[0].split()], "top": top}


def pin_q8(src, libdir):
    out = os.path.join(ROOT, "tests", "data", "qwen2_reference.json")
    with open(out, encoding="utf-8") as f:
        data = json.load(f)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        greedy, prefill = greedy_and_prefill(build_ref(src, libdir, tmp), MODEL)
    data["q8"] = {"llama_cpp_libs": libdir, "greedy": greedy, "prefill": prefill}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"ref_qwen2: wrote q8 pins to {out}", file=sys.stderr)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "pin-q8" and len(sys.argv) <= 4:
        src = sys.argv[2] if len(sys.argv) >= 3 else "/work/llamacpp/src"
        pin_q8(src, sys.argv[3] if len(sys.argv) == 4 else os.path.join(src, "build", "bin"))
        return
    if len(sys.argv) not in (2, 3) or sys.argv[1] != "pin":
        sys.exit(__doc__)
    src = sys.argv[2] if len(sys.argv) == 3 else "/work/llamacpp/src"
    bindir = os.path.join(src, "build", "bin")
    reader = gguf.GGUFReader(MODEL)
    hf = hf_tokenizer(reader)
    data = {"model": os.path.basename(MODEL), "tokenizers": tokenizers.__version__,
            "llama_cpp": subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip(), "tokenize": []}
    for text in texts():
        if not text:
            continue
        data["tokenize"].append({"text": text, "llama_cpp": llama_tokenize(bindir, text), "hf": hf.encode(text).ids})

    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        exe = build_ref(src, bindir, tmp)
        f32 = os.path.join(tmp, "qwen2-f32.gguf")
        print("ref_qwen2: writing the F32 GGUF (6.2 GB) with llama-quantize", file=sys.stderr)
        subprocess.run([os.path.join(bindir, "llama-quantize"), "--allow-requantize", MODEL, f32, "F32", "2"], check=True,
                       capture_output=True)
        data["greedy"], data["prefill"] = greedy_and_prefill(exe, f32)
    old = os.path.join(ROOT, "tests", "data", "qwen2_reference.json")
    if os.path.exists(old):  # keep the q8 pins (pin-q8 writes them)
        with open(old, encoding="utf-8") as f:
            q8 = json.load(f).get("q8")
        if q8 is not None:
            data["q8"] = q8
    out = os.path.join(ROOT, "tests", "data", "qwen2_reference.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"ref_qwen2: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
