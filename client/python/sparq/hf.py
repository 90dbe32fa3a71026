"""
hf.py -- sparqd as the attention of a Hugging Face transformers model (an inference engine
attached through libsparq, DESIGN.md section 5).

install(model, client) registers the attention function "sparq" with transformers'
AttentionInterface and points every attention layer of the model at one SparqAttention
controller. The model keeps its own code path for everything else:
  prefill (a query block of more than one token): dense attention in the model (torch
      SDPA, as SPARQ.md says prefill is dense), and the block's post-RoPE K/V are appended
      to the layer's stream in the sparqd session of every mode being run;
  decode (one token): the token's K/V are appended to the active mode's session and the
      attention output comes from sparqd (SparQ with that mode's parameters, or dense).
The engine keeps no K/V of its own: SparqCache (a transformers Cache) only counts the
positions, so the model's memory stays flat however long the context grows -- sparqd
holds the whole KV cache. (Passing a DynamicCache instead also works; it then grows
as usual.) Analysis mode reads the stored records back from sparqd (gather) and
compares sparqd's answer with exact attention over them, and the exact top-k positions
with SparQ's selection.

Batch size 1 only (one sequence per session); the eval drives one sequence at a time.
"""
import copy
import math

import numpy as np
import torch
from transformers import AttentionInterface, Cache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .client import Params, SparqError, from_bits

NAME = "sparq"


def _kv_f16(x):
    """[1][n_kv][T][d] torch -> numpy float16 [T][n_kv][d] (the wire layout)."""
    return x[0].transpose(0, 1).to(torch.float16).contiguous().numpy()


class SparqLayer(DynamicLayer):
    """One layer of SparqCache: the number of positions seen, no K/V. update() hands the
    model back just the states it was given -- a prefill block attends densely over
    itself, a decode step's attention is answered by sparqd from its own copy."""

    is_croppable = False

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        self.n = 0
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        elif key_states.shape[-2] > 1:
            raise ValueError("SparqCache: a second prefill block would need the earlier K/V; "
                             "prefill in one block")
        self.n += key_states.shape[-2]
        return key_states, value_states

    def get_seq_length(self):
        return self.n if self.is_initialized else 0

    def reset(self):
        self.n = 0


class SparqCache(Cache):
    """The engine's KV cache when sparqd holds the K/V: positions only (see SparqLayer)."""

    def __init__(self, n_layers):
        super().__init__(layers=[SparqLayer() for _ in range(n_layers)])


class LayerStats:
    """Running sums for one layer: relative error of y and top-k recall."""

    def __init__(self):
        self.steps = 0
        self.err_sum = 0.0
        self.err_max = 0.0
        self.recall_sum = 0.0
        self.recall_n = 0

    def as_dict(self):
        return {"steps": self.steps,
                "rel_err_mean": self.err_sum / self.steps if self.steps else None,
                "rel_err_max": self.err_max if self.steps else None,
                "topk_recall": self.recall_sum / self.recall_n if self.recall_n else None}


class SparqAttention:
    """Routes a model's attention through sparqd sessions, one per mode (name -> Params)."""

    def __init__(self, client, config, modes, dtype="f16"):
        self.client = client
        self.n_layers = config.num_hidden_layers
        self.n_q = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_q
        self.dtype = dtype
        self.modes = dict(modes)
        self.sessions = {}
        self.active = None
        self.analyze = False
        self.layer_stats = None
        self.trace = None            # dict layer -> list of q [n_q][d] when dumping
        self.analyze_every = 1       # analyse one decode step in this many
        self.decode_steps = 0

    # -- sessions ------------------------------------------------------------------
    def open(self, label="hf"):
        """Fresh sessions for every mode (closing the previous ones)."""
        self.close()
        for name, params in self.modes.items():
            self.sessions[name] = self.client.create_session(
                self.n_layers, self.n_q, self.n_kv, self.head_dim, self.dtype,
                defaults=params, label=f"{label}:{name}"[:63])
        self.active = next(iter(self.modes))
        self.decode_steps = 0

    def use(self, mode):
        if mode not in self.sessions:
            raise KeyError(f"mode '{mode}' has no open session")
        self.active = mode

    def close(self):
        for s in self.sessions.values():
            try:
                s.close()
            except SparqError:
                pass
        self.sessions = {}

    def start_analysis(self, trace=False, every=1):
        """Measure sparqd's answers against exact attention on one decode step in
        `every` (all of them when tracing)."""
        self.analyze = True
        self.analyze_every = max(1, int(every))
        self.decode_steps = 0
        self.layer_stats = [LayerStats() for _ in range(self.n_layers)]
        self.trace = {layer: [] for layer in range(self.n_layers)} if trace else None

    def stop_analysis(self):
        self.analyze = False
        out = [ls.as_dict() for ls in self.layer_stats or []]
        return out

    # -- the attention function ----------------------------------------------------
    def __call__(self, module, query, key, value, attention_mask, scaling=None, **kwargs):
        layer = module.layer_idx
        b, _, tq, d = query.shape
        if b != 1:
            raise ValueError(f"sparq attention serves batch 1, got {b}")
        if scaling is not None and not math.isclose(scaling, 1 / math.sqrt(d), rel_tol=1e-6):
            raise ValueError(f"layer {layer} scales by {scaling}, SparQ by 1/sqrt({d})")
        if tq > 1:
            # prefill: dense in the model; its K/V go to every mode's session
            k_new = _kv_f16(key[:, :, -tq:])
            v_new = _kv_f16(value[:, :, -tq:])
            for s in self.sessions.values():
                s.append(layer, k_new, v_new)
            return sdpa_attention_forward(module, query, key, value, attention_mask,
                                          scaling=scaling, **kwargs)
        s = self.sessions[self.active]
        s.append(layer, _kv_f16(key[:, :, -1:]), _kv_f16(value[:, :, -1:]))
        q = query[0, :, 0, :].float().contiguous().numpy()
        params = self.modes[self.active]
        y = s.attend(layer, q, params)
        if self.analyze and (self.decode_steps % self.analyze_every == 0
                             or self.trace is not None):
            self._analyze(layer, s, q, y, params)
        if layer == self.n_layers - 1:
            self.decode_steps += 1
        out = torch.from_numpy(y).to(query.dtype)
        return out.view(1, 1, self.n_q, d), None

    def stored_kv(self, s, layer):
        """The K/V sparqd holds for one layer of session s: float64 [n_kv][S][d] each."""
        n = s.info().tokens
        pos = np.arange(n, dtype=np.uint32)
        ks, vs = [], []
        for h in range(self.n_kv):
            k, v = s.gather(layer, h, pos)
            ks.append(from_bits(k, self.dtype))
            vs.append(from_bits(v, self.dtype))
        return (torch.from_numpy(np.stack(ks)).double(),
                torch.from_numpy(np.stack(vs)).double())

    def _analyze(self, layer, s, q, y, params):
        """Exact attention over the K/V sparqd stores; SparQ's selection vs the exact top-k."""
        g = self.n_q // self.n_kv
        K, V = self.stored_kv(s, layer)               # [n_kv][S][d]
        qd = torch.from_numpy(q).double().view(self.n_kv, g, -1)
        w = torch.softmax(torch.einsum("hgd,hsd->hgs", qd, K) / math.sqrt(q.shape[-1]), -1)
        y_ex = torch.einsum("hgs,hsd->hgd", w, V).reshape(self.n_q, -1).numpy()
        st = self.layer_stats[layer]
        err = float(np.linalg.norm(y - y_ex) / max(np.linalg.norm(y_ex), 1e-30))
        st.steps += 1
        st.err_sum += err
        st.err_max = max(st.err_max, err)
        if not params.dense:
            sel, _ = s.select(layer, q, params, sel_cap=K.shape[1])
            mass = w.sum(1)                           # [n_kv][S], group-summed weights
            for h in range(self.n_kv):
                kk = len(sel[h])
                if kk == 0 or kk >= K.shape[1]:
                    continue
                top = torch.topk(mass[h], kk).indices.numpy()
                st.recall_sum += len(np.intersect1d(top, sel[h])) / kk
                st.recall_n += 1
        if self.trace is not None:
            self.trace[layer].append(q.copy())


def install(model, client, modes, dtype="f16"):
    """Makes the model attend through sparqd; returns the SparqAttention controller.
    modes: {name: Params}; the first is active until use() says otherwise."""
    cfg = model.config
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "attn_logit_softcapping", None):
        raise ValueError("sparq attention serves full causal attention without softcapping")
    ctrl = SparqAttention(client, cfg, modes, dtype)

    def attention(module, query, key, value, attention_mask, **kwargs):
        c = getattr(module, "_sparq", None)
        if c is None or not c.sessions:   # not installed on this module, or no session
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return c(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    for m in model.modules():
        if hasattr(m, "layer_idx") and hasattr(m, "q_proj"):
            m._sparq = ctrl
    model.set_attn_implementation(NAME)
    return ctrl


def copy_cache(cache):
    """An independent copy of a transformers cache (to decode several modes from one
    prefill)."""
    return copy.deepcopy(cache)


__all__ = ["install", "SparqAttention", "SparqCache", "copy_cache", "Params", "NAME"]
