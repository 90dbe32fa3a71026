"""
The transformers integration (sparq.hf) on a small randomly initialised Llama: decoding
with dense attention served by sparqd reproduces the model's own logits (up to the f16
storage of K/V), SparQ with few rows does not (it is really used), and the sessions hold
exactly the tokens the model saw. Skips where torch/transformers are not installed.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sparq import Params  # noqa: E402
from sparq import hf  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (1, 48))
    with torch.no_grad():
        native = model(ids).logits[0]
    return model, ids[0].tolist(), native


def test_decode_through_sparqd(client, tiny):
    model, ids, native = tiny
    modes = {"dense": Params(dense=True), "sparse": Params(r=4, k=8, l=2)}
    ctrl = hf.install(model, client, modes)
    try:
        ctrl.open("test")
        n_pre = 30
        cache = transformers.DynamicCache(config=model.config)
        with torch.no_grad():
            model(torch.tensor([ids[:n_pre]]), cache=cache, use_cache=True)
        for name, s in ctrl.sessions.items():
            assert s.info().tokens == n_pre, name
        results = {}
        for name in modes:
            ctrl.use(name)
            c = hf.copy_cache(cache)
            ctrl.start_analysis()
            logits = []
            with torch.no_grad():
                for t in range(n_pre, len(ids)):
                    logits.append(model(torch.tensor([[ids[t]]]), cache=c,
                                        use_cache=True).logits[0, -1])
            results[name] = (torch.stack(logits), ctrl.stop_analysis())
            assert ctrl.sessions[name].info().tokens == len(ids)
        dense, dense_layers = results["dense"]
        np.testing.assert_allclose(dense.numpy(), native[n_pre:].numpy(), rtol=0, atol=2e-3)
        assert all(x["rel_err_mean"] < 1e-3 for x in dense_layers)
        sparse, sparse_layers = results["sparse"]
        assert (sparse - dense).abs().max() > 1e-3, "SparQ with k=8 of 48 changed nothing"
        for x in sparse_layers:
            assert x["steps"] == len(ids) - n_pre
            assert x["rel_err_mean"] > 1e-4
            assert 0.0 <= x["topk_recall"] <= 1.0
        # a session gone under the model is a SparqError, not a wrong answer
        ctrl.sessions["dense"].close()
        ctrl.use("dense")
        with pytest.raises(Exception, match="no such session"):
            with torch.no_grad():
                model(torch.tensor([[ids[0]]]), cache=hf.copy_cache(cache), use_cache=True)
    finally:
        ctrl.close()
        model.set_attn_implementation("sdpa")


def test_sparq_cache_keeps_no_kv(client, tiny):
    """With SparqCache the engine holds positions only: dense decoding through sparqd
    still reproduces the model's own logits, the engine's cache stays empty, and the
    analysis reads the K/V back from sparqd (its error against exact attention ~0)."""
    model, ids, native = tiny
    ctrl = hf.install(model, client, {"dense": Params(dense=True)})
    try:
        ctrl.open("cache")
        n_pre = 30
        cache = hf.SparqCache(model.config.num_hidden_layers)
        logits = []
        with torch.no_grad():
            model(torch.tensor([ids[:n_pre]]), cache=cache, use_cache=True)
            ctrl.start_analysis()
            for t in range(n_pre, len(ids)):
                logits.append(model(torch.tensor([[ids[t]]]), cache=cache,
                                    use_cache=True).logits[0, -1])
        layers = ctrl.stop_analysis()
        np.testing.assert_allclose(torch.stack(logits).numpy(), native[n_pre:].numpy(),
                                   rtol=0, atol=2e-3)
        assert cache.get_seq_length() == len(ids)
        assert all(layer.keys is None and layer.values is None for layer in cache.layers)
        assert all(x["steps"] == len(ids) - n_pre and x["rel_err_mean"] < 1e-3 for x in layers)
        # a second multi-token block would attend without the earlier K/V: refused
        with pytest.raises(ValueError, match="prefill in one block"):
            with torch.no_grad():
                model(torch.tensor([ids[:4]]), cache=cache, use_cache=True)
    finally:
        ctrl.close()
        model.set_attn_implementation("sdpa")


def test_install_refuses_sliding_window(client):
    cfg = transformers.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1, sliding_window=16)
    model = transformers.MistralForCausalLM(cfg)
    with pytest.raises(ValueError, match="full causal attention"):
        hf.install(model, client, {"dense": Params(dense=True)})
