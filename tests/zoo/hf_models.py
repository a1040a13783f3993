"""Tiny random-weight transformers from `transformers` configs, exported to ONNX with
dynamic batch and sequence axes by both torch exporters (opset <= 20)."""
from __future__ import annotations

import os
import warnings

import torch

SEQ, BATCH = 8, 2


def _seed():
    torch.manual_seed(0)


def bert():
    from transformers import BertConfig, BertModel
    _seed()
    cfg = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=32, attn_implementation="eager")
    return BertModel(cfg).eval(), "text"


def _gpt2_config():
    from transformers import GPT2Config
    return GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=32, attn_implementation="eager")


def gpt2():
    from transformers import GPT2Model
    _seed()
    return GPT2Model(_gpt2_config()).eval(), "text"


def _llama_config(**kw):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                       attn_implementation="eager", **kw)


def llama():
    from transformers import LlamaModel
    _seed()
    return LlamaModel(_llama_config()).eval(), "text"


def qwen2():
    from transformers import Qwen2Config, Qwen2Model
    _seed()
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      attn_implementation="eager")
    return Qwen2Model(cfg).eval(), "text"


def mistral():
    from transformers import MistralConfig, MistralModel
    _seed()
    cfg = MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32,
                        attn_implementation="eager", sliding_window=None)
    return MistralModel(cfg).eval(), "text"


def vit():
    from transformers import ViTConfig, ViTModel
    _seed()
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=48, attn_implementation="eager")
    return ViTModel(cfg, add_pooling_layer=False).eval(), "image"


def llama_lm():
    """`llama` as a causal LM with its own (untied) output head: input ids -> logits."""
    from transformers import LlamaForCausalLM
    _seed()
    return LlamaForCausalLM(_llama_config(tie_word_embeddings=False)).eval(), "text"


def gpt2_lm():
    """`gpt2` with its output head tied to the token table (the default): ids -> logits."""
    from transformers import GPT2LMHeadModel
    _seed()
    return GPT2LMHeadModel(_gpt2_config()).eval(), "text"


HF_ZOO = {"bert": bert, "gpt2": gpt2, "llama": llama, "qwen2": qwen2, "mistral": mistral, "vit": vit}
# causal LMs (ids -> logits over the vocabulary): exported like the rest, not in the
# architecture sweeps over HF_ZOO
HF_LMS = {"llama_lm": llama_lm, "gpt2_lm": gpt2_lm}


class _Wrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m(x) if not hasattr(self.m.config, "vocab_size") else self.m(input_ids=x, use_cache=False) \
            if "use_cache" in self.m.forward.__code__.co_varnames else self.m(input_ids=x)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def example(kind: str, batch=BATCH, seq=SEQ):
    g = torch.Generator().manual_seed(1)
    if kind == "text":
        return torch.randint(0, 97, (batch, seq), generator=g)
    return torch.randn(batch, 3, 16, 16, generator=g)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random biases and norm weights too: zero/one defaults would be deduplicated by the
    exporter into one shared initializer, which couples unrelated layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1.0 + noise if ("norm" in name.lower() and name.endswith("weight")) else
                    p + noise if p.dim() > 1 else noise)


def export_hf(name: str, path: str, dynamo: bool, randomized: bool = True, opset: int | None = None,
              attention: str = "eager") -> str:
    """`randomized=False` keeps transformers' default init (zero biases, unit norms); `opset`
    (default 17 for TorchScript, 18 for dynamo): below 17 a LayerNorm is written out as
    ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add; from 23 the dynamo exporter
    writes attention as one standard `Attention` node. `attention`: "sdpa" exports the
    model with transformers' default scaled_dot_product_attention instead of the eager form."""
    import onnx

    model, kind = {**HF_ZOO, **HF_LMS}[name]()
    if attention != "eager":
        model.set_attn_implementation(attention)
    if randomized:
        randomize(model)
    wrapped = _Wrap(model).eval()
    x = example(kind)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim
            dyn = {"x": {0: Dim("batch", min=1, max=64)}} if kind == "image" else \
                {"x": {0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=32)}}
            torch.onnx.export(wrapped, (x,), path, dynamo=True, opset_version=opset or 18, dynamic_shapes=dyn,
                              input_names=["x"], output_names=["y"], external_data=False, verbose=False)
        else:
            axes = {"x": {0: "batch"}, "y": {0: "batch"}} if kind == "image" else \
                {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
            torch.onnx.export(wrapped, (x,), path, dynamo=False, opset_version=opset or 17, dynamic_axes=axes,
                              input_names=["x"], output_names=["y"])
    m = onnx.load(path)
    if m.ir_version > 10:
        m.ir_version = 10
        onnx.save(m, path)
    for extra in (path + ".data",):
        if os.path.exists(extra):
            os.remove(extra)
    return path


def export_tied_lm(path, dynamo, name="llama"):
    """A tiny LLaMA (or GPT-2) with an output head tied to its embedding (logits = h · E^T, as
    LlamaForCausalLM / GPT2LMHeadModel with tied embeddings compute them), input ids -> logits."""
    base, _ = HF_ZOO[name]()
    randomize(base)
    table = base.embed_tokens.weight if name == "llama" else base.wte.weight

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            h = self.m(input_ids=x).last_hidden_state
            return torch.nn.functional.linear(h, table)

    lm = base
    x = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim
            torch.onnx.export(Logits(lm), (x,), path, dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["y"], external_data=False,
                              dynamic_shapes={"x": {0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=32)}})
        else:
            torch.onnx.export(Logits(lm), (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    # Both exporters store the head as a transposed *copy* of the small table; a real model's
    # (SmolLM2) reads the one table through a Transpose. Make the file do that.
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(path)
    inits = {i.name: i for i in m.graph.initializer}
    table = next(n for n, i in inits.items() if tuple(i.dims) == (97, 32))
    copy = next(n for n, i in inits.items() if tuple(i.dims) == (32, 97))
    assert np.array_equal(numpy_helper.to_array(inits[copy]), numpy_helper.to_array(inits[table]).T)
    m.graph.initializer.remove(inits[copy])
    m.graph.node.insert(0, helper.make_node("Transpose", [table], [copy], perm=[1, 0], name="tied_head_transpose"))
    onnx.save(m, path)
    return path
