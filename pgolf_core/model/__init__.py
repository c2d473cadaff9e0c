"""The pgolf GPT and its components, one file per component family; the config's ``model`` section has
one sub-section per file (model.attention, model.rotary, model.mlp, model.embeddings, model.residual).

    model = build_model(cfg.model)        # fp32 parameters on CPU, attention backend chosen once
    logits = model(input_ids)             # (B, T, V) fp32, softcapped
    loss = model(input_ids, target_ids)   # mean CE
    nll = model.nll(input_ids, target_ids)
    model.set_loops(True)                 # depth recurrence on (stays off without model.residual.loops)
    load_challenge_state_dict(model, "final_model.pt")  # a challenge baseline run's weights
"""

from pgolf_core.model.attention import select_attention_backend
from pgolf_core.model.challenge_weights import load_challenge_state_dict
from pgolf_core.model.gpt import GPT, build_model, count_parameters
from pgolf_core.model.residual import LayerPlan, layer_plan, loop_layers

__all__ = [
    "GPT",
    "LayerPlan",
    "build_model",
    "count_parameters",
    "layer_plan",
    "load_challenge_state_dict",
    "loop_layers",
    "select_attention_backend",
]
