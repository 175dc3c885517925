"""token-states: for a matcher that finetunes the encoder's top layers, the catalogue's
token states below them, computed by one Ray task with an encoder actor's resources (its
GPU, if it has one)."""

from __future__ import annotations

import ray

from chatrec.matcher.token_states import encode_token_states
from chatrec.stage_metrics import StageMetric
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext


def _wanted(ctx: RunContext) -> bool:
    return ctx.matcher_choice is not None and ctx.matcher_choice.token_layers is not None


def _encode(ctx: RunContext, m: StageMetric) -> None:
    cfg, plan, layers = ctx.cfg, ctx.enc_plan, ctx.matcher_choice.token_layers
    task = ray.remote(encode_token_states).options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)
    states = ray.get(task.remote(model=cfg.encoder.model, fingerprint=ctx.fingerprint,
                                 texts=ctx.texts.column("text").to_pylist(), max_length=cfg.encoder.max_length,
                                 top_layers=layers, batch_size=cfg.encoder.batch_size, device=plan.device,
                                 num_threads=plan.threads))
    ctx.token_states = states
    m.rows = states.n_items
    m.detail = f"below the top {layers} encoder layer(s): {states.states.nbytes / 1e6:.0f} MB"


STAGE = Stage("token-states", "items", run=_encode, when=_wanted)
