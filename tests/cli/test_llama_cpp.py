"""llama.cpp runs the GGUF files `lowbit convert` writes, and agrees with `lowbit generate`.

Usage: test_llama_cpp.py LOWBIT_BINARY. Needs the llama_cpp module (llama-cpp-python), which the
test venv does not have: set LOWBIT_LLAMA_CPP_PYTHON to a Python that has it, or the test exits 77
(skip), as it does when ../shared is missing.

stories260K saved as F32 must give llama.cpp's greedy continuation of "Once upon a time" (64 tokens,
temperature 0) token for token equal to lowbit's. Saved as Q8_0 (ffn_down in F16: its 172-wide rows
are not a multiple of 32), llama.cpp multiplies Q8_0 weights by activations it has itself rounded to
8 bits (ggml's vec_dot_q8_0_q8_0) while lowbit keeps fp32 activations, so the two can part after a
while (Q4_0 likewise): the test requires the first 16 tokens to agree and prints how many do.
"""
import os
import subprocess
import sys
import tempfile

LOWBIT = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "..", "shared", "models")
MODEL = os.path.join(MODELS, "stories260K.bin")
TOK = os.path.join(MODELS, "tok512.model")
PROMPT = "Once upon a time"
N = 64
Q8_MIN_AGREEMENT = 16

if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} not found (../shared is missing)")
    sys.exit(77)
try:
    import llama_cpp
except ImportError:
    other = os.environ.get("LOWBIT_LLAMA_CPP_PYTHON")
    if other and os.path.realpath(other) != os.path.realpath(sys.executable):
        os.execv(other, [other, *sys.argv])
    print("SKIP: llama_cpp is not importable (set LOWBIT_LLAMA_CPP_PYTHON to a Python with llama-cpp-python)")
    sys.exit(77)


def lowbit(*args):
    p = subprocess.run([LOWBIT, *args], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        sys.exit(f"FAIL: lowbit {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def llama_cpp_greedy(path):
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, seed=0, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    out = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        out.append(t)
        if len(out) == N:
            break
    return prompt, out


failures = []
print(f"llama_cpp {llama_cpp.__version__}")
with tempfile.TemporaryDirectory() as tmp:
    for label, extra in (("F32", []), ("Q8_0", ["--weights", "int8:g32:sym:fp16"]),
                         ("Q4_0", ["--weights", "int4:g32:sym:fp16"])):
        path = os.path.join(tmp, f"{label}.gguf")
        lowbit("convert", "--model", MODEL, "--tokenizer", TOK, "-o", path, "--format", "gguf", *extra)
        ours = [int(t) for t in lowbit("generate", "--model", path, "--tokenizer", TOK, "--prompt", PROMPT,
                                       "-n", str(N), "--ids").split()]
        prompt, theirs = llama_cpp_greedy(path)
        agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        print(f"{label}: prompt {prompt}; lowbit and llama.cpp agree on {agree} of {N} tokens")
        print(f"  lowbit:    {' '.join(map(str, ours))}")
        print(f"  llama.cpp: {' '.join(map(str, theirs))}")
        need = N if label == "F32" else Q8_MIN_AGREEMENT
        if len(ours) != N or agree < need:
            failures.append(f"{label}: {agree} tokens agree, expected at least {need}")

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
