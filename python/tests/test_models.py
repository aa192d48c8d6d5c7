"""Models from Python: load_model, tensors as zero-copy views that outlive nothing they should not,
logits / generate against the CLI, evaluate() against `lowbit eval --json` and quantize_model()
against `lowbit quantize` on the bundled stories260K (genuine fp32), progress callbacks, errors."""
import filecmp
import gc
import json
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

import lowbit
from conftest import ROOT, run_cli

# Figures that are timings or process-wide, not results: compared by presence, not value.
TIMING_KEYS = {"prefill_tok_s", "decode_tok_s", "ref_prefill_tok_s", "ref_decode_tok_s", "decode_speedup",
               "peak_rss_mib", "seconds", "peak_rss_bytes"}


@pytest.fixture(scope="module")
def model(model_path):
    return lowbit.load_model(model_path)


def test_load_model_config_and_tensors(model, model_path):
    c = model.config
    assert (c["dim"], c["n_layers"], c["vocab_size"]) == (64, 5, 512)
    assert model.path == model_path and model.tokenizer_path.endswith("tok512.model")
    t = model.tensors()
    assert t["layers.0.wq"].shape == (64, 64) and t["tok_embeddings"].shape == (512, 64)
    assert not t["layers.0.wq"].flags.writeable     # the mapped file: read-only, zero copy
    with open(model_path, "rb") as f:               # llama2.c v0: 7 int32 header, then the embedding
        f.seek(28)
        emb = np.frombuffer(f.read(512 * 64 * 4), np.float32).reshape(512, 64)
    np.testing.assert_array_equal(t["tok_embeddings"], emb)
    assert set(model.kernels().values()) == {"fp32"}


def test_freed_model_leaves_no_dangling_arrays(model_path):
    m = lowbit.load_model(model_path)
    ref = weakref.ref(m)
    w = m.tensors()["layers.2.w2"]
    want = w.copy()
    del m
    gc.collect()
    assert ref() is not None                        # the array holds the model, hence the mapping
    junk = [np.full((256, 256), 3, np.float32) for _ in range(16)]
    np.testing.assert_array_equal(w, want)
    del w, junk
    gc.collect()
    assert ref() is None


def test_logits_and_generate_agree_with_the_cli(model, model_path, cli):
    ids = model.tokenize("Once upon a time")
    assert ids[0] == 1                               # BOS, as the CLI encodes prompts
    logits = model.logits(ids)
    assert logits.shape == (len(ids), 512) and np.isfinite(logits).all()
    gen = model.generate(ids, n=16)
    assert gen[0] == int(np.argmax(logits[-1]))      # greedy: the first token is the argmax
    out = run_cli(cli, "generate", "--model", model_path, "--prompt", "Once upon a time", "-n", "16", "--ids").stdout
    assert gen == [int(v) for v in out.split()]
    text = model.generate("Once upon a time", n=16)
    assert text == model.detokenize([ids[-1]] + gen)[len(model.detokenize([ids[-1]])):]
    assert model.generate(ids, n=8, temp=0.8, seed=3) == model.generate(ids, n=8, temp=0.8, seed=3)


def test_evaluate_equals_cli(model, model_path, small_text, cli, tmp_path):
    out = tmp_path / "eval.json"
    run_cli(cli, "eval", "--model", model_path, "--scheme", "w4a16-g128,w8a8", "--text", small_text, "--ctx", "64",
            "--max-windows", "6", "--json", out)
    want = json.loads(out.read_text())
    seen = []
    got = lowbit.evaluate(model, small_text, schemes=["w4a16-g128", "w8a8"], ctx=64, max_windows=6,
                          progress=lambda done, total: seen.append((done, total)))
    assert isinstance(got, list) and len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert set(g) == set(w), set(g) ^ set(w)
        for k in set(w) - TIMING_KEYS - {"inputs"}:
            assert g[k] == w[k], (g["model"], k, g[k], w[k])
        assert g["inputs"] == w["inputs"]
        assert g["decode_tok_s"] > 0 and g["prefill_tok_s"] > 0
    assert got[0]["model"] == "w4a16-g128" and got[0]["kld_mean"] > 0 and got[0]["windows"] == 6
    assert seen[-1] == (6, 6)
    one = lowbit.evaluate(model.quantize("w4a16-g128"), small_text, ctx=64, max_windows=6, decode_tokens=4)
    assert one["model"] == "w4a16-g128" and one["ppl"] == got[0]["ppl"] and one["kld_mean"] == got[0]["kld_mean"]
    me = lowbit.evaluate(model, small_text, ctx=64, max_windows=2, decode_tokens=4)
    assert me["kld_mean"] == 0 and me["top1"] == 1 and me["ppl"] == me["ref_ppl"]


def test_quantize_model_equals_cli(model_path, small_text, cli, tmp_path):
    a, b = tmp_path / "cli", tmp_path / "py"
    run_cli(cli, "quantize", "--model", model_path, "--scheme", "w4a16-g32", "--method", "gptq", "--calib", small_text,
            "--calib-tokens", "512", "-o", a, "--eval", small_text, "--eval-windows", "2", "--json", tmp_path / "s.json")
    want = json.loads((tmp_path / "s.json").read_text())
    layers = []
    got = lowbit.quantize_model(model_path, "w4a16-g32", "gptq", small_text, str(b), calib_tokens=512,
                                eval=small_text, eval_windows=2, progress=lambda l, n: layers.append((l, n)))
    assert layers == [(i, 5) for i in range(5)]
    for k in set(want) - TIMING_KEYS - {"output"}:
        assert got[k] == want[k], (k, got[k], want[k])
    assert got["output"]["bytes"] == want["output"]["bytes"]
    # Same bytes on disk: the safetensors folder is deterministic.
    for name in sorted(os.listdir(a)):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    back = lowbit.load_model(str(b))               # the saved model runs the int4 kernels
    assert all(k.startswith("gemm_a16_w4g32_f32__") for n, k in back.kernels().items() if n != "classifier")


def test_progress_callback_errors_stop_before_writing(model_path, small_text, tmp_path):
    def boom(layer, layers):
        raise KeyError("stop here")
    out = tmp_path / "never"
    with pytest.raises(KeyError, match="stop here"):
        lowbit.quantize_model(model_path, "w8a16", "rtn", "", str(out), progress=boom)
    assert not out.exists()


def test_model_errors(model_path, small_text, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot open '/nonexistent/m.bin': No such file or directory"):
        lowbit.load_model("/nonexistent/m.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01\x00\x00\x00" * 3)
    with pytest.raises(ValueError, match="bad.bin"):
        lowbit.load_model(str(bad))
    m = lowbit.load_model(model_path)
    with pytest.raises(ValueError, match="token"):
        m.logits([1, 600])
    with pytest.raises(ValueError, match="exceed the context"):
        m.logits([1] * 600)
    with pytest.raises(ValueError, match="unknown scheme|w4a16-g128"):
        lowbit.evaluate(m, small_text, schemes=["w5"])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        lowbit.evaluate(m, str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="method"):
        lowbit.quantize_model(model_path, "w8a16", "magic", small_text)
    with pytest.raises(ValueError, match="gptq needs calib"):
        lowbit.quantize_model(model_path, "w8a16", "gptq")


def test_python_m_lowbit_runs_the_cli(cli):
    env = dict(os.environ)  # as is: under ASan, `import lowbit` (the package runs first) needs the preload
    p = subprocess.run([sys.executable, "-m", "lowbit", "schemes", "--json"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == json.loads(run_cli(cli, "schemes", "--json").stdout)
    p = subprocess.run([sys.executable, "-m", "lowbit", "formats", "encode", "e9m9", "1"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 2 and p.stderr.startswith("lowbit: ")
