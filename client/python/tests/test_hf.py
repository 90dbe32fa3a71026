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


def test_install_refuses_sliding_window(client):
    cfg = transformers.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1, sliding_window=16)
    model = transformers.MistralForCausalLM(cfg)
    with pytest.raises(ValueError, match="full causal attention"):
        hf.install(model, client, {"dense": Params(dense=True)})
