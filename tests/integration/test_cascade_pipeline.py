"""The cascade inside the pipeline: escalation to the transformer, the breaker keeping the fast answer,
abstain to triage, and a model swap while tickets flow."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import orjson
import pytest

from routing_engine.stages.registry import PIPELINE_STAGES as STAGES  # noqa: E402

from fixtures import FIXTURE, InProcessPipeline, wait_for


@pytest.fixture(scope="session")
def fallback_models(tmp_path_factory, models_dir):
    """The tiny fast model plus a tiny fine-tuned transformer fallback, both trained on the fixture."""
    from routing_engine.models.data import read_labelled
    from routing_engine.models.finetune import train_fallback

    d = tmp_path_factory.mktemp("cascade-models")
    shutil.copytree(models_dir, d, dirs_exist_ok=True)
    texts, labels = read_labelled(FIXTURE)
    train_fallback(texts, labels, epochs=1, progress=False, holdout=0, max_seq_length=32).save(d)
    return d


def with_policy(src, dst, **policy):
    """Copy the model dir, overriding the fast model's policy thresholds."""
    from routing_engine.models.classifier import latest_model

    shutil.copytree(src, dst)
    meta_path = latest_model(dst) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["policy"] = {**meta.get("policy", {}), **policy}
    meta_path.write_text(json.dumps(meta))
    return dst


async def _final(p, tid):
    resp = await p.client.get(f"/v1/tickets/{tid}")
    if resp.status != 200:
        return None
    rec = await resp.json()
    return rec if rec["status"] in ("assigned", "queued", "attached") else None


async def _post(p, body, **extra):
    resp = await p.client.post("/v1/tickets", json={"subject": "help", "body": body, **extra})
    assert resp.status == 202
    return (await resp.json())["ticket_id"]


async def test_unsure_tickets_escalate_to_the_transformer(settings, r, fallback_models, tmp_path):
    d = with_policy(fallback_models, tmp_path / "m", escalate_below=1.01, abstain_below=0.0, ood_below=0.0)
    async with InProcessPipeline(replace(settings, models_dir=str(d)), r, stages=STAGES) as p:
        tid = await _post(p, "my card still has not arrived in the post")
        rec = await wait_for(lambda: _final(p, tid))
        e = rec["enrich"]
        assert e["decided_by"] == "transformer" and e["model"].startswith("ft-minilm-")
        assert e["fast"]["label"] and e["fallback"]["label"] and e["fast"]["model"].startswith("lgbm-")
        assert e["reason"].startswith("below escalate threshold") and e["degraded"] is False
        assert e["breaker"] == "closed" and e["thresholds"]["escalate_below"] == 1.01


async def test_loading_the_fallback_primes_the_breakers_rate(settings, r, fallback_models, tmp_path):
    """Before any ticket escalates, the fallback stage has measured its warm-up batch and the breaker knows a rate,
    so the first flood can be sized by the queue rule."""
    from routing_engine.infra.breaker import Breaker
    from routing_engine.infra.keys import Keys

    k = Keys(settings.prefix)
    async with InProcessPipeline(replace(settings, models_dir=str(fallback_models)), r, stages=STAGES):
        state = await wait_for(lambda: _primed(Breaker(r, k.breaker, k.events)))
    assert float(state["rate"]) > 0 and state["rate_sized"] == "1" and state["state"] == "closed"


async def _primed(b):
    st = await b.state()
    return st if st.get("rate_sized") else None


async def test_open_breaker_keeps_fast_answer_marked_degraded(settings, r, fallback_models, tmp_path):
    from routing_engine.infra.breaker import Breaker, BreakerPolicy
    from routing_engine.infra.keys import Keys

    d = with_policy(fallback_models, tmp_path / "m", escalate_below=1.01, abstain_below=0.0, ood_below=0.0)
    k = Keys(settings.prefix)
    b = Breaker(r, k.breaker, k.events, BreakerPolicy(cooldown_ms=60_000))
    await b.record(True, latency_ms=50, backlog_ms=5_000)  # a backlog trips it
    assert (await b.state())["state"] == "open"
    async with InProcessPipeline(replace(settings, models_dir=str(d)), r, stages=STAGES) as p:
        tid = await _post(p, "someone stole my card yesterday")
        rec = await wait_for(lambda: _final(p, tid))
        e = rec["enrich"]
        assert e["decided_by"] == "lightgbm" and e["degraded"] is True and e["fallback"] is None
        assert "breaker open" in e["reason"] and e["breaker"] == "open"
        assert rec["category"] == e["fast"]["label"]


async def test_below_abstain_threshold_goes_to_triage(settings, r, fallback_models, tmp_path):
    d = with_policy(fallback_models, tmp_path / "m", escalate_below=0.0, abstain_below=1.01, ood_below=0.0)
    async with InProcessPipeline(replace(settings, models_dir=str(d)), r, stages=STAGES) as p:
        tid = await _post(p, "what is the meaning of life")
        rec = await wait_for(lambda: _final(p, tid))
        assert rec["team"] == "triage" and rec["enrich"]["abstain"] is True
        assert rec["enrich"]["decided_by"] == "abstain" and "abstain" in rec["enrich"]["reason"]
        assert rec["assignee"] == "gus"  # the agent with the triage skill


async def test_model_swap_while_tickets_flow_loses_nothing(settings, r, models_dir, embedder, tmp_path):
    from routing_engine.models.data import read_labelled
    from routing_engine.models.training import train

    d = tmp_path / "m"
    shutil.copytree(models_dir, d)
    old_version = next(x.name for x in d.iterdir() if x.name.startswith("lgbm-"))
    s = replace(settings, models_dir=str(d), model_reload_s=0.2)
    async with InProcessPipeline(s, r, stages=("enrich", "dedup", "route")) as p:
        async with r.pipeline(transaction=False) as pipe:
            for i in range(150):
                pipe.xadd(p.k.ingest, {"data": orjson.dumps({"id": f"swap-{i}", "body": f"card not arrived {i}"})})
            await pipe.execute()
        texts, labels = read_labelled(FIXTURE)
        new = train(texts, labels, embedder, progress=False, holdout=0)
        new.save(d)  # lands while the batches are flowing

        async def all_routed():
            return await r.xlen(p.k.routed) >= 150

        await wait_for(all_routed, timeout=60)
        models = set()
        for i in range(150):
            rec = await (await p.client.get(f"/v1/tickets/swap-{i}")).json()
            assert rec["status"] in ("assigned", "queued", "attached")
            models.add(rec["enrich"]["model"])
        assert await r.xlen(p.k.routed) == 150
        assert new.version in models  # the new model took over without a restart
        assert models <= {old_version, new.version}
