"""The agent's work loop: heats in, predictions and weight deltas out.

All state changes happen on the thread that calls ``run``; paho's network thread only
fills the inbox. A bad message is logged with its reason and dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque

import numpy as np
import torch

from agent.champion import Verdict, judge
from agent.continual import local_finetune
from agent.dataset import HeatTable
from agent.evaluation import mae_by_target
from agent.mqtt_link import MqttLink
from agent.settings import AgentSettings
from agent.sim import Heat
from agent.site_learning import DriftEvent, SiteLearner
from agent.sources import HeatSource
from agent.trainer import TrainConfig, train_delta
from broker.codec import DecodeError, Limits
from broker.schemas import (
    Envelope,
    MetricsBody,
    ModelBody,
    PredictionBody,
    StatusBody,
    TaskBody,
    UpdateBody,
    decode,
    message,
)
from broker.signing import SignatureError, load_public_key, verify_model
from broker.topics import Topics
from models.onnx_export import export_onnx
from models.onnx_runtime import OnnxPredictor
from models.params import set_weights
from models.regressor import build_model
from models.spec import ModelSpec

log = logging.getLogger("alchimia.agent")
SOFTWARE = "alchimia-agent/0.1"


class Agent:
    def __init__(self, settings: AgentSettings, source: HeatSource) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.topics = Topics(settings.federation)
        self.source = source
        self.limits = Limits(max_message_bytes=settings.max_model_bytes)
        self.model_key = (load_public_key(settings.model_public_key)
                          if settings.model_public_key else None)
        self.models_rejected = 0
        self.table: HeatTable | None = None
        self.spec: ModelSpec | None = None
        self.predictor: OnnxPredictor | None = None  # the latest global model
        self.serving: OnnxPredictor | None = None  # the champion: makes the predictions
        self.serving_version: int | None = None
        self.recent: deque[tuple[np.ndarray, np.ndarray]] = deque(
            maxlen=settings.challenger_heats)
        self.challengers_rejected = 0
        self.learner: SiteLearner | None = None
        self.serving_local = False  # serving a site-specific fine-tune after a drift
        self.base_weights: dict[str, np.ndarray] | None = None
        self.model_version: int | None = None
        self.task: TaskBody | None = None
        self.rounds_done: set[int] = set()
        self.updates_sent = 0
        self._history: list[Heat] = []
        self._waiting: list[Heat] = []
        self._reported_version: int | None = None
        self.link = MqttLink(
            settings, f"{settings.federation}-{self.id}",
            will=(self.topics.agent_status(self.id), self._status("offline")),
            birth=lambda: (self.topics.agent_status(self.id), self._status("online")),
            subscriptions=[self.topics.model_current, self.topics.round_current],
        )

    def _status(self, state: str) -> bytes:
        samples = self.table.n_train if self.table else 0
        return message(self.id, StatusBody(role="agent", state=state, software=SOFTWARE,
                                           samples=samples, capabilities=["train", "predict"],
                                           model_version=self.model_version))

    def run(self, stop: threading.Event) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        self._history = self.source.history()
        self.link.start()
        log.info("agent %s started (federation %s, %d heats of history)", self.id,
                 self.settings.federation, len(self._history))
        try:
            while not stop.is_set():
                try:
                    topic, payload = self.link.inbox.get(timeout=0.2)
                    self.handle(topic, payload)
                except queue.Empty:
                    pass
                self._step()
        finally:
            self.link.stop(last=(self.topics.agent_status(self.id), self._status("offline")))
            self.source.close()

    def _step(self) -> None:
        """Ingest and train; a failure is logged and retried next time, never fatal."""
        try:
            self._ingest()
            self._maybe_train()
        except Exception:  # the store or training failed: the plant's gateway keeps running
            log.exception("agent %s: ingest or training failed; retrying", self.id)

    # -- inbound
    def handle(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            if topic == self.topics.model_current:
                self._on_model(decode(payload, ModelBody, self.limits))
            elif topic == self.topics.round_current:
                env = decode(payload, TaskBody, self.limits)
                self.task = env.body  # type: ignore[assignment]
            else:
                # amqtt (the embedded broker) hands a new session the retained messages of
                # every other client's subscriptions; Mosquitto never sends these.
                log.debug("message on unexpected topic %s ignored", topic)
        except (DecodeError, ValueError) as exc:
            log.warning("rejected message on %s: %s", topic, exc)
        except Exception as exc:  # e.g. ONNX Runtime refusing a model's bytes
            log.warning("rejected message on %s: %s: %s", topic, type(exc).__name__, exc)

    def _on_model(self, env: Envelope) -> None:
        body: ModelBody = env.body  # type: ignore[assignment]
        if self.model_version is not None and body.version == self.model_version:
            return
        if self.model_key is not None:
            try:
                verify_model(body, self.model_key)
            except SignatureError as exc:
                self._report_rejected_model(body.version, str(exc))
                return
        spec = ModelSpec.model_validate(body.spec)
        predictor = OnnxPredictor(body.onnx, spec.features, spec.targets)
        shapes = {k: v.shape for k, v in body.weights.items()}
        if shapes != spec.parameter_shapes():
            raise ValueError("model weights do not match its spec")
        # Adopt only after everything above succeeded: a broken model never gets in.
        self.spec, self.predictor = spec, predictor
        self.base_weights, self.model_version = body.weights, body.version
        if self.table is None or self.table.features != spec.features:
            self.table = HeatTable(spec.features, spec.targets)
            self.learner = SiteLearner(spec.features, spec.targets, spec.y_scale,
                                       seed=self.settings.seed)
            for heat in self._history:
                self.table.add(heat.inputs, heat.outcome)
                self.learner.observe(self.table.row(heat.inputs),
                                     self.table.outcome_row(heat.outcome), None)
        self._champion_or_challenger(predictor, body)
        self._report_validation()
        self.link.publish(self.topics.agent_status(self.id), self._status("online"), retain=True)

    def _champion_or_challenger(self, challenger: OnnxPredictor, body: ModelBody) -> None:
        """Serve the new global version unless it is clearly worse on the latest heats.

        An admin rollback always serves: it is a deliberate decision, not a candidate.
        """
        assert self.spec is not None
        if "rollback_of" in body.metadata:
            verdict = Verdict(True, f"admin rollback to version {body.metadata['rollback_of']}")
        elif self.serving is None or not self.recent:
            verdict = Verdict(True, "no serving model or no recent heats to judge on")
        else:
            x, y = self._recent_arrays()
            verdict = judge(self.serving.predict(x), challenger.predict(x), y,
                            np.asarray(self.spec.y_scale), self.settings.challenger_tolerance,
                            self.settings.challenger_min_heats)
        if not verdict.swap:
            self.challengers_rejected += 1
            log.warning("agent %s keeps serving version %s, not %d: %s", self.id,
                        self.serving_version, body.version, verdict.reason)
            values = {"champion_error": verdict.champion_error or 0.0,
                      "challenger_error": verdict.challenger_error or 0.0,
                      "serving_version": float(self.serving_version or 0)}
            self.link.publish(self.topics.agent_metrics(self.id), message(self.id, MetricsBody(
                model_version=body.version, scope="challenger_rejected", values=values)))
            return
        self.serving, self.serving_version, self.serving_local = challenger, body.version, False
        log.info("agent %s now serves model version %d (%s)", self.id, body.version,
                 verdict.reason)

    def _recent_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The latest heats' features and outcomes, oldest first."""
        return (np.stack([r[0] for r in self.recent]), np.stack([r[1] for r in self.recent]))

    def _report_rejected_model(self, version: int, reason: str) -> None:
        """Keep serving the current model and tell the coordinator's admins why."""
        self.models_rejected += 1
        log.error("agent %s rejected model version %d: %s; still serving version %s",
                  self.id, version, reason, self.model_version)
        body = MetricsBody(model_version=version, scope="model_rejected",
                           values={"rejected_version": float(version)})
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    # -- data
    def _ingest(self) -> None:
        self._waiting += self.source.poll()
        if not self._waiting or self.table is None:
            return  # heats wait for the first model, which brings the column layout
        heats, self._waiting = self._waiting, []
        xs = np.stack([self.table.row(h.inputs) for h in heats])
        preds: np.ndarray | list[None] = [None] * len(heats)
        if self.serving is not None and self.serving_version is not None:
            # Test first: each prediction goes out before the heat is learned from.
            preds = self.serving.predict(xs)
            for heat, pred in zip(heats, preds, strict=True):
                body = PredictionBody(heat_id=heat.heat_id, model_version=self.serving_version,
                                      outputs=dict(zip(self.table.targets, map(float, pred),
                                                       strict=True)))
                self.link.publish(self.topics.agent_predictions(self.id), message(self.id, body))
        drift = None
        for heat, x, pred in zip(heats, xs, preds, strict=True):
            y = self.table.outcome_row(heat.outcome)
            self.table.add(heat.inputs, heat.outcome)
            self.recent.append((x, y))
            if self.learner is not None and self.settings.continual:
                drift = self.learner.observe(x, y, pred) or drift
        self._report_prequential()
        if drift is not None:
            self._on_drift(drift)
        if self._reported_version != self.model_version:
            self._report_validation()

    def _report_prequential(self) -> None:
        if self.learner is None or self.learner.prequential.n == 0:
            return
        values = {k: v for k, v in self.learner.prequential.snapshot().items()
                  if np.isfinite(v)}
        body = MetricsBody(model_version=self.serving_version, scope="prequential",
                           values=values)
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    def _on_drift(self, event: DriftEvent) -> None:
        """Adapt on site at once, and ask the federation for an early round."""
        log.warning("agent %s detected drift: errors %s, inputs %s", self.id,
                    list(event.error_targets), list(event.input_features))
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, MetricsBody(
            model_version=self.serving_version, scope="drift", values=event.values())))
        if self.spec is None or self.base_weights is None or len(self.recent) < 5:
            return
        x, y = self._recent_arrays()
        replay = self.learner.replay_rows(self.settings.replay_rows) if self.learner else None
        weights = local_finetune(self.spec, self.base_weights, x, y, replay=replay,
                                 seed=len(self.recent))
        model = build_model(self.spec)
        set_weights(model, weights)
        self.serving = OnnxPredictor(export_onnx(model), self.spec.features, self.spec.targets)
        self.serving_local = True
        log.info("agent %s serves a site fine-tune of version %s on %d recent heats",
                 self.id, self.serving_version, len(x))

    def _report_validation(self) -> None:
        if self.table is None or self.predictor is None:
            return
        x, y = self.table.validation()
        if len(x) == 0:
            return
        self._reported_version = self.model_version
        values = mae_by_target(self.predictor.predict(x), y, self.table.targets)
        values["n"] = float(len(x))
        body = MetricsBody(model_version=self.model_version, scope="validation", values=values)
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    # -- training
    def _maybe_train(self) -> None:
        task = self.task
        if (
            task is None or task.state != "open" or self.id not in task.selected
            or task.round_id in self.rounds_done or self.model_version != task.base_version
            or self.table is None or self.table.n_train == 0 or self.spec is None
            or self.base_weights is None
        ):
            return
        x, y = self.table.train()
        replay = None
        if self.settings.continual and self.learner is not None:
            x, y = x[-self.settings.train_window:], y[-self.settings.train_window:]
            replay = self.learner.replay_rows(self.settings.replay_rows)
        cfg = TrainConfig(epochs=task.epochs, lr=task.lr, batch_size=task.batch_size,
                          proximal_mu=task.hyper.get("proximal_mu", 0.0), seed=task.round_id,
                          ewc_lambda=self.settings.ewc_lambda)
        delta, metrics = train_delta(self.spec, self.base_weights, x, y, cfg, replay=replay)
        body = UpdateBody(round_id=task.round_id, base_version=task.base_version,
                          num_samples=len(x), delta=delta, metrics=metrics)
        self.link.publish(self.topics.agent_update(self.id), message(self.id, body))
        self.rounds_done.add(task.round_id)
        self.updates_sent += 1
        log.info("agent %s sent update for round %d (%d heats, loss %.4f)", self.id,
                 task.round_id, len(x), metrics["train_loss"])
