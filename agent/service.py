"""The agent's work loop: heats in, predictions and weight deltas out.

All state changes happen on the thread that calls ``run``; paho's network thread only
fills the inboxes. A bad message is logged with its reason and dropped. Requests from
consumers (``agent.requests``) are answered on a thread of their own from an immutable
snapshot of what the site serves (``ServingState``), replaced by the work loop at every
change, so a request never waits behind training.

The one exception is a secure round (docs/PROTOCOL.md, "Secure aggregation"): its roster,
inbox and unmask are answered on paho's network thread as they come, so the exchange of
shares goes on while the work loop trains; the round's ``SecaggClient`` is shared by both
threads under ``_secagg_lock``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, TypeVar

import numpy as np
import torch

from alchimia.agent.ingest.pipeline import StorePipeline
from alchimia.agent.ingest.sources import HeatSource
from alchimia.agent.learn.calibrating import SiteCalibrator
from alchimia.agent.learn.champion import Verdict, judge
from alchimia.agent.learn.compression import UpdateCompressor
from alchimia.agent.learn.dataset import HeatTable
from alchimia.agent.learn.evaluation import mae_by_target
from alchimia.agent.learn.outcomes import drift_point, prediction_points
from alchimia.agent.learn.privacy import UpdatePrivatizer
from alchimia.agent.learn.serving import ServingFiles
from alchimia.agent.learn.site_learning import DriftEvent, SiteLearner, SitePolicy
from alchimia.agent.learn.trainer import TrainConfig, train_delta
from alchimia.agent.metrics import AgentCollector
from alchimia.agent.mqtt_link import MqttLink
from alchimia.agent.records import Heat
from alchimia.agent.requests import SERVICES, RequestLimits, Responder, Service, ServingState
from alchimia.agent.secagg_client import SecaggClient
from alchimia.agent.settings import AgentSettings
from alchimia.agent.store import Point
from alchimia.broker.codec import DecodeError, Limits
from alchimia.broker.metrics_http import serve_metrics
from alchimia.broker.rejections import RejectionLog
from alchimia.broker.schemas import (
    Body,
    Envelope,
    MetricsBody,
    ModelBody,
    PredictionBody,
    SchemaError,
    SecaggInboxBody,
    SecaggRosterBody,
    SecaggUnmaskBody,
    StatusBody,
    TaskBody,
    UpdateBody,
    body_of,
    decode,
    message,
)
from alchimia.broker.secagg import EncodingError
from alchimia.broker.signing import SignatureError, load_public_key, verify_model, verify_task
from alchimia.broker.topics import Topics
from alchimia.models.onnx_build import build_onnx
from alchimia.models.onnx_runtime import OnnxPredictor
from alchimia.models.params import Weights
from alchimia.models.power_on import TARGET as POWER_ON
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.spec import ModelSpec

log = logging.getLogger("alchimia.agent")
SOFTWARE = "alchimia-agent/0.1"
POWER_ON_REFIT_HEATS = 50  # new heats after which the power-on estimate is re-fitted
POWER_ON_ROWS = 2000  # newest training heats it is fitted on
HISTORY_RETRY_S = 5.0  # between tries to read the history while the store does not answer
T = TypeVar("T")


class Agent:
    def __init__(self, settings: AgentSettings, source: HeatSource) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.topics = Topics(settings.federation)
        self.source = source
        # Where predictions, errors and drift events are written beside the sensor data.
        self.store = source.store if isinstance(source, StorePipeline) else None
        self.limits = Limits(max_message_bytes=settings.max_model_bytes)
        self.model_key = (
            load_public_key(settings.model_public_key) if settings.model_public_key else None
        )
        self.models_rejected = 0
        # Every message refused, counted by reason (docs/PROTOCOL.md, "Rejections"), and
        # every step of the work loop that failed, by step: both logged bounded.
        self.rejections = RejectionLog(log)
        self.step_failures = RejectionLog(log, what="failed steps")
        self.validation: dict[str, float] | None = None  # latest figures, of _reported_version
        self.table: HeatTable | None = None
        self.spec: ModelSpec | None = None
        # The latest global version with this site's part: validated, judged as challenger.
        self.predictor: OnnxPredictor | None = None
        self.serving: OnnxPredictor | None = None  # the champion: makes the predictions
        self.serving_version: int | None = None
        self.serving_shared: Weights | None = None  # the champion's shared part
        self.site_weights: Weights | None = None  # this site's own tensors: never sent
        self.files = ServingFiles(settings.state_dir / self.id / "serving")
        self.new_heats = 0  # heats learned of since the last update sent
        self._status_sent_at = 0.0
        self.recent: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=settings.challenger_heats)
        self.challengers_rejected = 0
        self.learner: SiteLearner | None = None
        self.base_weights: dict[str, np.ndarray] | None = None
        self.model_version: int | None = None
        self.task: TaskBody | None = None
        self.rounds_done: set[int] = set()
        self.updates_sent = 0
        self.compressor = UpdateCompressor()  # the task's codec, with error feedback
        self.privatizer = UpdatePrivatizer()  # the task's DP clipping and noise, if any
        # The secure round this agent takes part in, if any: driven by the work loop (keys,
        # delta) and by paho's thread (roster, inbox, unmask), always under the lock.
        self.secagg: SecaggClient | None = None
        self._secagg_lock = threading.Lock()
        self._history: list[Heat] | None = None  # until the source's store answers
        self._history_retry_at = 0.0
        self._waiting: list[Heat] = []
        self._reported_version: int | None = None
        # Decision support: calibrated intervals, the planned power-on time, requests.
        self.calibrator: SiteCalibrator | None = None
        self.power_on: PowerOnEstimate | None = None
        self.typical_charge: dict[str, float] | None = None  # refreshed with power_on
        self._power_on_due = 0  # heats learned of since the power-on estimate was fitted
        self._calibration_saved = 0  # calibrator.added when calibration.json was written
        self._calibration_sent_at = 0.0
        self.state: ServingState | None = None  # what requests are answered with
        self.responder = Responder(
            self.id,
            self.topics,
            self.services(),
            RequestLimits(settings.max_request_bytes, settings.max_request_heats),
        )
        self.link = MqttLink(
            settings,
            f"{settings.federation}-{self.id}",
            will=(self.topics.agent_status(self.id), self._status("offline")),
            birth=lambda: (self.topics.agent_status(self.id), self._status("online")),
            subscriptions=[self.topics.model_current, self.topics.round_current],
            request_topics=self.responder.request_topics,
            direct={
                self.topics.round_secagg: self.handle_secagg,
                self.topics.round_secagg_inbox(self.id): self.handle_secagg,
            },
        )

    def services(self) -> list[Service]:
        """The request/response services this agent answers (agent.requests: the
        extension point; each gets ``agents/{id}/{name}/request``)."""
        return list(SERVICES)

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        samples = self.table.n_train if self.table else 0
        current = self._reported_version == self.model_version  # validation of this version
        return message(
            self.id,
            StatusBody(
                role="agent",
                state=state,
                software=SOFTWARE,
                samples=samples,
                capabilities=["train", "predict", *self.responder.services],
                model_version=self.model_version,
                new_heats=self.new_heats,
                serving_version=self.serving_version,
                models_rejected=self.models_rejected,
                drift_events=self.learner.drift_events if self.learner else None,
                validation=self.validation if current else None,
                prequential=self._prequential(),
            ),
        )

    def _publish_status(self) -> None:
        self._status_sent_at = time.monotonic()
        self.link.publish(self.topics.agent_status(self.id), self._status("online"), retain=True)

    def run(self, stop: threading.Event) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        # Connect first: the history is read by the work loop once the store answers
        # (InfluxDB may be down), and the agent serves and spools meanwhile.
        self.link.start()
        log.info("agent %s started (federation %s)", self.id, self.settings.federation)
        answering = threading.Thread(
            target=self._answer_requests, args=(stop,), name=f"{self.id}-requests", daemon=True
        )
        answering.start()
        metrics = serve_metrics(AgentCollector(self), self.settings)
        try:
            while not stop.is_set():
                try:
                    topic, payload = self.link.inbox.get(timeout=0.2)
                    self.handle(topic, payload)
                except queue.Empty:
                    pass
                self._step()
        finally:
            if metrics is not None:
                metrics.close()
            answering.join(timeout=5)
            self._save_calibration()
            self.link.stop(last=(self.topics.agent_status(self.id), self._status("offline")))
            self.source.close()
            if self.store is not None:
                # SIGTERM included: what is spooled goes to InfluxDB now (at most 10 s, 1 s
                # during an outage); what cannot stays spooled for the next start.
                self.store.close()

    def _answer_requests(self, stop: threading.Event) -> None:
        """The request thread: answer each request from the latest serving snapshot;
        report the counts (``requests`` metrics) at most every status interval."""
        sent: dict[str, int] = {}
        sent_at = 0.0
        while not stop.is_set():
            try:
                topic, payload = self.link.requests.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                try:
                    reply = self.responder.handle(topic, payload, self.state)
                    if reply is not None:
                        self.link.publish(reply.topic, reply.payload)
                except Exception:  # handle() never raises; publishing must not kill this
                    log.exception("agent %s: answering a request failed", self.id)
            counts = dict(self.responder.counts)
            if self.link.requests_dropped:
                counts["dropped"] = self.link.requests_dropped
            if counts != sent and time.monotonic() - sent_at >= self.settings.status_interval_s:
                sent, sent_at = counts, time.monotonic()
                body = MetricsBody(
                    model_version=self.serving_version,
                    scope="requests",
                    values={k: float(v) for k, v in counts.items()},
                )
                self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    def _step(self) -> None:
        """Read the history (once), ingest and train; a failure is counted, logged and
        retried next time, never fatal: the plant's gateway keeps running."""
        self.rejections.tick()
        self.step_failures.tick()
        if self._history is None and not self._guarded("history", self._load_history):
            return  # the store does not answer yet: serve what there is
        self._guarded("ingest", self._ingest)
        self._guarded("secagg_keys", self._join_secure_round)  # before training: keys at once
        self._guarded("train", self._maybe_train)

    def _guarded(self, step: str, run: Callable[[], T]) -> T | None:
        """``run()``, or None if it failed: counted under ``step`` (``step_failures``) and
        logged with its traceback (bounded), so the steps after it still run."""
        try:
            return run()
        except Exception as exc:
            self.step_failures.reject(
                step,
                "agent %s: %s failed (%s: %s); retrying",
                self.id,
                step,
                type(exc).__name__,
                exc,
                level=logging.ERROR,
                exc_info=True,
            )
            return None

    def _load_history(self) -> bool:
        """Read the heats finished before the agent started; True once done. While the
        source's store does not answer, retried every ``HISTORY_RETRY_S`` (the source
        keeps spooling what arrives). A model adopted before is taught them now."""
        now = time.monotonic()
        if now < self._history_retry_at:
            return False
        try:
            history = self.source.history()
        except Exception as exc:  # the store is down: not fatal, and no traceback needed
            self._history_retry_at = now + HISTORY_RETRY_S
            self.step_failures.reject(
                "history",
                "agent %s cannot read its history yet (%s: "
                "%s); serving meanwhile, retrying every %.0f s",
                self.id,
                type(exc).__name__,
                exc,
                HISTORY_RETRY_S,
            )
            return False
        self._history = history
        log.info("agent %s read %d heats of history", self.id, len(history))
        if self.table is not None and history:
            for heat in history:
                self._remember(heat, None)
            self.new_heats += len(history)
            if (
                self.serving is not None
                and self.serving_version is not None
                and self.serving_shared is not None
            ):
                self._serve(self.serving, self.serving_version, self.serving_shared)
            self._report_validation()
            self._publish_status()  # there is data to learn from now
        return True

    # -- inbound
    def handle(self, topic: str, payload: bytes | bytearray) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            if topic == self.topics.model_current:
                self._on_model(decode(payload, ModelBody, self.limits))
            elif topic == self.topics.round_current:
                self._on_task(body_of(decode(payload, TaskBody, self.limits), TaskBody))
            elif topic in (self.topics.round_secagg, self.topics.round_secagg_inbox(self.id)):
                self.handle_secagg(topic, payload)  # (the link hands these over directly)
            else:
                # amqtt (the embedded broker) hands a new session the retained messages of
                # every other client's subscriptions; Mosquitto never sends these.
                log.debug("message on unexpected topic %s ignored", topic)
        except DecodeError as exc:
            code = "schema" if isinstance(exc, SchemaError) else "malformed"
            self.rejections.reject(code, "rejected message on %s: %s", topic, exc)
        except SignatureError as exc:
            self.rejections.reject("bad_signature", "rejected message on %s: %s", topic, exc)
        except ValueError as exc:  # pydantic's ValidationError of a spec included
            self.rejections.reject("invalid", "rejected message on %s: %s", topic, exc)
        except Exception as exc:  # e.g. ONNX Runtime refusing a model's bytes
            self.rejections.reject(
                "unusable", "rejected message on %s: %s: %s", topic, type(exc).__name__, exc
            )

    def _on_model(self, env: Envelope) -> None:
        body = body_of(env, ModelBody)
        if self.model_version is not None and body.version == self.model_version:
            return
        if self.model_version is not None and body.version < self.model_version:
            # Versions only go forward (an admin rollback is a new version): an older model,
            # however genuinely signed, is a replay and would stall every round.
            self._report_rejected_model(
                body.version,
                "model_older",
                f"version {body.version} "
                f"is older than version {self.model_version} already "
                "adopted",
            )
            return
        if self.model_key is not None:
            try:
                verify_model(body, self.model_key)
            except SignatureError as exc:
                self._report_rejected_model(body.version, "model_signature", str(exc))
                return
        spec = ModelSpec.model_validate(body.spec)
        unfit = self.source.contract.check(spec.features, spec.targets)
        if unfit is not None:  # it would fail on every heat of this site
            self._report_rejected_model(body.version, "model_contract", unfit)
            return
        predictor = OnnxPredictor(body.onnx, spec.features, spec.targets)
        shapes = {k: v.shape for k, v in body.weights.items()}
        if shapes != spec.parameter_shapes():
            raise ValueError("model weights do not match its spec")
        # Adopt only after everything above succeeded: a broken model never gets in.
        if self.spec != spec:
            self.site_weights = self.files.load_site(spec)  # None: start from zeros
        self.spec = spec
        self.base_weights, self.model_version = body.weights, body.version
        self.compressor.follow(body.version, body.parent_version, body.round_id)
        if self.table is None or (self.table.features, self.table.targets) != (
            spec.features,
            spec.targets,
        ):
            self.table = HeatTable(spec.features, spec.targets)
            self.calibrator = SiteCalibrator(
                spec.targets, self.settings.interval_level, self.settings.calibration_window
            )
            self.power_on, self.typical_charge = None, None
            self.learner = SiteLearner(
                spec.features, spec.targets, spec.y_scale, self.policy(), seed=self.settings.seed
            )
            for heat in self._history or ():
                self._remember(heat, None)
            self.new_heats = len(self._history or ())
        # What this site would serve: the new shared part with its own site part.
        self.predictor = self._site_predictor(body.weights, predictor)
        self._champion_or_challenger(self.predictor, body)
        self._report_validation()
        self._publish_status()

    def _site_predictor(
        self,
        shared: Weights,
        global_model: OnnxPredictor | None = None,
    ) -> OnnxPredictor:
        """ONNX Runtime over the shared weights with this site's tensors; an architecture
        without site tensors serves the global model as it came."""
        assert self.spec is not None
        if not self.spec.parameter_shapes("site") and global_model is not None:
            return global_model
        return OnnxPredictor(
            build_onnx(self.spec, shared, self.site_weights), self.spec.features, self.spec.targets
        )

    def _serve(self, predictor: OnnxPredictor, version: int, shared: Weights) -> None:
        """Swap the serving model and write it where the plant's tools find it, with its
        calibration (on the held-out heats) and the site's power-on estimate."""
        assert self.spec is not None
        self.serving, self.serving_version, self.serving_shared = predictor, version, shared
        self.files.save_model(version, self.spec, predictor.onnx_bytes)
        if self.calibrator is not None:
            regime = self.learner.regime_start if self.learner is not None else 1
            used = self.calibrator.reset(predictor.predict, version, regime)
            log.info("agent %s calibrated version %d on %d held-out heats", self.id, version, used)
            self._save_calibration()
        self._fit_power_on()
        self._update_state()

    def _update_state(self) -> None:
        """A new snapshot of what requests are answered with (replaced, never mutated)."""
        if self.serving is None or self.serving_version is None or self.spec is None:
            return
        cal = self.calibrator.calibration.copy() if self.calibrator is not None else None
        self.state = ServingState(
            self.serving_version,
            tuple(self.spec.features),
            tuple(self.spec.targets),
            self.serving,
            cal,
            self.power_on,
            self.settings.interval_level,
            self.typical_charge,
        )

    def _typical_charge(self, x: np.ndarray, heats: int = 200) -> dict[str, float]:
        """The mean charge per grade of the latest training ``heats`` of rows ``x``."""
        assert self.table is not None
        mean = x[-heats:].mean(axis=0)
        return {
            f[len("charge_") : -len("_t")]: float(mean[j])
            for j, f in enumerate(self.table.features)
            if f.startswith("charge_") and f.endswith("_t")
        }

    def _save_calibration(self) -> None:
        if self.calibrator is None or self.calibrator.calibration.version is None:
            return
        self.files.save_calibration(self.calibrator.calibration)
        self._calibration_saved = self.calibrator.added

    def _fit_power_on(self) -> None:
        """Re-fit the planned power-on time on the newest training heats, and save it."""
        if self.table is None or POWER_ON not in self.table.features:
            return
        x, _ = self.table.train()
        if len(x) < 2:
            return
        self.power_on = PowerOnEstimate.fit(x[-POWER_ON_ROWS:], self.table.features)
        self.typical_charge = self._typical_charge(x)  # the optimiser's reference, too
        self._power_on_due = 0
        self.files.save_power_on(self.power_on)

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
            verdict = judge(
                self.serving.predict(x),
                challenger.predict(x),
                y,
                np.asarray(self.spec.y_scale),
                self.settings.challenger_tolerance,
                self.settings.challenger_min_heats,
            )
        if not verdict.swap:
            self.challengers_rejected += 1
            log.warning(
                "agent %s keeps serving version %s, not %d: %s",
                self.id,
                self.serving_version,
                body.version,
                verdict.reason,
            )
            values = {
                "champion_error": verdict.champion_error or 0.0,
                "challenger_error": verdict.challenger_error or 0.0,
                "serving_version": float(self.serving_version or 0),
            }
            self.link.publish(
                self.topics.agent_metrics(self.id),
                message(
                    self.id,
                    MetricsBody(
                        model_version=body.version, scope="challenger_rejected", values=values
                    ),
                ),
            )
            return
        self._serve(challenger, body.version, body.weights)
        log.info("agent %s now serves model version %d (%s)", self.id, body.version, verdict.reason)

    def _recent_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The latest heats' features and outcomes, oldest first."""
        return (np.stack([r[0] for r in self.recent]), np.stack([r[1] for r in self.recent]))

    def _on_task(self, task: TaskBody) -> None:
        """Follow a task authenticated like models, never one older than the latest."""
        if self.model_key is not None:
            verify_task(task, self.model_key)  # SignatureError: rejected, logged by handle
        if self.task is not None and task.round_id < self.task.round_id:
            raise ValueError(
                f"task of round {task.round_id} is older than round "
                f"{self.task.round_id} already seen"
            )
        self.task = task
        with self._secagg_lock:
            if self.secagg is not None and (
                task.round_id != self.secagg.round_id or task.state != "open"
            ):
                self.secagg = None  # that round is over: its secrets go with it

    # -- secure aggregation
    def handle_secagg(self, topic: str, payload: bytes | bytearray) -> None:
        """A ``secagg_roster`` or ``secagg_unmask`` (``round/secagg``) or this agent's
        ``secagg_inbox``: handed to this round's client, its answers published at once.
        Called on paho's thread; a refused message is counted like any other (``invalid``
        for the client's refusals), undecryptable shares as ``bad_share``."""
        if not payload:
            return
        try:
            body = self._secagg_body(topic, payload)
            with self._secagg_lock:
                client = self.secagg
                if client is None or body.round_id > client.round_id:
                    # Not a round this agent takes part in (not selected, or its task is
                    # still queued for the work loop): for the agents of that round.
                    log.debug(
                        "agent %s: %s of round %d ignored (not in that secure round)",
                        self.id,
                        body.kind,
                        body.round_id,
                    )
                    return
                if isinstance(body, SecaggRosterBody):
                    out = client.on_roster(body)
                elif isinstance(body, SecaggInboxBody):
                    bad = client.bad_shares
                    out = client.on_inbox(body)
                    for _ in range(client.bad_shares - bad):
                        self.rejections.reject(
                            "bad_share",
                            "agent %s: a share ciphertext of round %d did not decrypt; its "
                            "sender's shares will not be revealed",
                            self.id,
                            body.round_id,
                        )
                else:
                    out = client.on_unmask(body)
                self._publish_secagg(out)
        except DecodeError as exc:
            code = "schema" if isinstance(exc, SchemaError) else "malformed"
            self.rejections.reject(code, "rejected message on %s: %s", topic, exc)
        except ValueError as exc:  # SecaggRefused: another round or phase, a bad roster...
            self.rejections.reject("invalid", "rejected message on %s: %s", topic, exc)

    def _secagg_body(
        self, topic: str, payload: bytes | bytearray
    ) -> SecaggRosterBody | SecaggInboxBody | SecaggUnmaskBody:
        if topic == self.topics.round_secagg_inbox(self.id):
            return body_of(decode(payload, SecaggInboxBody, self.limits), SecaggInboxBody)
        body = decode(payload, None, self.limits).body
        if not isinstance(body, SecaggRosterBody | SecaggUnmaskBody):
            raise DecodeError(f"expected a secagg_roster or secagg_unmask, got {body.kind!r}")
        return body

    def _publish_secagg(self, bodies: list[Body]) -> None:
        for body in bodies:
            self.link.publish(self.topics.agent_secagg(self.id), message(self.id, body))
            log.info("agent %s sent %s", self.id, body.kind)

    def _join_secure_round(self) -> None:
        """On an open secure task this agent will train for: this round's key pairs, and
        their public keys sent at once (training follows; docs/PROTOCOL.md step 1)."""
        task = self.task
        if task is None or not task.secure_aggregation or not self._will_train(task):
            return
        with self._secagg_lock:
            if self.secagg is not None and self.secagg.round_id == task.round_id:
                return  # joined already (a task delivered again changes nothing)
            self.secagg = client = SecaggClient(self.id, task)
            self._publish_secagg([client.keys])

    def _report_rejected_model(self, version: int, code: str, reason: str) -> None:
        """Keep serving the current model and tell the coordinator's admins why: logged and
        reported while the reason's log budget lasts (a flood of forged models must not use
        up this agent's metrics budget at the coordinator), counted always."""
        self.models_rejected += 1
        if not self.rejections.reject(
            code,
            "agent %s rejected model version %d: %s; still serving version %s",
            self.id,
            version,
            reason,
            self.model_version,
            level=logging.ERROR,
        ):
            return
        body = MetricsBody(
            model_version=version,
            scope="model_rejected",
            values={"rejected_version": float(version)},
        )
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    # -- data
    def _ingest(self) -> None:
        self._waiting += self.source.poll()
        if not self._waiting or self.table is None:
            return  # heats wait for the first model, which brings the column layout
        heats = self._waiting
        table = self.table
        # Raises if a heat lacks a column (never, for a model that passed the contract):
        # then the heats stay waiting, to be retried.
        xs = np.stack([table.row(h.inputs) for h in heats])
        ys = np.stack([table.outcome_row(h.outcome) for h in heats])
        self._waiting = []
        # From here on the heats are kept whatever fails: each step below is guarded.
        preds: np.ndarray | list[None] = [None] * len(heats)
        serving = self.serving
        if serving is not None and self.serving_version is not None:
            # Test first: each prediction goes out before the heat is learned from, with
            # its interval from the calibration as it stands before the outcome.
            predicted = self._guarded("predict", lambda: serving.predict(xs))
            if predicted is not None:
                preds = predicted
                sent = self._guarded(
                    "publish_predictions", lambda: self._publish_predictions(heats, predicted)
                )
                if sent:
                    self._record(
                        lambda: [
                            p
                            for heat, body in zip(heats, sent, strict=True)
                            for p in prediction_points(heat, body)
                        ]
                    )
        drift: tuple[Heat, DriftEvent] | None = None
        for heat, x, y, pred in zip(heats, xs, ys, preds, strict=True):
            self.recent.append((x, y))
            found = self._remember(heat, pred)
            drift = (heat, found) if found is not None else drift
        self.new_heats += len(heats)
        self._power_on_due += len(heats)
        self._guarded("report_prequential", self._report_prequential)
        if self._power_on_due >= POWER_ON_REFIT_HEATS:
            self._guarded("fit_power_on", self._fit_power_on)
        self._guarded("report_calibration", self._report_calibration)
        self._guarded("update_state", self._update_state)
        if drift is not None:
            at, event = drift
            self._guarded("report_drift", lambda: self._on_drift(event))
            self._record(lambda: [drift_point(at, event, self.serving_version)])
        if self.learner is not None and self.learner.refit_due():
            self._guarded("adapt", self._adapt)
        if self._reported_version != self.model_version:
            self._guarded("report_validation", self._report_validation)
        if time.monotonic() - self._status_sent_at >= self.settings.status_interval_s:
            # tells the coordinator there is new data to learn
            self._guarded("publish_status", self._publish_status)

    def _publish_predictions(self, heats: list[Heat], preds: np.ndarray) -> list[PredictionBody]:
        """One ``prediction`` per heat, with its interval; then score the intervals and
        add the heats' residuals to the calibration (outcomes are known here). Returns
        the predictions published, in the order of ``heats``."""
        assert self.table is not None and self.serving_version is not None
        targets = self.table.targets
        lo = hi = None
        if self.calibrator is not None:
            lo, hi = self.calibrator.interval(preds)
        sent = []
        for i, (heat, pred) in enumerate(zip(heats, preds, strict=True)):
            bounded = (
                lo is not None
                and hi is not None
                and bool(np.isfinite(lo[i]).all() and np.isfinite(hi[i]).all())
            )
            body = PredictionBody(
                heat_id=heat.heat_id,
                model_version=self.serving_version,
                outputs=dict(zip(targets, map(float, pred), strict=True)),
                level=self.settings.interval_level if bounded else None,
                lower=(
                    dict(zip(targets, map(float, lo[i]), strict=True))
                    if bounded and lo is not None
                    else None
                ),
                upper=(
                    dict(zip(targets, map(float, hi[i]), strict=True))
                    if bounded and hi is not None
                    else None
                ),
            )
            self.link.publish(self.topics.agent_predictions(self.id), message(self.id, body))
            sent.append(body)
        if self.calibrator is not None and lo is not None and hi is not None:
            ys = np.stack([self.table.outcome_row(h.outcome) for h in heats])
            first = self.table.seen + 1  # the heats' counts, as _remember will file them
            self.calibrator.observe(preds, ys, lo, hi, range(first, first + len(heats)))
        return sent

    def _record(self, points: Callable[[], list[Point]]) -> None:
        """Write the agent's own points (docs/SENSORS.md, "What the agent writes") into its
        store beside the sensor data: through the spool for InfluxDB, so an outage loses
        nothing. Off with ``store_predictions`` or without a store; a failure is counted
        (step ``record``) and logged, never fatal."""
        store = self.store
        if store is not None and self.settings.store_predictions:
            self._guarded("record", lambda: store.write(points()))

    def _report_calibration(self) -> None:
        """Coverage of the intervals issued (``calibration`` metrics), and calibration.json,
        at most every status interval."""
        if (
            self.calibrator is None
            or self.calibrator.added == self._calibration_saved
            or time.monotonic() - self._calibration_sent_at < self.settings.status_interval_s
        ):
            return
        self._calibration_sent_at = time.monotonic()
        self._save_calibration()
        body = MetricsBody(
            model_version=self.serving_version, scope="calibration", values=self.calibrator.values()
        )
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    def _remember(self, heat: Heat, pred: np.ndarray | None) -> DriftEvent | None:
        """File a finished heat as a training or a validation row and show it to the site
        learner (prequential score, drift detectors). Validation heats never enter
        training, replay or site adaptation."""
        assert self.table is not None
        x, y = self.table.row(heat.inputs), self.table.outcome_row(heat.outcome)
        learn = self.table.add(heat.inputs, heat.outcome)  # kept from here on
        if not learn and self.calibrator is not None:
            self.calibrator.hold_out(self.table.seen, x, y)
        learner = self.learner
        if learner is None or not self.settings.continual:
            return None
        return self._guarded("observe", lambda: learner.observe(x, y, pred, learn=learn))

    def _prequential(self) -> dict[str, float] | None:
        """The prequential figures (``n``, overall and recent MAE per target), if any."""
        if self.learner is None or self.learner.prequential.n == 0:
            return None
        return {k: v for k, v in self.learner.prequential.snapshot().items() if np.isfinite(v)}

    def _report_prequential(self) -> None:
        values = self._prequential()
        if values is None:
            return
        body = MetricsBody(model_version=self.serving_version, scope="prequential", values=values)
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    def policy(self) -> SitePolicy:
        """The site's continual-learning policy from the settings."""
        st = self.settings
        return SitePolicy(
            train_window=st.train_window,
            replay_rows=st.replay_rows,
            adapt_heats=st.adapt_heats,
            adapt_epochs=st.adapt_epochs,
            adapt_lr=st.adapt_lr,
            adapt_prior=st.adapt_prior,
            adapt_every=st.adapt_every,
        )

    def _on_drift(self, event: DriftEvent) -> None:
        """Report it: the coordinator may open an early round. The site learner has started
        a new regime; ``_adapt`` re-fits the site part on it."""
        log.warning(
            "agent %s detected drift: errors %s, inputs %s (onset at heat %d)",
            self.id,
            list(event.error_targets),
            list(event.input_features),
            event.onset,
        )
        self.link.publish(
            self.topics.agent_metrics(self.id),
            message(
                self.id,
                MetricsBody(
                    model_version=self.serving_version, scope="drift", values=event.values()
                ),
            ),
        )

    def _adapt(self) -> None:
        """The site learner asks for a re-fit (at a detection, then every few heats while
        the new regime is young): an update of the site part only, on the regime's recent
        training heats; the served global version keeps applying, with the new offsets."""
        assert self.learner is not None
        if self.spec is None or self.serving_shared is None or self.serving_version is None:
            return  # nothing served yet: the first model brings this site's part
        site = self.learner.refit(self.spec, self.serving_shared, self.site_weights)
        if site is None:
            return  # no site tensors in this architecture, or too few heats yet
        self._keep_site_part(site)
        log.info(
            "agent %s re-fitted its site part on the new regime's %d latest heats; "
            "serves version %s",
            self.id,
            min(self.learner.regime_heats, self.learner.policy.adapt_heats),
            self.serving_version,
        )

    def _keep_site_part(self, site: Weights, serve: bool = True) -> None:
        """Adopt a new site part: saved to disk, and (``serve``) served at once with the
        served global version's shared part."""
        self.site_weights = site
        self.files.save_site(site)
        if serve and self.serving_shared is not None and self.serving_version is not None:
            self._serve(
                self._site_predictor(self.serving_shared), self.serving_version, self.serving_shared
            )

    def _report_validation(self) -> None:
        if self.table is None or self.predictor is None:
            return
        x, y = self.table.validation()
        if len(x) == 0:
            return
        self._reported_version = self.model_version
        values = mae_by_target(self.predictor.predict(x), y, self.table.targets)
        values["n"] = float(len(x))
        self.validation = values
        body = MetricsBody(model_version=self.model_version, scope="validation", values=values)
        self.link.publish(self.topics.agent_metrics(self.id), message(self.id, body))

    # -- training
    def _will_train(self, task: TaskBody) -> bool:
        """Whether this agent trains for ``task``: open, selecting it, not done yet, on
        the version it holds, with training heats."""
        return not (
            task.state != "open"
            or not task.selects(self.id)
            or task.round_id in self.rounds_done
            or self.model_version != task.base_version
            or self.table is None
            or self.table.n_train == 0
            or self.spec is None
            or self.base_weights is None
        )

    def _maybe_train(self) -> None:
        task = self.task
        if task is None or not self._will_train(task):
            return
        secure = self.secagg if task.secure_aggregation else None
        if task.secure_aggregation and (secure is None or secure.round_id != task.round_id):
            return  # its keys are not out yet (_join_secure_round): no delta without them
        assert self.table is not None and self.spec is not None and self.base_weights is not None
        replay = None
        if self.settings.continual and self.learner is not None:
            # The current regime's newest heats and regime-balanced replay (SiteLearner).
            x, y, replay = self.learner.round_rows()
        else:
            x, y = self.table.train()
        cfg = TrainConfig(
            epochs=task.epochs,
            lr=task.lr,
            batch_size=task.batch_size,
            proximal_mu=task.hyper.get("proximal_mu", 0.0),
            seed=task.round_id,
            ewc_lambda=self.settings.ewc_lambda,
        )
        result = train_delta(
            self.spec, self.base_weights, x, y, cfg, site=self.site_weights, replay=replay
        )
        heats = len(x) + (len(replay[0]) if replay is not None else 0)
        if secure is not None:
            if not self._send_masked(secure, task, result.delta, heats, result.metrics):
                self.rounds_done.add(task.round_id)  # nothing can be sent this round
                return
        else:
            self._send_update(task, result.delta, heats, result.metrics)
        self.rounds_done.add(task.round_id)
        self.updates_sent += 1
        self.new_heats = 0
        if self.spec.parameter_shapes("site"):
            # The new site part was fitted beside the task's base; it serves at once if
            # that is the version served (else with the next version that serves).
            self._keep_site_part(result.site, serve=self.serving_version == task.base_version)
        self._publish_status()
        log.info(
            "agent %s sent %s for round %d (%d heats, loss %.4f)",
            self.id,
            "its delta to the secure round" if secure is not None else "update",
            task.round_id,
            heats,
            result.metrics["train_loss"],
        )

    def _send_update(
        self, task: TaskBody, delta: Weights, heats: int, metrics: dict[str, float]
    ) -> None:
        # Only the shared delta leaves the site; the site part is kept (and served).
        body = UpdateBody(
            round_id=task.round_id,
            base_version=task.base_version,
            num_samples=heats,
            metrics=metrics,
            delta=self.compressor.encode(
                self.privatizer.apply(delta, task.dp_clip_norm, task.dp_noise_multiplier),
                task.update_codec,
                task.update_topk_fraction,
            ),
        )
        self.link.publish(self.topics.agent_update(self.id), message(self.id, body))

    def _send_masked(
        self,
        client: SecaggClient,
        task: TaskBody,
        delta: Weights,
        heats: int,
        metrics: dict[str, float],
    ) -> bool:
        """A secure round: the shared delta, in the base model's canonical order, goes to
        the round's client instead of an ``update`` (no codec; with the task's DP, the
        client clips it, adds this agent's part of the noise and sends weight 1 instead
        of the heats); its masked input leaves now if the inbox is in, else when the inbox
        comes. False if the delta does not fit the fixed-point input: then this agent
        sends nothing this round."""
        assert self.base_weights is not None
        ordered = [delta[name] for name in self.base_weights]
        with self._secagg_lock:
            try:
                out = client.set_delta(ordered, heats, metrics)
            except EncodingError as exc:
                log.warning(
                    "agent %s skips secure round %d: its delta does not fit (%s)",
                    self.id,
                    task.round_id,
                    exc,
                )
                return False
            self._publish_secagg(out)
        return True
