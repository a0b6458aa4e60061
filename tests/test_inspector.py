"""The inspector: every view's numbers checked against an independent computation (the model's
forward, finite differences, the recurrences the gates define), the server's JSON against the
Python API, its refusals, the command line, and the exported page."""

import http.client
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from scratchlm.cli import main
from scratchlm.data.tokenizers import build_tokenizer
from scratchlm.inspector import PromptError, inspect_prompt, model_info, sample_step
from scratchlm.inspector.server import InspectorServer, export_page
from scratchlm.models import GPT, RNNLM, GPTConfig, Llama, LlamaConfig
from scratchlm.training.evaluate import attention_maps

TEXT = "the cat sat on the mat; a dog ran far\n"
PROMPT = "the dog sat"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("char", TEXT, 0)


def _gpt(V, dtype=np.float64):
    return GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16),
               dtype=dtype, rng=0)


def _llama(V, dtype=np.float64):
    return Llama(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=24,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=16, qk_norm=True), dtype=dtype, rng=0)


def _rnn(cell, layers=2):
    return lambda V, dtype=np.float64: RNNLM(V, 8, 12, cell=cell, num_layers=layers,
                                             dtype=dtype, rng=0)


MODELS = {"gpt": _gpt, "llama": _llama, "lstm": _rnn("lstm"), "gru": _rnn("gru"),
          "rnn": _rnn("rnn", 1)}


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _logp(model, ids, target):
    return float(np.log(_softmax(model(ids[None])[0, -1])[target]))


def _embedding_table(model):
    """The table whose row of a token occurring once is, on the input side, that position's
    embedding alone (GPT: the position table; the others: untied token tables)."""
    name = type(model).__name__
    if name == "GPT":
        return model.transformer.wpe.weight.data, lambda ids, t: t
    if name == "Llama":
        return model.model.embed_tokens.weight.data, lambda ids, t: ids[t]
    return model.encoder.weight.data, lambda ids, t: ids[t]


# ------------------------------------------------------------------------------------------------
# the numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_next_token_saliency_and_target_against_independent_computations(name, tok):
    model = MODELS[name](tok.vocab_size)
    ids = tok.encode(PROMPT)
    r = inspect_prompt(model, tok, PROMPT, top_k=5)
    probs = _softmax(model(ids[None])[0, -1])
    order = np.argsort(-probs, kind="stable")[:5]
    assert [t["id"] for t in r["next"]["top"]] == order.tolist()
    np.testing.assert_allclose([t["prob"] for t in r["next"]["top"]], probs[order], rtol=1e-12)
    assert r["target"]["id"] == int(order[0])
    np.testing.assert_allclose(r["target"]["logprob"], np.log(probs[order[0]]), rtol=1e-12)
    assert [t["id"] for t in r["tokens"]] == ids.tolist()
    assert "".join(t["text"] for t in r["tokens"]) == PROMPT

    # saliency: d log p(target) / d e_t by central differences, at the positions whose token
    # occurs once (so the table row perturbs that position alone)
    target = r["target"]["id"]
    table, row_of = _embedding_table(model)
    counts = {int(i): int(c) for i, c in zip(*np.unique(ids, return_counts=True))}
    checked = 0
    for t in range(ids.size):
        if counts[int(ids[t])] != 1 and type(model).__name__ != "GPT":
            continue
        row, h, g = row_of(ids, t), 1e-6, np.zeros(table.shape[1])
        for c in range(table.shape[1]):
            keep = table[row, c]
            table[row, c] = keep + h
            up = _logp(model, ids, target)
            table[row, c] = keep - h
            down = _logp(model, ids, target)
            table[row, c] = keep
            g[c] = (up - down) / (2 * h)
        np.testing.assert_allclose(r["saliency"]["grad_norm"][t], np.linalg.norm(g), rtol=1e-6)
        np.testing.assert_allclose(r["saliency"]["grad_x_input"][t], g @ _embedded(model, ids)[t],
                                   rtol=1e-6, atol=1e-9)
        checked += 1
    assert checked >= 3
    for p in model.parameters():                   # the inspection left no gradient behind
        assert not np.any(p.grad)


def _embedded(model, ids):
    """(T, C) the embeddings the first layer reads, computed here from the tables."""
    name = type(model).__name__
    if name == "GPT":
        tr = model.transformer
        return tr.wte.weight.data[ids] + tr.wpe.weight.data[:ids.size]
    if name == "Llama":
        return model.model.embed_tokens.weight.data[ids]
    return model.encoder.weight.data[ids]


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_transformer_views(name, tok):
    model = MODELS[name](tok.vocab_size)
    ids = tok.encode(PROMPT)
    r = inspect_prompt(model, tok, PROMPT, lens_k=3)
    maps, _ = attention_maps(model, tok, PROMPT)
    np.testing.assert_array_equal(np.array(r["attention"]), maps.astype(np.float64))
    L, T = len(r["attention"]), ids.size
    assert np.array(r["residual_norm"]).shape == (L + 1, T)
    # the logit lens of the last layer is the model's own prediction, at every position
    probs = _softmax(model(ids[None])[0])                                   # (T, V)
    for t in range(T):
        top = r["logit_lens"][L][t]
        assert top[0]["id"] == int(np.argmax(probs[t]))
        np.testing.assert_allclose([x["prob"] for x in top], np.sort(probs[t])[::-1][:3],
                                   rtol=1e-10)
    # the embeddings' norms
    if name == "gpt":
        e = model.transformer.wte.weight.data[ids] + model.transformer.wpe.weight.data[:T]
    else:
        e = model.model.embed_tokens.weight.data[ids]
    np.testing.assert_allclose(r["residual_norm"][0], np.linalg.norm(e, axis=-1), rtol=1e-12)
    # the direct logit attribution adds up to the logit; the heads (and c_proj's bias) to
    # their layer's attention part
    c = r["contributions"]
    total = c["embedding"] + c["final_bias"] + sum(x["attention"] + x["mlp"] for x in c["layers"])
    np.testing.assert_allclose(total, c["logit"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c["logit"], r["target"]["logit"], rtol=1e-12)
    for layer in c["layers"]:
        assert len(layer["heads"]) == len(r["attention"][0])
        np.testing.assert_allclose(sum(layer["heads"]) + layer["attention_bias"],
                                   layer["attention"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r["layer_grad_norm"][0], r["saliency"]["grad_norm"], rtol=1e-12)
    # the last boundary's gradient is the final norm's backward of W_U^T (1_y - p): its norm is
    # positive at the last position only
    last = np.array(r["layer_grad_norm"][L])
    assert last[-1] > 0 and not np.any(last[:-1])


def _norm_head(model):
    """The final norm as a plain function, and the head's weight (float64)."""
    if type(model).__name__ == "GPT":
        n = model.transformer.ln_f

        def norm(x):
            mu = x.mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + n.eps) * n.weight.data + \
                n.bias.data
        return norm, model.lm_head.weight.data
    n = model.model.norm
    return (lambda x: x / np.sqrt((x * x).mean(-1, keepdims=True) + n.eps) * n.weight.data), \
        model.lm_head.weight.data


def _run_blocks(model, x, start):
    """The residual after every block from ``start`` on, the blocks called one by one."""
    model.eval()
    out = []
    for b in _blocks_of(model)[start:]:
        if type(model).__name__ == "GPT":
            x = b(x)
        else:
            x = b(x, *model._rope(0, x.shape[1]))
        out.append(x)
    return out


def _blocks_of(model):
    return list(model.transformer.h) if type(model).__name__ == "GPT" else list(model.model.layers)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_interior_views_against_a_forward_run_block_by_block(name, tok):
    model = MODELS[name](tok.vocab_size)
    ids = tok.encode(PROMPT)
    r = inspect_prompt(model, tok, PROMPT)
    target = r["target"]["id"]
    xs = [_embedded(model, ids)[None]]
    xs += _run_blocks(model, xs[0], 0)
    np.testing.assert_allclose(r["residual_norm"], [np.linalg.norm(x[0], axis=-1) for x in xs],
                               rtol=1e-10)
    norm, W = _norm_head(model)
    for l in range(len(xs)):                                   # every row of the logit lens
        p = _softmax(norm(xs[l][0]) @ W.T)
        assert [row[0]["id"] for row in r["logit_lens"][l]] == np.argmax(p, -1).tolist()
        np.testing.assert_allclose([row[0]["prob"] for row in r["logit_lens"][l]], p.max(-1),
                                   rtol=1e-10)

    def logp_from(l, x):                                       # log p(target) from x_l on
        y = _run_blocks(model, x, l)[-1] if l < len(xs) - 1 else x
        return float(np.log(_softmax(norm(y[0, -1]) @ W.T)[target]))

    # the gradient at an interior boundary, by central differences on the residual itself
    h = 1e-6
    for l, t in ((1, ids.size - 1), (1, 2), (2, 4)):
        g = np.zeros(xs[l].shape[-1])
        for c in range(g.size):
            up, down = xs[l].copy(), xs[l].copy()
            up[0, t, c] += h
            down[0, t, c] -= h
            g[c] = (logp_from(l, up) - logp_from(l, down)) / (2 * h)
        np.testing.assert_allclose(r["layer_grad_norm"][l][t], np.linalg.norm(g), rtol=1e-6)

    # each head's share, by removing the head: zero its columns of the output projection and
    # the attention output at the last position changes by exactly what the head wrote
    blocks = _blocks_of(model)
    x_last = xs[-1][0, -1]
    if name == "gpt":
        n = model.transformer.ln_f
        scale = np.sqrt(x_last.var() + n.eps)

        def share(c):
            return (W[target] * n.weight.data) @ (c - c.mean()) / scale
    else:
        n = model.model.norm
        scale = np.sqrt((x_last * x_last).mean() + n.eps)

        def share(c):
            return (W[target] * n.weight.data) @ c / scale
    for l, b in enumerate(blocks):
        attn = b.attn if name == "gpt" else b.self_attn
        proj = attn.c_proj if name == "gpt" else attn.o_proj
        inp = (b.ln_1 if name == "gpt" else b.input_layernorm)(xs[l])
        args = () if name == "gpt" else model._rope(0, ids.size)
        full = attn(inp, *args)[0, -1]
        H = len(r["contributions"]["layers"][l]["heads"])
        d = proj.weight.shape[1] // H
        for head in range(H):
            keep = proj.weight.data[:, head * d:(head + 1) * d].copy()
            proj.weight.data[:, head * d:(head + 1) * d] = 0
            without = attn(inp, *args)[0, -1]
            proj.weight.data[:, head * d:(head + 1) * d] = keep
            np.testing.assert_allclose(r["contributions"]["layers"][l]["heads"][head],
                                       share(full - without), rtol=1e-8, atol=1e-12)


def test_pruned_quantized_and_lora_models(tok):
    from scratchlm.compress.prune import shrink
    from scratchlm.compress.quantize import quantize
    from scratchlm.finetune.lora import apply_lora
    ids = tok.encode(PROMPT)

    def adds_up(r, rtol):
        c = r["contributions"]
        total = c["embedding"] + c["final_bias"] + sum(x["attention"] + x["mlp"]
                                                       for x in c["layers"])
        np.testing.assert_allclose(total, c["logit"], rtol=rtol, atol=rtol)

    gpt = _gpt(tok.vocab_size)
    shrink(gpt, {"transformer.h.0": {"heads": [1]}})            # layer 0 keeps one head of two
    r = inspect_prompt(gpt, tok, PROMPT)
    assert [len(a) for a in r["attention"]] == [1, 2] and r["model"]["heads"] == [1, 2]
    assert [len(x["heads"]) for x in r["contributions"]["layers"]] == [1, 2]
    adds_up(r, 1e-10)
    np.testing.assert_allclose(r["next"]["top"][0]["prob"],
                               _softmax(gpt(ids[None])[0, -1]).max(), rtol=1e-12)

    q = _gpt(tok.vocab_size, np.float32)
    quantize(q, "int8")
    adds_up(inspect_prompt(q, tok, PROMPT), 1e-4)

    llama = _llama(tok.vocab_size)
    apply_lora(llama, target_modules=("q_proj", "o_proj"), r=2, rng=0)
    for name, layer in llama.named_modules():
        if hasattr(layer, "lora_B"):
            layer.lora_B.weight.data[...] = np.random.default_rng(1).normal(
                0, 0.3, layer.lora_B.weight.shape)
    adds_up(inspect_prompt(llama, tok, PROMPT), 1e-10)


def test_state_hooks_and_gradients_are_put_back(tok):
    model = _rnn("lstm", 1)(tok.vocab_size)
    model(tok.encode("the mat")[None])
    carried = model.state
    for p in model.parameters():
        p.grad[...] = np.random.default_rng(0).normal(size=p.shape)
    grads = {id(p): p.grad.copy() for p in model.parameters()}
    model.decoder.weight.requires_grad = False                        # one frozen part
    hook = lambda *a, **k: type(model.rnn).forward(model.rnn, *a, **k)   # noqa: E731
    object.__setattr__(model.rnn, "forward", hook)                     # e.g. a data-parallel hook
    model.drop.eval()                                                  # mixed modes
    inspect_prompt(model, tok, PROMPT)
    sample_step(model, tok, PROMPT, seed=0)
    assert model.state is carried and model.rnn.__dict__["forward"] is hook
    assert model.training and not model.drop.training
    assert model.decoder.weight.requires_grad is False and model.decoder.weight.grad is None
    for p in model.parameters():
        if p.grad is not None:
            np.testing.assert_array_equal(p.grad, grads[id(p)])
    # a model frozen whole still gets its saliency (the backward reaches the embeddings)
    gpt = _gpt(tok.vocab_size)
    want = inspect_prompt(gpt, tok, PROMPT)["saliency"]
    gpt.requires_grad_(False)
    assert inspect_prompt(gpt, tok, PROMPT)["saliency"] == want
    assert all(p.grad is None for p in gpt.parameters())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_gates_reproduce_the_hidden_states(cell, tok):
    model = MODELS[cell](tok.vocab_size)
    ids = tok.encode(PROMPT)
    r = inspect_prompt(model, tok, PROMPT)
    hidden, gates = np.array(r["hidden"]), np.array(r["gates"])            # (L, T, H), (L, G, T, H)
    out, _ = model.rnn(model.encoder(ids[None]))
    np.testing.assert_allclose(hidden[-1], out[0], rtol=1e-12)
    assert r["model"]["gates"] == (["i", "f", "g", "o"] if cell == "lstm" else ["r", "z", "n"])
    # layer 0's gates from its weights and inputs, torch's equations
    x, Hn = model.encoder.weight.data[ids], hidden.shape[2]
    w_ih, w_hh = model.rnn.weight_ih_l0.data, model.rnn.weight_hh_l0.data
    b_ih, b_hh = model.rnn.bias_ih_l0.data, model.rnn.bias_hh_l0.data
    sig = lambda v: 1 / (1 + np.exp(-v))                                    # noqa: E731
    h_prev = np.zeros(Hn)
    for t in range(ids.size):
        a, b = w_ih @ x[t] + b_ih, w_hh @ h_prev + b_hh
        if cell == "lstm":
            want = [sig(a[:Hn] + b[:Hn]), sig(a[Hn:2 * Hn] + b[Hn:2 * Hn]),
                    np.tanh(a[2 * Hn:3 * Hn] + b[2 * Hn:3 * Hn]), sig(a[3 * Hn:] + b[3 * Hn:])]
        else:
            rg, z = sig(a[:Hn] + b[:Hn]), sig(a[Hn:2 * Hn] + b[Hn:2 * Hn])
            want = [rg, z, np.tanh(a[2 * Hn:] + rg * b[2 * Hn:])]
        np.testing.assert_allclose(gates[0, :, t], want, rtol=1e-10, atol=1e-12)
        h_prev = hidden[0, t]
    for layer in range(hidden.shape[0]):
        h_prev = np.zeros(hidden.shape[2])
        c = np.zeros(hidden.shape[2])
        for t in range(ids.size):
            if cell == "lstm":       # c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)  (torch's order)
                i, f, g, o = gates[layer, :, t]
                c = f * c + i * g
                h = o * np.tanh(c)
            else:                    # h_t = (1 - z) n + z h_{t-1}
                _, z, n = gates[layer, :, t]
                h = (1 - z) * n + z * h_prev
            np.testing.assert_allclose(hidden[layer, t], h, rtol=1e-10, atol=1e-12)
            h_prev = h
    # at the last step the gradient reaching h_T is the decoder's W^T (1_y - p)
    p = _softmax(model(ids[None])[0, -1])
    d = -p
    d[r["target"]["id"]] += 1
    np.testing.assert_allclose(r["hidden_grad_norm"][-1][-1],
                               np.linalg.norm(model.decoder.weight.data.T @ d), rtol=1e-10)


@pytest.mark.parametrize("name", list(MODELS))
def test_float32_models_and_the_model_left_as_it_was(name, tok):
    model = MODELS[name](tok.vocab_size, np.float32)
    model.train()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    r = inspect_prompt(model, tok, PROMPT, target=3)
    assert r["target"]["id"] == 3 and r["model"]["dtype"] == "float32"
    json.dumps(r, allow_nan=False)                                         # finite, plain
    assert model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    for m in model.modules():
        assert "forward" not in m.__dict__ and "backward" not in m.__dict__
    for p in model.parameters():
        assert not np.any(p.grad)


def test_frozen_parameters_stay_frozen(tok):
    model = _gpt(tok.vocab_size)
    model.transformer.wte.weight.requires_grad = False
    r = inspect_prompt(model, tok, PROMPT)
    assert len(r["saliency"]["grad_norm"]) == len(PROMPT)
    assert model.transformer.wte.weight.requires_grad is False
    assert model.transformer.wte.weight.grad is None


def test_bad_prompts_and_models_are_refused_in_words(tok):
    gpt = _gpt(tok.vocab_size)
    with pytest.raises(PromptError, match="empty"):
        inspect_prompt(gpt, tok, "")
    with pytest.raises(PromptError, match="the prompt is 17 tokens; the model reads at most 16"):
        inspect_prompt(gpt, tok, "a" * 17)
    with pytest.raises(PromptError, match=r"cannot encode characters 'Z', 'é'"):
        inspect_prompt(gpt, tok, "the Zé cat")
    with pytest.raises(PromptError, match="target must be a token id"):
        inspect_prompt(gpt, tok, PROMPT, target=tok.vocab_size)
    with pytest.raises(PromptError, match="already fills"):
        sample_step(gpt, tok, "a" * 16)
    from scratchlm.models import CNN
    with pytest.raises(ValueError, match="transformer .GPT., llama, rnn, lstm, gru; this "
                                         "checkpoint holds a CNN"):
        inspect_prompt(CNN(), tok, PROMPT)
    # an RNN reads any length its views fit in
    gru = _rnn("gru", 1)(tok.vocab_size)
    assert len(inspect_prompt(gru, tok, "a" * 40)["tokens"]) == 40
    import scratchlm.inspector.analysis as A
    limit = A.MAX_NUMBERS // (1 * 4 * 12)                # 1 layer x (h + 3 gates) x 12 units
    with pytest.raises(PromptError, match=f"the inspector shows at most {limit} for this model"):
        inspect_prompt(gru, tok, "a" * (limit + 1))
    # a word tokenizer's unknown pieces are its words
    words = build_tokenizer("word", "the cat sat on the mat", 0)
    wmodel = _rnn("rnn", 1)(words.vocab_size)
    with pytest.raises(PromptError, match=r"cannot encode words 'dog', 'zebra' "):
        inspect_prompt(wmodel, words, "the zebra sat on the dog")


def test_a_sampled_token_must_read_back_as_itself():
    # a byte tokenizer's model can draw a byte that is only part of a character: the text the
    # page holds would not encode back to the ids; said, not appended as U+FFFD
    byte = build_tokenizer("byte", "", 0)
    model = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=1, n_embd=8), rng=0)
    outcomes = set()
    for seed in range(40):
        new = int(model.generate(byte.encode("ab")[None], 1, seed=seed)[0, -1])
        if new >= 0x80:
            with pytest.raises(PromptError, match="does not read back as itself"):
                sample_step(model, byte, "ab", seed=seed)
        else:
            assert sample_step(model, byte, "ab", seed=seed)["prompt"] == "ab" + chr(new)
        outcomes.add(new >= 0x80)
    assert outcomes == {True, False}


def test_sampling_one_step_is_the_models_sampler(tok):
    model = _llama(tok.vocab_size)
    ids = tok.encode(PROMPT)
    specials = set(tok.special_tokens.values())
    seen = set()
    for seed in range(30):
        new = int(model.generate(ids[None], 1, seed=seed)[0, -1])
        if new in specials:            # no text to append: said, not appended as "<unk>"
            with pytest.raises(PromptError, match="a special token with no text"):
                sample_step(model, tok, PROMPT, seed=seed)
        else:
            s = sample_step(model, tok, PROMPT, seed=seed)
            assert s["token"]["id"] == new and s["prompt"] == PROMPT + s["token"]["text"]
        seen.add(new in specials)
    assert seen == {True, False}
    greedy = sample_step(_gpt(tok.vocab_size), tok, "the", temperature=0)
    assert greedy["token"]["id"] == inspect_prompt(_gpt(tok.vocab_size), tok, "the")["target"]["id"]
    with pytest.raises(PromptError, match="temperature must be a number >= 0"):
        sample_step(model, tok, PROMPT, temperature=-1)


# ------------------------------------------------------------------------------------------------
# the server
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tok):
    model = _gpt(tok.vocab_size)
    server = InspectorServer(model, tok, "/some/dir/tiny.npz", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _request(server, method, path, body=None, headers=None, raw=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json"} | (headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), payload


def _json(server, method, path, body=None, **kw):
    status, headers, payload = _request(server, method, path, body, **kw)
    assert headers["Content-Type"].startswith("application/json")
    return status, json.loads(payload)


def test_the_servers_json_is_the_python_api(served, tok):
    status, got = _json(served, "POST", "/api/inspect", {"prompt": PROMPT, "target": 2})
    assert status == 200
    want = json.loads(json.dumps(inspect_prompt(served.model, tok, PROMPT, target=2)))
    assert got == want
    status, info = _json(served, "GET", "/api/model")
    assert status == 200 and info == model_info(served.model, tok) | {"checkpoint": "tiny.npz"}
    status, s = _json(served, "POST", "/api/sample", {"prompt": PROMPT, "seed": 5})
    assert status == 200 and s == sample_step(served.model, tok, PROMPT, seed=5)


def test_the_page_and_its_files(served):
    status, headers, page = _request(served, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    text = page.decode()
    # nothing from anywhere else: every src and href is the server's own path or inline data
    for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert ref.startswith("/") or ref.startswith("data:"), ref
    for path in ("/inspector.js", "/inspector.css"):
        status, headers, body = _request(served, "GET", path)
        text = body.decode().replace('"http://www.w3.org/2000/svg"', "")   # a name, not a load
        assert status == 200 and text and not re.search(r"https?:|//[\w.-]+\.\w|url\(|@import",
                                                        text)
        if path.endswith(".js"):                          # requests: the API's own paths only
            assert re.findall(r'fetch\(([^)]*)\)', text) == ["path, opts"]
            assert sorted(set(re.findall(r'api\("([^"]*)"', text))) == \
                ["/api/inspect", "/api/model", "/api/sample"]


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/etc/passwd", 404), ("GET", "/../setup.cfg", 404), ("GET", "/static/index.html", 404),
    ("GET", "/%2e%2e/server.py", 404), ("GET", "/server.py", 404), ("POST", "/", 405),
    ("GET", "/api/inspect", 405), ("PUT", "/api/inspect", 405), ("DELETE", "/", 405),
    ("POST", "/api/nothing", 404),
])
def test_only_its_own_routes(served, method, path, status):
    got, body = _json(served, method, path, {"prompt": "x"} if method == "POST" else None)
    assert got == status and body["error"]


def test_cross_site_requests_are_refused(served, tok):
    status, body = _json(served, "POST", "/api/inspect", {"prompt": PROMPT},
                         headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]
    status, body = _json(served, "POST", "/api/inspect", {"prompt": PROMPT},
                         headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "another site" in body["error"]
    status, body = _json(served, "POST", "/api/inspect", raw=b"[" * 60000)
    assert status == 400 and "JSON" in body["error"]
    status, headers, payload = _request(served, "HEAD", "/")
    assert status == 200 and payload == b"" and int(headers["Content-Length"]) > 100
    # bound to every interface, it answers any Host (the user chose to serve other machines)
    wide = InspectorServer(served.model, tok, port=0, host="0.0.0.0")
    threading.Thread(target=wide.serve_forever, daemon=True).start()
    try:
        status, _ = _json(wide, "GET", "/api/model", headers={"Host": "my-laptop.lan:9"})
        assert status == 200
    finally:
        wide.shutdown()
        wide.server_close()


def test_refusals_name_the_problem(served):
    status, body = _json(served, "GET", "/api/model", headers={"Host": "evil.example:80"})
    assert status == 403 and "answers requests for http://127.0.0.1:" in body["error"]
    status, body = _json(served, "POST", "/api/inspect", raw=b"x" * (65 * 1024))
    assert status == 413
    status, body = _json(served, "POST", "/api/inspect", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = _json(served, "POST", "/api/inspect", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]
    status, body = _json(served, "POST", "/api/inspect", {"prompt": "a" * 40})
    assert status == 400 and "the prompt is 40 tokens; the model reads at most 16" in body["error"]
    status, body = _json(served, "POST", "/api/inspect", {"prompt": "#"})
    assert status == 400 and "cannot encode characters '#'" in body["error"]
    status, body = _json(served, "POST", "/api/inspect", {"prompt": 7})
    assert status == 400 and "must be text" in body["error"]


def test_a_port_in_use_is_one_line(served, tmp_path, capsys):
    with pytest.raises(OSError):
        InspectorServer(served.model, served.tokenizer, port=served.server_address[1])
    ck = _checkpoint(tmp_path, served.model, served.tokenizer)
    assert main(["inspect", "--checkpoint", str(ck), "--port",
                 str(served.server_address[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"port {served.server_address[1]} on 127.0.0.1 is in use" in err


# ------------------------------------------------------------------------------------------------
# the command line and the exported page
# ------------------------------------------------------------------------------------------------
def _checkpoint(tmp_path, model, tok, name="gpt.npz"):
    """``model`` saved as the training loop saves it: its config, tokenizer and registry name."""
    from scratchlm.io import save_checkpoint
    kind = type(model).__name__
    entry = {"GPT": "transformer", "Llama": "llama"}.get(kind) or model.config.cell
    path = tmp_path / name
    save_checkpoint(path, model, config=model.config_dict(), tokenizer=tok.to_dict(),
                    model=entry)
    return path


def test_export_writes_one_self_contained_page(tmp_path, tok, capsys):
    model = _llama(tok.vocab_size, np.float32)
    ck = _checkpoint(tmp_path, model, tok, "llama.npz")
    page = tmp_path / "page.html"
    assert main(["inspect", "--checkpoint", str(ck), "--export", str(page), "--prompt",
                 "the cat"]) == 0
    assert "wrote" in capsys.readouterr().out
    text = page.read_text(encoding="utf-8")
    assert not re.search(r'(?:src|href)="(?!data:)', text)          # no file is loaded at all
    data = re.search(r'<script type="application/json" id="inspector-data">(.*?)</script>',
                     text, re.S).group(1)
    assert "<" not in data                  # "<unk>", "</script>": escaped, never markup
    got = json.loads(data)
    from scratchlm.training import load_model
    m, t, _, _ = load_model(ck)
    assert got == json.loads(json.dumps(inspect_prompt(m, t, "the cat", top_k=10)))
    assert not list(tmp_path.glob("page.html.tmp*"))


def test_inspect_with_a_lora_adapter(tmp_path, tok, capsys):
    from scratchlm.finetune.lora import apply_lora, save_adapter
    from scratchlm.training import load_model
    ck = _checkpoint(tmp_path, _llama(tok.vocab_size, np.float32), tok, "llama.npz")
    tuned, _, _, _ = load_model(ck)
    apply_lora(tuned, target_modules=("q_proj", "o_proj"), r=2, rng=0)
    for layer in tuned.modules():
        if hasattr(layer, "lora_B"):
            layer.lora_B.weight.data[...] = 0.2
    save_adapter(tuned, tmp_path / "adapter")
    page = tmp_path / "page.html"
    assert main(["inspect", "--checkpoint", str(ck), "--adapter", str(tmp_path / "adapter"),
                 "--export", str(page), "--prompt", PROMPT]) == 0
    data = re.search(r'id="inspector-data">(.*?)</script>', page.read_text(), re.S).group(1)
    want = json.loads(json.dumps(inspect_prompt(tuned, tok, PROMPT)))
    assert json.loads(data) == want                            # the adapted model's views
    plain = inspect_prompt(load_model(ck)[0], tok, PROMPT)
    assert plain["contributions"]["logit"] != want["contributions"]["logit"]
    capsys.readouterr()
    ngram_like = _checkpoint(tmp_path, _rnn("gru", 1)(tok.vocab_size), tok, "gru.npz")
    assert main(["inspect", "--checkpoint", str(ngram_like), "--adapter",
                 str(tmp_path / "adapter"), "--export", str(page), "--prompt", PROMPT]) == 2
    assert "--adapter applies to transformer and llama checkpoints, not gru" in \
        capsys.readouterr().err


def test_exported_text_is_never_markup(tmp_path, tok):
    r = inspect_prompt(_gpt(tok.vocab_size), tok, PROMPT)
    r["prompt"] = "</script><script>alert(1)</script><!--"
    text = open(export_page(r, tmp_path / "p.html"), encoding="utf-8").read()
    assert text.count("<script") == 2 and text.count("</script>") == 2   # the data's and the code's
    data = re.search(r'id="inspector-data">(.*?)</script>', text, re.S).group(1)
    assert json.loads(data)["prompt"] == r["prompt"]


@pytest.mark.filterwarnings("ignore:NGramLM.*discounts:RuntimeWarning")
def test_command_line_refusals(tmp_path, tok, capsys):
    ck = _checkpoint(tmp_path, _gpt(tok.vocab_size), tok)
    assert main(["inspect", "--checkpoint", str(ck), "--export", str(tmp_path / "p.html")]) == 2
    assert "--export needs --prompt" in capsys.readouterr().err
    assert main(["inspect", "--checkpoint", str(ck), "--export", str(tmp_path / "p.html"),
                 "--prompt", "a" * 17]) == 2
    assert "the prompt is 17 tokens" in capsys.readouterr().err
    assert main(["inspect", "--checkpoint", str(ck), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 20, encoding="utf-8")
    ngram = tmp_path / "ngram.npz"
    assert main(["train", "markov", "--order", "2", "--corpus", str(text), "--out",
                 str(ngram)]) == 0
    capsys.readouterr()
    assert main(["inspect", "--checkpoint", str(ngram)]) == 2
    err = capsys.readouterr().err
    assert "the inspector reads language models of kind transformer (GPT), llama, rnn, lstm, " \
           "gru; this checkpoint holds a NGramLM" in err and err.count("\n") == 1


def test_the_command_serves_and_says_where(tmp_path, tok):
    ck = _checkpoint(tmp_path, _rnn("lstm", 1)(tok.vocab_size, np.float32), tok, "lstm.npz")
    proc = subprocess.Popen([sys.executable, "-m", "scratchlm", "inspect", "--checkpoint",
                             str(ck), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        import select
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the command said nothing in 120 s"
        line = proc.stdout.readline()
        assert "only this machine can open it" in line, line + proc.stderr.read()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        conn = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=60)
        conn.request("POST", "/api/inspect", body=json.dumps({"prompt": PROMPT}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        got = json.loads(resp.read())
        assert resp.status == 200 and got["model"]["cell"] == "lstm"
        assert len(got["hidden_grad_norm"][0]) == len(PROMPT)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
