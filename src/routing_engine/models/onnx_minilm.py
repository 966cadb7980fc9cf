"""MiniLM as an int8 ONNX Runtime model: exported from the shipped weights, quantized, checked against fp32, cached.

`build()` exports all-MiniLM-L6-v2 (transformer + mean pooling + L2 norm, one graph) with `torch.onnx.export`,
quantizes its weights to int8 (onnxruntime's dynamic quantization, per channel), and embeds a probe set with both
it and the PyTorch fp32 embedder: the artifact is published only with its check result, and `OnnxEmbedder` is
usable only when the mean cosine over the probes is at least the bound and no probe falls below MIN_COSINE_FLOOR.
Artifacts are versioned folders under `<models_dir>/onnx-minilm/`, written whole in one rename (artifacts.py); each
keeps a sample of its probes with their fp32 vectors, re-embedded at every load, so a corrupt or foreign file is
caught without loading torch. Batches are sorted by token length (little padding) and run on every core.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .artifacts import created_now, new_version, publish_dir, sha256_of
from .gate import PriorityGate
from .minilm import default_model_path

ONNX_DIRNAME = "onnx-minilm"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
PROBES_FILE = "probes.npz"
KIND = "onnx-int8"
NAME = "all-MiniLM-L6-v2-onnx-int8"
DEFAULT_MIN_COSINE = 0.98   # mean cosine to fp32 over the probe set, below which the model is not used
MIN_COSINE_FLOOR = 0.90     # and no single probe may fall below this
PROBE_TEXTS = 256           # from the shipped training data, plus EDGE_TEXTS
LOAD_PROBES = 24            # re-checked at every load
BATCH = 32                  # texts per ONNX run: measured faster than 128 on 2 cores (bench/embedders.py)
OPSET = 17
EDGE_TEXTS = (
    "!!!", "?", "HELP MY CARD IS BLOCKED AND I CANNOT PAY ANYTHING RIGHT NOW!!!",
    "Ma carte a été volée hier soir, que dois-je faire ?", "card " * 300,
    "I was charged twice for the same purchase at the supermarket yesterday, please refund one of them",
)


class OnnxUnusable(RuntimeError):
    """The artifact is missing, corrupt, built from other weights, or failed its check against fp32."""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def weights_sha(model_path: str | Path | None = None) -> str:
    return sha256_of(Path(model_path or default_model_path()) / "model.safetensors")


def probe_texts(n: int = PROBE_TEXTS, seed: int = 0) -> list[str]:
    """A seeded sample of the shipped BANKING77 texts plus edge cases (punctuation only, shouting, French, a text
    past the 256-token limit)."""
    import csv

    from ..resources import data_dir

    with (data_dir() / "banking77" / "train.csv").open(newline="", encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    rng = np.random.default_rng(seed)
    return [rows[i] for i in rng.choice(len(rows), min(n, len(rows)), replace=False)] + list(EDGE_TEXTS)


def cosine_check(vecs: np.ndarray, ref: np.ndarray, min_cosine: float) -> dict:
    cos = np.sum(np.asarray(vecs, np.float64) * np.asarray(ref, np.float64), axis=1)
    mean, low = float(cos.mean()), float(cos.min())
    return {"mean_cosine": round(mean, 5), "min_cosine": round(low, 5), "probes": len(cos),
            "bound_mean": min_cosine, "bound_min": MIN_COSINE_FLOOR,
            "passed": bool(mean >= min_cosine and low >= MIN_COSINE_FLOOR)}


def _pooled(model):
    """Transformer + mean pooling over the attention mask + L2 norm: sentence-transformers' MiniLM pipeline."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(v, p=2, dim=1)

    return Pooled(model).eval()


def export_int8(model_path: str, out: Path, scratch: Path) -> None:
    """fp32 ONNX export of the pooled model, then dynamic int8 quantization of its weights into `out`."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path, local_files_only=True).to("cpu").eval()
    ids = torch.ones(2, 8, dtype=torch.long)
    fp32 = scratch / "fp32.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        torch.onnx.export(_pooled(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(fp32),
                          input_names=list(axes), output_names=["embedding"],
                          dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    # per channel, full range: the mean cosine to fp32 was 0.993 (0.89 with reduce_range, 0.968 per tensor)
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False)
    fp32.unlink()


def _rate(encode, texts: list[str], batch: int) -> float:
    encode(texts[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        encode(texts[i:i + batch])
    return round(len(texts) / (time.perf_counter() - t0), 1)


def build(models_dir: str | Path, reference, *, min_cosine: float = DEFAULT_MIN_COSINE,
          model_path: str | None = None, log=None) -> Path:
    """Export, quantize and check an int8 MiniLM against `reference` (the PyTorch fp32 embedder); publish it under
    `<models_dir>/onnx-minilm/<version>/` with the check and both embedders' measured rates in meta.json. It is
    published even when the check fails (so the next start does not rebuild it), marked unusable."""
    model_path = str(model_path or default_model_path())
    version = new_version(KIND)
    final = Path(models_dir) / ONNX_DIRNAME / version
    t0 = time.perf_counter()
    texts = probe_texts()
    with publish_dir(final) as tmp:
        export_int8(model_path, tmp / MODEL_FILE, tmp)
        (tmp / TOKENIZER_FILE).write_bytes((Path(model_path) / TOKENIZER_FILE).read_bytes())
        (tmp / "meta.json").write_text(json.dumps({"max_seq_length": _max_seq_length(model_path)}))
        built_s = time.perf_counter() - t0
        ref = reference.encode(texts)
        onnx = OnnxEmbedder(tmp, verify=False)
        check = cosine_check(onnx.encode(texts), ref, min_cosine)
        # same texts, same batch, one after the other: which is faster on this machine ("auto" picks by it)
        rates = {"onnx_int8_texts_per_s": _rate(onnx.encode, texts, BATCH),
                 "torch_fp32_texts_per_s": _rate(reference.encode, texts, BATCH), "batch": BATCH}
        pick = np.random.default_rng(1).choice(len(texts) - len(EDGE_TEXTS), LOAD_PROBES - len(EDGE_TEXTS),
                                               replace=False)
        idx = np.concatenate([pick, np.arange(len(texts) - len(EDGE_TEXTS), len(texts))])
        np.savez(tmp / PROBES_FILE, texts=np.array([texts[i] for i in idx]), fp32=ref[idx])
        meta = {"version": version, "kind": KIND, "created_at": created_now(), "source": model_path,
                "source_sha256": weights_sha(model_path), "model_sha256": sha256_of(tmp / MODEL_FILE),
                "max_seq_length": onnx.max_len, "opset": OPSET, "check": check, "rates": rates,
                "quantization": "dynamic int8 weights, per channel (onnxruntime.quantization.quantize_dynamic)",
                "onnxruntime": _ort_version(), "torch": _torch_version(), "machine": platform.machine(),
                "build_seconds": round(built_s, 1)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if log is not None:
        log.info("embedder.onnx_built", path=str(final), **check, **rates, seconds=round(time.perf_counter() - t0, 1))
    return final


def latest(models_dir: str | Path, model_path: str | None = None) -> Path | None:
    """Newest complete artifact built from these weights (another MiniLM's artifacts are never picked)."""
    root = Path(models_dir) / ONNX_DIRNAME
    want = weights_sha(model_path)
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / MODEL_FILE).is_file():
            continue
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source_sha256") == want:
            found.append((str(meta.get("created_at", "")), d.name, d))
    return max(found)[2] if found else None


def _max_seq_length(model_path: str) -> int:
    """The truncation length sentence-transformers uses for these weights (256 for all-MiniLM-L6-v2)."""
    try:
        return int(json.loads((Path(model_path) / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        return 256


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:
        return ""


class OnnxEmbedder:
    """Same contract as `Embedder`: `.encode(texts)` -> L2-normalised float32 (n, 384), `.name`, `.dim`.

    With `verify` (the default) it refuses (OnnxUnusable) an artifact whose check failed, whose file does not
    hash to what was built, or whose stored probes no longer embed within the bound of their fp32 vectors."""

    def __init__(self, path: str | Path, *, verify: bool = True, threads: int | None = None,
                 batch_size: int = BATCH):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.name = NAME
        self.dim = 384
        self.batch_size = batch_size
        self.meta: dict = {}
        if not (self.path / MODEL_FILE).is_file():
            raise OnnxUnusable(f"no {MODEL_FILE} in {self.path}")
        try:
            self.meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            if verify:
                raise OnnxUnusable(f"unreadable meta.json in {self.path}: {exc}") from exc
        if verify:
            check = self.meta.get("check") or {}
            if not check.get("passed"):
                raise OnnxUnusable(f"failed its check against fp32 at build: mean cosine {check.get('mean_cosine')} "
                                   f"(bound {check.get('bound_mean')}), min {check.get('min_cosine')} "
                                   f"(floor {check.get('bound_min')})")
            if sha256_of(self.path / MODEL_FILE) != self.meta.get("model_sha256"):
                raise OnnxUnusable(f"{MODEL_FILE} in {self.path} does not match the sha256 recorded at build")
        so = ort.SessionOptions()
        self.threads = threads or cores()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # ONNX Runtime's pool spins between runs by default, on the cores the event loop (dedup, route, Redis
        # replies) needs: in the worker that cost ~20% (calm 20,000 --fast: 196-208 -> 245-249 tickets/s).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(self.path / MODEL_FILE), so, providers=["CPUExecutionProvider"])
            self._tok = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        except Exception as exc:  # onnxruntime and tokenizers raise their own types for a corrupt file
            raise OnnxUnusable(f"cannot load {self.path}: {type(exc).__name__}: {exc}") from exc
        self.max_len = int(self.meta.get("max_seq_length") or 256)
        self._tok.enable_truncation(self.max_len)
        self._tok.no_padding()
        # one run at a time when a run uses several threads (two would fight over the cores), urgent callers first
        # (models/gate.py); with one thread each run computes on its caller's thread alone, so callers on other
        # threads (ROUTING_ENRICH_RUNNERS) run side by side
        self._gate = PriorityGate() if self.threads > 1 else None
        if verify:
            self._verify_probes()

    def _verify_probes(self) -> None:
        try:
            with np.load(self.path / PROBES_FILE) as z:
                texts, ref = [str(t) for t in z["texts"]], z["fp32"]
        except (OSError, ValueError, KeyError) as exc:
            raise OnnxUnusable(f"unreadable {PROBES_FILE} in {self.path}: {exc}") from exc
        bound = float((self.meta.get("check") or {}).get("bound_mean", DEFAULT_MIN_COSINE))
        check = cosine_check(self.encode(texts), ref, bound)
        if not check["passed"]:
            raise OnnxUnusable(f"its stored probes embed off their fp32 vectors now: mean cosine "
                               f"{check['mean_cosine']}, min {check['min_cosine']}")

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, urgent=False)

    def encode_now(self, texts: list[str]) -> np.ndarray:
        """`encode` for an urgent lane's batch, which must not wait for a full batch in progress. Fewer texts than
        one run start at once beside the run in progress (both share the cores); a run's worth or more waits for the
        run in progress and then goes before the full batch's next run, with the cores to itself (models/gate.py).
        `python bench/lane_embed.py` measures both ways per batch size."""
        return self._encode(texts, urgent=True)

    def _encode(self, texts: list[str], urgent: bool, gated: bool | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if gated is None:
            gated = not urgent or len(texts) >= self.batch_size
        gate = self._gate if gated else None
        encs = self._tok.encode_batch([str(t) for t in texts])
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding per run
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, j in enumerate(idx):
                n = int(lengths[j])
                ids[row, :n] = encs[j].ids
                mask[row, :n] = 1
            with gate.hold(urgent) if gate else contextlib.nullcontext():
                out[idx] = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                                    "token_type_ids": np.zeros_like(ids)})[0]
        return out


__all__ = ["OnnxEmbedder", "OnnxUnusable", "build", "latest", "probe_texts", "cosine_check", "KIND", "NAME",
           "DEFAULT_MIN_COSINE", "MIN_COSINE_FLOOR", "ONNX_DIRNAME"]
