"""lowbit on SmolLM2-135M-Instruct (issue 8) from the command line: the GGUF's own tokenizer is
used without --tokenizer, --chat applies its ChatML template and stops at <|im_end|>, and bad
input (--chat without a template, a GGUF tokenizer of an unsupported kind, bad bench flags)
gives exit 2 with one line naming what is wrong. Kept short: one chat turn of a few tokens.

Usage: test_smollm2_cli.py LOWBIT_BINARY
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

import gguf
import smollm2

from clitest import LOWBIT, check, failures, finish, run  # noqa: F401
from clitest import bad_input as _bad_input









def bad_input(args, must_name, what):
    _bad_input(args, must_name, what, empty_stdout=False)


model = smollm2.model_path()

# Chat: the default system prompt of the template, the user turn, the assistant's reply only.
p = run("generate", "--model", model, "--chat", "--prompt", "What is the capital of France?", "-n", "8")
check(p.returncode == 0, f"generate --chat: exit {p.returncode}: {p.stderr.strip()!r}")
check("Paris" in p.stdout, f"generate --chat: no 'Paris' in {p.stdout!r}")
check("<|im_start|>" not in p.stdout and "<|im_end|>" not in p.stdout, f"generate --chat printed markers: {p.stdout!r}")

with tempfile.TemporaryDirectory() as tmp:
    # A GGUF whose tokenizer lowbit does not implement, used as --tokenizer.
    bert = os.path.join(tmp, "bert-vocab.gguf")
    w = gguf.GGUFWriter(bert, arch="llama")
    w.add_string("tokenizer.ggml.model", "bert")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(49152)])
    w.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    bad_input(["generate", "--model", model, "--tokenizer", bert, "--prompt", "hi"],
              "tokenizer.ggml.model 'bert' is not supported (supported: gpt2, llama)", "unsupported GGUF tokenizer")

stories = os.path.join(smollm2.ROOT, "..", "shared", "models", "stories260K.bin")
if os.path.exists(stories):
    bad_input(["generate", "--model", stories, "--chat", "--prompt", "hi"], "has no tokenizer.chat_template",
              "--chat without a template")
bad_input(["bench", "model", "--model", model, "--scheme", "w9"], "unknown scheme 'w9'", "bench model --scheme")
bad_input(["bench", "model", "--model", model, "--prefill", "1"], "--prefill", "bench model --prefill")

finish()
