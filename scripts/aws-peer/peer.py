#!/usr/bin/env python3
"""The AWS API peer: moto's server, extended to behave as AWS documents Aurora PostgreSQL express.

    python peer.py [--port 0] [--host 127.0.0.1] [--create-delay S] [--delete-delay S]
                   [--modify-delay S] [--modify-lag S] [--fault-rate F] [--latency-ms MIN:MAX]
                   [--seed N] [--stale-tag-seconds S] [--max-clusters N] [-v]

When ready it prints exactly one line, `listening on http://HOST:PORT`, on stdout and flushes; logs go
to stderr. SIGTERM and SIGINT stop it cleanly (exit 0). Point any AWS SDK at it with
AWS_ENDPOINT_URL=http://HOST:PORT and any credentials. README.md beside this file documents every
flag, the control API under /_peer/ and what is and is not reproduced.

How it works: one WSGI middleware in front of moto's own server app (DomainDispatcherApplication)
records every call, injects latency and faults, runs due state transitions, and serializes all AWS
calls through one lock (moto's backends are not thread-safe). The RDS behaviour that moto lacks is
added by replacing a few methods of moto's RDSResponse and RDSBackend classes in-process; responses
are still serialized by moto from botocore's RDS model, so they carry exactly AWS's wire shapes.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import copy
import fnmatch
import heapq
import io
import itertools
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl

# moto reads some settings at import time.
os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")

from moto.core.parse import QueryParser  # noqa: E402
from moto.core.resource_tagging import TaggedResource  # noqa: E402
from moto.core.responses import ActionResult  # noqa: E402
from moto.core.utils import get_service_model  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.rds import models as rds_models  # noqa: E402
from moto.rds import responses as rds_responses  # noqa: E402
from moto.rds.exceptions import (  # noqa: E402
    DBClusterNotFoundError,
    DBClusterToBeDeletedHasActiveMembers,
    DBInstanceNotFoundError,
    InvalidParameterCombination,
    InvalidParameterValue,
    RDSClientError,
)
from werkzeug.serving import make_server  # noqa: E402

log = logging.getLogger("aws-peer")

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
EXPRESS_ENGINE = "aurora-postgresql"
RDS_XMLNS = "http://rds.amazonaws.com/doc/2014-10-31/"

# Everything that can change at run time (POST /_peer/config). Delays are seconds.
DEFAULT_CONFIG: dict[str, Any] = {
    "create_delay": 0.0,
    "delete_delay": 0.0,
    "modify_delay": 0.0,
    # After ModifyDBCluster AWS can keep showing `available` (and the old values) for a moment before
    # `modifying`: for this long after the call the cluster looks untouched (only when modify_delay
    # is longer). The new values become visible when modify_delay has passed.
    "modify_lag": 0.0,
    "fault_rate": 0.0,
    # Of the injected faults: this share is throttling, the rest HTTP 500.
    "fault_throttle_share": 0.5,
    # Of the injected 500s: this share happen after the call took effect (the answer is lost).
    "fault_after_share": 0.5,
    # Only these actions get random faults (empty: every AWS call).
    "fault_actions": [],
    "latency_ms": [0.0, 0.0],
    # Keep deleted clusters visible to tag:GetResources this long ("previously tagged" resources).
    "stale_tag_seconds": 0.0,
    # DBClusterQuotaExceededFault past this many clusters in a Region (0: no limit; AWS's default is 40).
    # /_peer/seed-clusters ignores it.
    "max_clusters": 0,
    "default_engine_version": "16.6",
    # One practitioner reported (unconfirmed) that DatabaseName with express is refused with
    # InvalidParameterCombination; off by default, as the API reference allows it.
    "express_rejects_database_name": False,
    # AWS refuses DeleteDBCluster while an instance is in a non-deleting state ("Cluster cannot be
    # deleted, it still contains DB instances in non-deleting state."); true also refuses it while an
    # instance is still being deleted.
    "strict_member_delete": False,
    # The error code of an injected throttle on RDS. Real RDS answers `Throttling` ("Rate exceeded",
    # type Sender), as boto3 and aws-cli users report; some AWS services say `ThrottlingException`.
    "rds_throttle_code": "Throttling",
    # A translated AWS guide says a specific engine version needs full configuration; the API model
    # is silent. True refuses `EngineVersion` with `WithExpressConfiguration`.
    "express_rejects_engine_version": False,
    # What DescribeDBEngineVersions offers (ServerlessV2FeaturesSupport): minimum 0 only where the
    # version supports auto-pause, maximum 256 only on recent versions. Creates and modifies are
    # refused outside a version's range, as AWS refuses them.
    "engine_versions": [
        {"version": "13.12", "min_capacity": 0.5, "max_capacity": 128.0, "default": False},
        {"version": "15.4", "min_capacity": 0.5, "max_capacity": 128.0, "default": False},
        {"version": "16.6", "min_capacity": 0.0, "max_capacity": 256.0, "default": True},
    ],
    # DescribeAccountAttributes' quota of DB clusters and instances per Region (AWS's default: 40).
    "cluster_quota": 40,
    # Unconfirmed whether every account and Region clones without a VPC: true refuses
    # RestoreDBClusterToPointInTime with EnableVPCNetworking=false (InvalidParameterCombination).
    "clone_rejects_no_vpc": False,
    # An express cluster's writer appears (in DescribeDBInstances and DBClusterMembers) only this
    # share of the way through `creating`: before that the cluster lists no member.
    "writer_after_share": 0.5,
}

# Cluster states in which AWS refuses DeleteDBCluster (InvalidDBClusterStateFault): it deletes an
# available cluster, not one being made, started or stopped ("Db cluster X is in stopped state";
# the API model: "The DB cluster can't be in the stopping state" for DeleteDBInstances).
DELETE_REFUSED_CLUSTER_STATES = {"creating", "starting", "stopping", "stopped"}

# Parameters the RDS model of botocore 1.44.18 documents that the pinned botocore (1.44.8, whose
# model parses requests and the call log) does not know yet: action -> {name: type}.
NEWER_MODEL_PARAMS: dict[str, dict[str, str]] = {
    "DeleteDBCluster": {"DeleteDBInstances": "boolean"},
}

# AWS allows this many tags per resource.
MAX_TAGS = 50

CLUSTER_ID_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|-(?=[A-Za-z0-9]))*$")
TAG_TEXT_RE = re.compile(r"^[\w\s.:/=+\-@]*$", re.UNICODE)
CRED_SCOPE_RE = re.compile(r"Credential=[^/,]+/\d{8}/([^/,]+)/([^/,]+)/aws4_request")


def valid_cluster_id(ident: str) -> bool:
    return isinstance(ident, str) and 1 <= len(ident) <= 63 and bool(CLUSTER_ID_RE.match(ident))


def arn_resource(value: str) -> tuple[str | None, str]:
    """Splits `arn:aws:rds:REGION:ACCOUNT:TYPE:ID` into (TYPE, ID); a plain id gives (None, id)."""
    if value.startswith("arn:"):
        parts = value.split(":", 6)
        if len(parts) == 7:
            return parts[5], parts[6]
        return "", value
    return None, value


def cluster_key(value: str) -> str:
    _, ident = arn_resource(value)
    return ident.lower()


# ---------------------------------------------------------------------------------------------------
# Peer state: configuration, call log, scheduled transitions, injected faults.


class Peer:
    def __init__(self, config: dict[str, Any], seed: int | None):
        self.config = dict(DEFAULT_CONFIG)
        self.config.update(config)
        self.lock = threading.RLock()  # serializes every AWS call, transition and control mutation
        self.seed = seed
        self.fault_rng = random.Random(seed)
        self.latency_rng = random.Random(None if seed is None else seed + 1)
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.event_seq = itertools.count()
        self.calls_lock = threading.Lock()
        self.calls: list[str] = []  # each call pre-encoded as JSON, so GET /_peer/calls is a join
        self.call_meta: list[tuple[str, str]] = []  # (service, action) per call, for filtering
        self.forced: list[dict[str, Any]] = []  # queued faults from POST /_peer/fault-next
        self.stale: dict[tuple[str, str], dict[str, tuple[float, TaggedResource]]] = {}
        self.holds: list[Hold] = []  # POST /_peer/hold: calls kept waiting until released
        self.holds_lock = threading.Lock()
        self.started = time.time()

    # -- transitions -------------------------------------------------------------------------------
    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.events, (time.monotonic() + max(0.0, delay), next(self.event_seq), fn))

    def sweep(self) -> None:
        """Runs every transition that is due. Called under the lock before each AWS call."""
        now = time.monotonic()
        while self.events and self.events[0][0] <= now:
            _, _, fn = heapq.heappop(self.events)
            try:
                fn()
            except Exception:  # a transition must never break the peer
                log.exception("transition failed")

    # -- faults ------------------------------------------------------------------------------------
    def decide_fault(self, service: str, action: str) -> str | None:
        for i, forced in enumerate(self.forced):
            if forced.get("action") in (None, "", action) and forced.get("service") in (None, "", service):
                forced["count"] -= 1
                if forced["count"] <= 0:
                    del self.forced[i]
                return forced["fault"]
        cfg = self.config
        if cfg["fault_rate"] <= 0:
            return None
        if cfg["fault_actions"] and action not in cfg["fault_actions"]:
            return None
        if self.fault_rng.random() >= cfg["fault_rate"]:
            return None
        if self.fault_rng.random() < cfg["fault_throttle_share"]:
            return "throttle"
        if self.fault_rng.random() < cfg["fault_after_share"]:
            return "500-after"
        return "500"

    def latency(self) -> float:
        lo, hi = self.config["latency_ms"]
        if hi <= 0:
            return 0.0
        return self.latency_rng.uniform(lo, hi) / 1000.0

    # -- call log ----------------------------------------------------------------------------------
    def record(self, entry: dict[str, Any]) -> None:
        encoded = json.dumps(entry, default=_json_default, separators=(",", ":"))
        with self.calls_lock:
            entry_index = len(self.calls)
            self.calls.append(encoded[:-1] + f',"seq":{entry_index}}}')
            self.call_meta.append((entry["service"], entry["action"]))

    def calls_json(self, since: int = 0, action: str | None = None, service: str | None = None) -> str:
        with self.calls_lock:
            if action is None and service is None:
                chosen = self.calls[since:]
            else:
                chosen = [
                    c
                    for c, (s, a) in zip(self.calls[since:], self.call_meta[since:])
                    if (action is None or a == action) and (service is None or s == service)
                ]
            return "[" + ",".join(chosen) + "]"

    def reset_calls(self) -> None:
        with self.calls_lock:
            self.calls.clear()
            self.call_meta.clear()


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "original_dict"):
        return value.original_dict()
    return str(value)


class Hold:
    """A call kept waiting before it takes effect, until released (POST /_peer/hold): what a slow
    network or a paused client looks like, so a test can change things between two calls."""

    def __init__(self, ident: int, body: dict[str, Any]):
        self.id = ident
        self.action = body.get("action")
        self.service = body.get("service")
        self.match = body.get("match")
        self.skip = int(body.get("skip", 0))
        self.timeout = float(body.get("timeout", 300))
        self.released = threading.Event()
        self.held: list[str] = []  # the actions held so far (at most one)

    def takes(self, service: str, action: str, params_text: str) -> bool:
        """Whether this call is the one to hold (called under holds_lock)."""
        if self.held or self.action not in (None, "", action) or self.service not in (None, "", service):
            return False
        if self.match and self.match not in params_text:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        self.held.append(action)
        return True

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "match": self.match,
            "holding": bool(self.held) and not self.released.is_set(),
            "released": self.released.is_set(),
        }


PEER: Peer = None  # type: ignore[assignment]  # set by main() or make_app()


# ---------------------------------------------------------------------------------------------------
# RDS behaviour (patches on moto's RDSBackend / RDSResponse / DBCluster).

DBCluster = rds_models.DBCluster
DBInstance = rds_models.DBInstance
DBInstanceClustered = rds_models.DBInstanceClustered
RDSBackend = rds_models.RDSBackend
RDSResponse = rds_responses.RDSResponse

_orig_modify_db_cluster = RDSBackend.modify_db_cluster
_orig_create_db_cluster = RDSBackend.create_db_cluster
_orig_create_db_instance_backend = RDSBackend.create_db_instance
_orig_create_auto_snapshot = RDSBackend.create_auto_snapshot
_orig_create_db_instance_response = RDSResponse.create_db_instance
_orig_iter_tagged_resources = RDSBackend.iter_tagged_resources
_orig_get_resource_for_tagging = RDSBackend._get_resource_for_tagging
_orig_add_tags_response = RDSResponse.add_tags_to_resource


def _members_index(backend: Any) -> dict[str, dict[int, Any]]:
    idx = backend.__dict__.get("_peer_members")
    if idx is None:
        idx = {}
        for db in backend.databases.values():
            if isinstance(db, DBInstanceClustered):
                idx.setdefault(db.db_cluster_identifier.lower(), {})[id(db)] = db
        backend.__dict__["_peer_members"] = idx
    return idx


def _index_add(backend: Any, db: Any) -> None:
    if isinstance(db, DBInstanceClustered):
        _members_index(backend).setdefault(db.db_cluster_identifier.lower(), {})[id(db)] = db


def _index_remove(backend: Any, db: Any) -> None:
    if isinstance(db, DBInstanceClustered):
        members = _members_index(backend).get(db.db_cluster_identifier.lower())
        if members is not None:
            members.pop(id(db), None)
            if not members:
                _members_index(backend).pop(db.db_cluster_identifier.lower(), None)


def _cluster_members(self: Any) -> list[Any]:
    # moto scans every instance of the Region for every cluster it serializes (quadratic for a
    # describe of thousands); this index keeps it linear.
    members = _members_index(self.backend).get(self.db_cluster_identifier.lower(), {})
    return [m for m in members.values() if self.backend.databases.get(m.db_instance_identifier) is m]


def _status_get(self: Any) -> str:
    # moto turns `creating` into `available` on the first read; here transitions are timed.
    return self._status


def _status_set(self: Any, value: str) -> None:
    self._status = value


def _create_db_instance_backend(self: Any, db_kwargs: dict[str, Any]) -> Any:
    db = _orig_create_db_instance_backend(self, db_kwargs)
    _index_add(self, db)
    return db


def _cluster_gen(cluster: Any) -> int:
    return cluster.__dict__.get("_peer_gen", 0)


def _bump_gen(cluster: Any) -> int:
    cluster.__dict__["_peer_gen"] = _cluster_gen(cluster) + 1
    return cluster.__dict__["_peer_gen"]


def validate_tags(tags: Any, existing: dict[str, str] | None = None) -> None:
    keys = set(existing or {})
    for tag in tags or []:
        key = tag.get("Key")
        value = tag.get("Value", "") or ""
        if not key or len(key) > 128:
            raise InvalidParameterValue(f"Tag key must be 1 to 128 characters long: {key!r}")
        for text in (key, value):
            if text.lower().startswith(("aws:", "rds:")):
                raise InvalidParameterValue(
                    f"Tag keys and values can't be prefixed with 'aws:' or 'rds:': {key!r}={value!r}"
                )
        keys.add(key)
        if len(value) > 256:
            raise InvalidParameterValue(f"Tag value of {key!r} is longer than 256 characters")
        for text in (key, value):
            if not TAG_TEXT_RE.match(text):
                raise InvalidParameterValue(
                    f"Invalid tag {key!r}={value!r}: tags may contain only letters, digits, spaces and _ . : / = + - @"
                )
    if len(keys) > MAX_TAGS:
        raise RDSClientError(
            "TagQuotaPerResourceExceeded", f"A resource can have at most {MAX_TAGS} tags, not {len(keys)}."
        )


def engine_version_entry(version: str | None) -> dict[str, Any] | None:
    """The configured engine version a create or modify asks for (`None`: the default)."""
    for entry in PEER.config["engine_versions"]:
        if version is None and entry.get("default"):
            return entry
        if version is not None and (entry["version"] == version or entry["version"].startswith(version + ".")):
            return entry
    return None


def validate_scaling_for(scaling: Any, version: str | None) -> None:
    """AWS refuses a range the engine version does not support (ServerlessV2FeaturesSupport)."""
    entry = engine_version_entry(version)
    if not scaling or entry is None:
        return
    lo = scaling.get("MinCapacity")
    hi = scaling.get("MaxCapacity")
    if lo is not None and lo < entry["min_capacity"]:
        raise InvalidParameterCombination(
            f"Engine version {entry['version']} supports a minimum capacity of {entry['min_capacity']} ACUs, not {lo}."
        )
    if hi is not None and hi > entry["max_capacity"]:
        raise InvalidParameterCombination(
            f"Engine version {entry['version']} supports a maximum capacity of {entry['max_capacity']} ACUs, not {hi}."
        )


def validate_scaling(scaling: Any) -> None:
    if not scaling:
        return
    lo = scaling.get("MinCapacity")
    hi = scaling.get("MaxCapacity")
    for name, v in (("MinCapacity", lo), ("MaxCapacity", hi)):
        if v is None:
            continue
        if v < 0 or v > 256 or abs(v * 2 - round(v * 2)) > 1e-9:
            raise InvalidParameterValue(
                f"ServerlessV2ScalingConfiguration {name} must be between 0 and 256 in steps of 0.5, not {v}"
            )
    if lo is not None and hi is not None and lo > hi:
        raise InvalidParameterValue(
            "ServerlessV2ScalingConfiguration MinCapacity must be less than or equal to MaxCapacity"
        )
    if hi is not None and hi < 1:
        raise InvalidParameterValue("ServerlessV2ScalingConfiguration MaxCapacity must be at least 1")


def _check_cluster_id(ident: Any) -> str:
    if not valid_cluster_id(ident or ""):
        raise InvalidParameterValue(
            "The parameter DBClusterIdentifier is not a valid identifier. Identifiers must begin with a "
            "letter; must contain only ASCII letters, digits, and hyphens; and must not end with a "
            "hyphen or contain two consecutive hyphens."
        )
    return ident.lower()


def _find_cluster(backend: Any, ident: str) -> Any:
    kind, _ = arn_resource(ident)
    key = cluster_key(ident)
    cluster = backend.clusters.get(key) if kind in (None, "cluster") else None
    if cluster is None:
        raise DBClusterNotFoundError(key if kind is None else ident)
    return cluster


def _make_available(backend: Any, cluster: Any, gen: int) -> Callable[[], None]:
    def run() -> None:
        if backend.clusters.get(cluster.db_cluster_identifier) is not cluster:
            return
        if _cluster_gen(cluster) == gen and cluster._status == "creating":
            cluster._status = "available"
            express = cluster.__dict__.get("_peer_express")
            writer = f"{cluster.db_cluster_identifier}-instance-1"
            if express and writer not in backend.databases:
                _writer_instance(backend, cluster, bool(cluster.vpc_networking_enabled), "creating")
        for member in cluster._members:
            if member.status == "creating" and member.__dict__.get("_peer_gen", 0) == gen:
                member.status = "available"

    return run


def _writer_instance(backend: Any, cluster: Any, vpc: bool, status: str) -> Any:
    instance_id = f"{cluster.db_cluster_identifier}-instance-1"
    db = DBInstanceClustered(
        backend=backend,
        db_instance_identifier=instance_id,
        db_cluster_identifier=cluster.db_cluster_identifier,
        db_instance_class="db.serverless",
        engine=cluster.engine,
        engine_version=cluster.engine_version,
        enable_iam_database_authentication=True,
        publicly_accessible=not vpc,
    )
    db.status = status
    db.vpc_networking_enabled = vpc
    db.__dict__["_peer_gen"] = _cluster_gen(cluster)
    backend.databases[instance_id] = db
    _index_add(backend, db)
    return db


def _express_defaults(cluster: Any, vpc: bool, igw: bool, no_password: bool) -> None:
    cluster.vpc_networking_enabled = vpc
    cluster.internet_access_gateway_enabled = igw
    if no_password:
        cluster.__dict__["_master_user_password"] = None


def _create_db_cluster(self: Any) -> ActionResult:
    p = self.params
    backend = self.backend
    cfg = PEER.config
    cluster_id = _check_cluster_id(p.get("DBClusterIdentifier"))
    if cluster_id in backend.clusters:
        raise RDSClientError("DBClusterAlreadyExistsFault", "DB Cluster already exists")
    if cfg["max_clusters"] and len(backend.clusters) >= cfg["max_clusters"]:
        raise RDSClientError(
            "DBClusterQuotaExceededFault", "Cannot create more than the allowed number of DB clusters."
        )
    validate_tags(p.get("Tags"))
    validate_scaling(p.get("ServerlessV2ScalingConfiguration"))
    express = bool(p.get("WithExpressConfiguration"))
    vpc = p.get("EnableVPCNetworking")
    igw = p.get("EnableInternetAccessGateway")
    no_password = False
    if express:
        if p.get("Engine") != EXPRESS_ENGINE:
            raise InvalidParameterCombination(
                f"WithExpressConfiguration is supported only for the {EXPRESS_ENGINE} engine."
            )
        if cfg["express_rejects_database_name"] and p.get("DatabaseName"):
            raise InvalidParameterCombination(
                "DatabaseName can't be specified with WithExpressConfiguration."
            )
        if cfg["express_rejects_engine_version"] and p.get("EngineVersion"):
            raise InvalidParameterCombination(
                "EngineVersion can't be specified with WithExpressConfiguration."
            )
        vpc = False if vpc is None else bool(vpc)
        igw = (not vpc) if igw is None else bool(igw)
        if not p.get("MasterUsername"):
            p["MasterUsername"] = "postgres"
        if not p.get("MasterUserPassword") and not p.get("ManageMasterUserPassword"):
            # moto insists on a password; express has none (IAM database authentication only).
            p["MasterUserPassword"] = "unused-peer-password"
            no_password = True
        if not p.get("EngineVersion"):
            p["EngineVersion"] = cfg["default_engine_version"]
        if p.get("EnableIAMDatabaseAuthentication") is None:
            p["EnableIAMDatabaseAuthentication"] = True
        if p.get("StorageEncrypted") is None:
            p["StorageEncrypted"] = True  # with an AWS-owned key
        if not p.get("ServerlessV2ScalingConfiguration"):
            p["ServerlessV2ScalingConfiguration"] = {"MinCapacity": 0.0, "MaxCapacity": 16.0}
    else:
        vpc = True if vpc is None else bool(vpc)
        igw = False if igw is None else bool(igw)
        if not p.get("EngineVersion") and p.get("Engine") == EXPRESS_ENGINE:
            p["EngineVersion"] = cfg["default_engine_version"]
    if vpc and igw:
        raise InvalidParameterCombination(
            "A DB cluster can't use VPC networking and an internet access gateway at the same time."
        )
    if not vpc and not (igw and p.get("EnableIAMDatabaseAuthentication")):
        raise InvalidParameterCombination(
            "A DB cluster without VPC networking needs an internet access gateway and IAM database authentication."
        )
    scaling = p.get("ServerlessV2ScalingConfiguration")
    if p.get("EngineVersion") and engine_version_entry(p.get("EngineVersion")) is None:
        raise InvalidParameterCombination(
            f"Cannot find version {p.get('EngineVersion')} for {p.get('Engine')}"
        )
    validate_scaling_for(scaling, p.get("EngineVersion"))
    if scaling and scaling.get("MinCapacity") == 0 and scaling.get("SecondsUntilAutoPause") is None:
        scaling["SecondsUntilAutoPause"] = 300
    if express and f"{cluster_id}-instance-1" in backend.databases:
        raise RDSClientError("DBInstanceAlreadyExists", "DB instance already exists")

    cluster = _orig_create_db_cluster(backend, p)
    _express_defaults(cluster, vpc, igw, no_password)
    cluster.__dict__["_peer_express"] = express
    cluster._status = "creating"
    gen = _cluster_gen(cluster)
    if express:
        # AWS lists the writer only partway through `creating` (DBClusterMembers empty before).
        appears = cfg["create_delay"] * cfg["writer_after_share"]
        if appears <= 0:
            _writer_instance(backend, cluster, vpc, "creating")
        else:
            PEER.schedule(appears, _add_writer(backend, cluster, gen, vpc))
    PEER.schedule(cfg["create_delay"], _make_available(backend, cluster, gen))
    return ActionResult({"DBCluster": cluster})


def _restore_db_cluster_to_point_in_time(self: Any) -> ActionResult:
    """A clone (or a point-in-time restore) as the RDS API reference describes it: the source must
    be available; without a VPC it needs the internet access gateway and IAM database
    authentication; the tags are the request's (never the source's); no instance is made; the
    master user logs in with a password until `ModifyDBCluster MasterUserAuthenticationType`."""
    p = self.params
    backend = self.backend
    cfg = PEER.config
    cluster_id = _check_cluster_id(p.get("DBClusterIdentifier"))
    source = _find_cluster(backend, p.get("SourceDBClusterIdentifier") or "")
    if cluster_id in backend.clusters:
        raise RDSClientError("DBClusterAlreadyExistsFault", "DB Cluster already exists")
    if cfg["max_clusters"] and len(backend.clusters) >= cfg["max_clusters"]:
        raise RDSClientError(
            "DBClusterQuotaExceededFault", "Cannot create more than the allowed number of DB clusters."
        )
    restore_type = p.get("RestoreType") or "full-copy"
    if restore_type not in ("full-copy", "copy-on-write"):
        raise InvalidParameterValue(f"Invalid RestoreType: {restore_type}")
    if p.get("RestoreToTime") is not None and p.get("UseLatestRestorableTime"):
        raise InvalidParameterCombination("Cannot specify both RestoreToTime and UseLatestRestorableTime")
    if p.get("RestoreToTime") is not None and restore_type == "copy-on-write":
        raise InvalidParameterCombination("RestoreToTime cannot be specified when RestoreType is copy-on-write")
    if p.get("RestoreToTime") is None and not p.get("UseLatestRestorableTime"):
        raise InvalidParameterCombination("Either RestoreToTime or UseLatestRestorableTime must be specified")
    if source._status != "available":
        raise RDSClientError(
            "InvalidDBClusterStateFault",
            f"DB cluster {source.db_cluster_identifier} is in {source._status} state but expected it to be available.",
        )
    if cfg["clone_rejects_no_vpc"]:
        raise InvalidParameterCombination("EnableVPCNetworking=false is not supported for this restore.")
    vpc = p.get("EnableVPCNetworking")
    igw = p.get("EnableInternetAccessGateway")
    if (vpc is None) != (igw is None) or (vpc is not None and bool(vpc) == bool(igw)):
        raise InvalidParameterCombination(
            "EnableVPCNetworking=false must be used together with EnableInternetAccessGateway=true."
        )
    vpc = True if vpc is None else bool(vpc)
    if not vpc and not p.get("EnableIAMDatabaseAuthentication"):
        raise InvalidParameterCombination(
            "IAM database authentication is required when EnableVPCNetworking is false and "
            "EnableInternetAccessGateway is true: specify EnableIAMDatabaseAuthentication."
        )
    validate_tags(p.get("Tags"))
    scaling = p.get("ServerlessV2ScalingConfiguration") or _plain(source.serverless_v2_scaling_configuration)
    validate_scaling(scaling)
    validate_scaling_for(scaling, source.engine_version)
    if scaling and scaling.get("MinCapacity") == 0 and scaling.get("SecondsUntilAutoPause") is None:
        scaling["SecondsUntilAutoPause"] = 300
    props = {
        "DBClusterIdentifier": cluster_id,
        "Engine": source.engine,
        "EngineVersion": source.engine_version,
        "MasterUsername": source.master_username,
        "MasterUserPassword": "unused-peer-password",
        "DatabaseName": source.database_name,
        "Tags": p.get("Tags") or [],
        "ServerlessV2ScalingConfiguration": scaling,
        "DeletionProtection": bool(p.get("DeletionProtection")),
        "EnableIAMDatabaseAuthentication": bool(p.get("EnableIAMDatabaseAuthentication")),
        "StorageEncrypted": True,
    }
    params = type(p)()
    params.update(props)
    cluster = _orig_create_db_cluster(backend, params)
    _express_defaults(cluster, vpc, not vpc, True)
    cluster.__dict__["_peer_express"] = False
    cluster.__dict__["_peer_source"] = source.db_cluster_identifier
    cluster.__dict__["_peer_master_auth"] = "password"
    cluster._status = "creating"
    PEER.schedule(cfg["create_delay"], _make_available(backend, cluster, _cluster_gen(cluster)))
    return ActionResult({"DBCluster": cluster})


def _add_writer(backend: Any, cluster: Any, gen: int, vpc: bool) -> Callable[[], None]:
    def run() -> None:
        if backend.clusters.get(cluster.db_cluster_identifier) is not cluster:
            return
        if _cluster_gen(cluster) != gen or cluster._status != "creating":
            return
        if f"{cluster.db_cluster_identifier}-instance-1" not in backend.databases:
            _writer_instance(backend, cluster, vpc, "creating")

    return run


def _create_auto_snapshot(self: Any, db_instance_identifier: str, db_snapshot_identifier: str) -> Any:
    """Aurora backs up clusters, not their instances: AWS makes no instance snapshot for a
    cluster's member. moto's, named by the minute, made a writer created again within one minute
    of its predecessor (a repair after a cut-off delete) fail with DBSnapshotAlreadyExists."""
    db = self.databases.get(db_instance_identifier)
    if db is not None and getattr(db, "db_cluster_identifier", None):
        return None
    return _orig_create_auto_snapshot(self, db_instance_identifier, db_snapshot_identifier)


def _instance_delay_create(self: Any) -> ActionResult:
    p = self.params
    validate_tags(p.get("Tags"))
    if p.get("DBClusterIdentifier"):
        # AWS adds an instance only to a cluster that exists and is available.
        cluster = _find_cluster(self.backend, p["DBClusterIdentifier"])
        if cluster._status != "available":
            raise RDSClientError(
                "InvalidDBClusterStateFault",
                f"DB cluster {cluster.db_cluster_identifier} is in {cluster._status} state but expected it to be available.",
            )
    result = _orig_create_db_instance_response(self)
    db = result.result["DBInstance"]  # type: ignore[index]
    db.status = "creating"
    backend = self.backend

    def run() -> None:
        if backend.databases.get(db.db_instance_identifier) is db and db.status == "creating":
            db.status = "available"

    PEER.schedule(PEER.config["create_delay"], run)
    return result


MODIFY_IMMEDIATE_KEYS = {
    "new_db_cluster_identifier",
    "manage_master_user_password",
    "rotate_master_user_password",
    "master_user_password",
}


def _modify_db_cluster(self: Any) -> ActionResult:
    p = self.params
    backend = self.backend
    cfg = PEER.config
    cluster = _find_cluster(backend, p.get("DBClusterIdentifier") or "")
    p["DBClusterIdentifier"] = cluster.db_cluster_identifier
    if cluster._status != "available":
        raise RDSClientError(
            "InvalidDBClusterStateFault",
            f"DB cluster {cluster.db_cluster_identifier} is in {cluster._status} state but expected it to be available.",
        )
    auth = p.get("MasterUserAuthenticationType")
    if auth is not None:
        if auth not in ("password", "iam-db-auth"):
            raise InvalidParameterValue(f"Invalid MasterUserAuthenticationType: {auth}")
        cluster.__dict__["_peer_master_auth"] = auth
        p.pop("MasterUserAuthenticationType", None)
    requested = p.get("ServerlessV2ScalingConfiguration")
    if requested:
        # AWS changes only the fields sent; moto would replace the whole structure.
        merged = _plain(cluster.serverless_v2_scaling_configuration)
        merged.update(_plain(requested))
        if merged.get("MinCapacity") == 0 and merged.get("SecondsUntilAutoPause") is None:
            merged["SecondsUntilAutoPause"] = 300
        validate_scaling(merged)
        validate_scaling_for(merged, cluster.engine_version)
        p["ServerlessV2ScalingConfiguration"] = merged
    if p.get("NewDBClusterIdentifier"):
        new_id = _check_cluster_id(p.get("NewDBClusterIdentifier"))
        if new_id in backend.clusters:
            raise RDSClientError("DBClusterAlreadyExistsFault", "DB Cluster already exists")
    delay = cfg["modify_delay"]
    lag = cfg["modify_lag"]
    if delay <= 0 or any(k in p for k in MODIFY_IMMEDIATE_KEYS):
        result = _orig_modify_db_cluster(backend, p)
        return ActionResult({"DBCluster": result})

    preview = copy.copy(cluster)
    for key, value in p.items():
        if key in ("db_cluster_identifier", "apply_immediately") or value is None:
            continue
        try:
            setattr(preview, "parameter_group" if key == "db_cluster_parameter_group_name" else key, value)
        except Exception:
            pass
    preview._status = "available" if lag > 0 else "modifying"
    gen = _cluster_gen(cluster)
    pending = cluster.__dict__.setdefault("_peer_pending", [])
    pending.append(p)

    def start() -> None:
        if backend.clusters.get(cluster.db_cluster_identifier) is cluster and _cluster_gen(cluster) == gen:
            if cluster._status == "available":
                cluster._status = "modifying"

    def finish() -> None:
        if backend.clusters.get(cluster.db_cluster_identifier) is not cluster:
            return
        if p in pending:
            pending.remove(p)
        keep = cluster._status
        _orig_modify_db_cluster(backend, p)  # applies the values; sets status to available
        if _cluster_gen(cluster) == gen and not pending and keep in ("modifying", "available"):
            cluster._status = "available"
        else:
            cluster._status = keep

    if lag < delay:
        if lag <= 0:
            cluster._status = "modifying"
        else:
            PEER.schedule(lag, start)
    PEER.schedule(delay, finish)
    return ActionResult({"DBCluster": preview})


def _plain(value: Any) -> dict[str, Any]:
    """A PascalCase plain dict of a parsed structure (moto keeps them as snake_case XFormedDicts)."""
    if not value:
        return {}
    if hasattr(value, "original_dict"):
        return dict(value.original_dict())
    return dict(value)


def _delete_db_instance(self: Any) -> ActionResult:
    p = self.params
    backend = self.backend
    instance_id = p.get("DBInstanceIdentifier") or ""
    _, plain = arn_resource(instance_id)
    db = backend.databases.get(plain)
    if db is None:
        raise DBInstanceNotFoundError(plain)
    if db.status == "deleting":
        raise RDSClientError(
            "InvalidDBInstanceState", f"Instance {db.db_instance_identifier} is already being deleted."
        )
    if db.status == "creating":
        # AWS deletes an instance only once it is made.
        raise RDSClientError(
            "InvalidDBInstanceState", f"Instance {db.db_instance_identifier} is not in available state."
        )
    if db.deletion_protection:
        raise InvalidParameterCombination(
            "Cannot delete protected DB Instance, please disable deletion protection and try again."
        )
    if p.get("FinalDBSnapshotIdentifier") and not isinstance(db, DBInstanceClustered):
        backend.create_db_snapshot(db.db_instance_identifier, p["FinalDBSnapshotIdentifier"], snapshot_type="manual")
    _start_instance_delete(backend, db)
    return ActionResult({"DBInstance": db})


def _start_instance_delete(backend: Any, db: Any) -> None:
    """`deleting` for the delete delay, then gone."""
    db.status = "deleting"
    db.__dict__["_peer_gen"] = db.__dict__.get("_peer_gen", 0) + 1

    def run() -> None:
        if backend.databases.get(db.db_instance_identifier) is db and db.status == "deleting":
            backend.databases.pop(db.db_instance_identifier)
            _index_remove(backend, db)

    PEER.schedule(PEER.config["delete_delay"], run)


def _newer_param(response: Any, name: str) -> Any:
    """A parameter of NEWER_MODEL_PARAMS, read from the request itself (the pinned model drops it)."""
    values = response.querystring.get(name)
    if not values:
        return None
    kind = NEWER_MODEL_PARAMS.get(response._get_action(), {}).get(name)
    if kind == "boolean":
        if values[0] not in ("true", "false"):
            raise InvalidParameterValue(f"Invalid value {values[0]!r} for {name}: expected true or false")
        return values[0] == "true"
    return values[0]


def _check_delete_with_instances(cluster: Any, members: list[Any]) -> None:
    """DeleteDBInstances' constraints (the API model): no member deleting; every member deletable
    (RDS cannot delete one that is being made or protected, and then deletes nothing)."""
    for member in members:
        if member.status == "deleting":
            raise RDSClientError(
                "InvalidDBClusterStateFault",
                f"Cannot delete DB cluster {cluster.db_cluster_identifier} with DeleteDBInstances: "
                f"DB instance {member.db_instance_identifier} is in deleting state.",
            )
        if member.status == "creating":
            raise RDSClientError(
                "InvalidDBClusterStateFault",
                f"Cannot delete DB instance {member.db_instance_identifier} of DB cluster "
                f"{cluster.db_cluster_identifier}: it is not in available state.",
            )
        if member.deletion_protection:
            raise InvalidParameterCombination(
                f"Cannot delete protected DB Instance {member.db_instance_identifier}, please disable deletion protection and try again."
            )


def _delete_db_cluster(self: Any) -> ActionResult:
    p = self.params
    backend = self.backend
    cluster = _find_cluster(backend, p.get("DBClusterIdentifier") or "")
    cluster_id = cluster.db_cluster_identifier
    if cluster._status == "deleting":
        raise RDSClientError("InvalidDBClusterStateFault", f"Cluster {cluster_id} is already being deleted.")
    if cluster.deletion_protection:
        raise InvalidParameterCombination(
            "Cannot delete protected Cluster, please disable deletion protection and try again."
        )
    if cluster._status in DELETE_REFUSED_CLUSTER_STATES:
        raise RDSClientError("InvalidDBClusterStateFault", f"Db cluster {cluster_id} is in {cluster._status} state.")
    members = cluster._members
    with_instances = _newer_param(self, "DeleteDBInstances")
    if with_instances and members:
        _check_delete_with_instances(cluster, members)
    elif PEER.config["strict_member_delete"] and members:
        raise RDSClientError("InvalidDBClusterStateFault", "Cluster cannot be deleted, it still contains DB instances.")
    elif any(m.status != "deleting" for m in members):
        raise DBClusterToBeDeletedHasActiveMembers()
    skip = bool(p.get("SkipFinalSnapshot"))
    final = p.get("FinalDBSnapshotIdentifier")
    if skip and final:
        raise InvalidParameterCombination(
            "FinalDBSnapshotIdentifier can't be specified when SkipFinalSnapshot is enabled."
        )
    if not skip and not final:
        raise InvalidParameterCombination(
            "FinalDBSnapshotIdentifier is required unless SkipFinalSnapshot is specified."
        )
    if final:
        backend.create_db_cluster_snapshot(cluster_id, final)
    delete_backups = p.get("DeleteAutomatedBackups")
    delete_backups = True if delete_backups is None else bool(delete_backups)
    if with_instances:
        # One call: every instance, then the cluster (which goes after them, below).
        for member in members:
            _start_instance_delete(backend, member)
    cluster._status = "deleting"
    _bump_gen(cluster)
    key = (backend.account_id, backend.region_name)

    def run() -> None:
        if backend.clusters.get(cluster_id) is not cluster:
            return
        if cluster._members:  # an instance still being deleted: the cluster goes after it
            PEER.schedule(0.05, run)
            return
        backend.clusters.pop(cluster_id)
        if delete_backups:
            for sid, snap in list(backend.cluster_snapshots.items()):
                if getattr(snap, "snapshot_type", None) == "automated" and getattr(
                    getattr(snap, "cluster", None), "db_cluster_identifier", None
                ) == cluster_id:
                    backend.cluster_snapshots.pop(sid, None)
        stale_for = PEER.config["stale_tag_seconds"]
        if stale_for > 0 and cluster.tags:
            PEER.stale.setdefault(key, {})[cluster.arn] = (
                time.monotonic() + stale_for,
                TaggedResource(
                    arn=cluster.arn,
                    tags={t["Key"]: t["Value"] for t in cluster.tags},
                    resource_type="rds:cluster",
                ),
            )

    PEER.schedule(PEER.config["delete_delay"], run)
    return ActionResult({"DBCluster": cluster})


def _max_records(p: Any) -> int:
    value = p.get("MaxRecords")
    if value is None:
        return 100
    if not 20 <= int(value) <= 100:
        raise InvalidParameterValue(f"Invalid value {value} for MaxRecords. Must be between 20 and 100")
    return int(value)


def _encode_marker(last: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "after": last}).encode()).decode()


def _decode_marker(marker: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(marker.encode()))
        after = data["after"]
        if data.get("v") != 1 or not isinstance(after, str):
            raise ValueError
        return after
    except Exception:
        raise InvalidParameterValue(f"Invalid marker: {marker}") from None


def _paginate(items: list[Any], key: Callable[[Any], str], p: Any) -> tuple[list[Any], str | None]:
    """Items sorted by key; the marker names the last key returned, so it survives deletions."""
    limit = _max_records(p)
    start = 0
    marker = p.get("Marker")
    if marker:
        after = _decode_marker(marker)
        start = bisect.bisect_right([key(x) for x in items], after)
    page = items[start : start + limit]
    next_marker = _encode_marker(key(page[-1])) if page and start + limit < len(items) else None
    return page, next_marker


def _filters(p: Any) -> dict[str, list[str]]:
    return {f["Name"]: list(f.get("Values") or []) for f in (p.get("Filters") or [])}


def _describe_db_clusters(self: Any) -> ActionResult:
    p = self.params
    backend = self.backend
    filters = _filters(p)
    backend._filter_resources({}, filters, DBCluster)  # validation only: names and empty values
    ident = p.get("DBClusterIdentifier")
    if ident:
        candidates = [_find_cluster(backend, ident)]
    else:
        candidates = list(backend.clusters.values())
    rest: dict[str, list[str]] = {}
    for name, values in filters.items():
        if name == "db-cluster-id":
            wanted = {cluster_key(v) for v in values}
            candidates = [c for c in candidates if c.db_cluster_identifier in wanted]
        elif name == "engine":
            engines = set(values)
            candidates = [c for c in candidates if c.engine in engines]
        else:
            rest[name] = values
    if rest:
        candidates = list(
            backend._filter_resources({c.db_cluster_identifier: c for c in candidates}, rest, DBCluster).values()
        )
    candidates.sort(key=lambda c: c.db_cluster_identifier)
    page, marker = _paginate(candidates, lambda c: c.db_cluster_identifier, p)
    result: dict[str, Any] = {"DBClusters": page}
    if marker:
        result["Marker"] = marker
    return ActionResult(result)


def _describe_db_instances(self: Any) -> ActionResult:
    p = self.params
    backend = self.backend
    filters = _filters(p)
    backend._filter_resources({}, filters, DBInstance)
    ident = p.get("DBInstanceIdentifier")
    if ident:
        _, plain = arn_resource(ident)
        db = backend.databases.get(plain)
        if db is None:
            raise DBInstanceNotFoundError(plain)
        candidates = [db]
    else:
        candidates = list(backend.databases.values())
    rest: dict[str, list[str]] = {}
    for name, values in filters.items():
        if name == "db-cluster-id":
            wanted = {cluster_key(v) for v in values}
            candidates = [d for d in candidates if (d.db_cluster_identifier or "").lower() in wanted]
        elif name == "db-instance-id":
            wanted = {cluster_key(v) for v in values}
            candidates = [d for d in candidates if d.db_instance_identifier.lower() in wanted]
        elif name == "engine":
            engines = set(values)
            candidates = [d for d in candidates if d.engine in engines]
        else:
            rest[name] = values
    if rest:
        candidates = list(
            backend._filter_resources({d.db_instance_identifier: d for d in candidates}, rest, DBInstance).values()
        )
    candidates.sort(key=lambda d: d.db_instance_identifier.lower())
    page, marker = _paginate(candidates, lambda d: d.db_instance_identifier.lower(), p)
    result: dict[str, Any] = {"DBInstances": page}
    if marker:
        result["Marker"] = marker
    return ActionResult(result)


def _get_resource_for_tagging(self: Any, arn: str) -> Any:
    resource = _orig_get_resource_for_tagging(self, arn)
    if resource is None:
        kind, ident = arn_resource(arn)
        if kind == "cluster":
            raise DBClusterNotFoundError(ident)
        if kind == "db":
            raise DBInstanceNotFoundError(ident)
    return resource


def _add_tags_to_resource(self: Any) -> ActionResult:
    arn = self.params.get("ResourceName") or ""
    resource = _get_resource_for_tagging(self.backend, arn)
    existing = {t["Key"]: t.get("Value", "") for t in (getattr(resource, "tags", None) or [])}
    validate_tags(self.params.get("Tags"), existing)
    return _orig_add_tags_response(self)


def _describe_db_engine_versions(self: Any) -> ActionResult:
    p = self.params
    engine = p.get("Engine")
    version = p.get("EngineVersion")
    versions = []
    for entry in PEER.config["engine_versions"]:
        if engine and engine != EXPRESS_ENGINE:
            continue
        if version and not (entry["version"] == version or entry["version"].startswith(version + ".")):
            continue
        if p.get("DefaultOnly") and not entry.get("default"):
            continue
        major = entry["version"].split(".")[0]
        versions.append(
            {
                "Engine": EXPRESS_ENGINE,
                "EngineVersion": entry["version"],
                "DBParameterGroupFamily": f"aurora-postgresql{major}",
                "DBEngineDescription": "Aurora (PostgreSQL)",
                "DBEngineVersionDescription": f"Aurora PostgreSQL (Compatible with PostgreSQL {entry['version']})",
                "Status": "available",
                "SupportsClusters": True,
                "ServerlessV2FeaturesSupport": {
                    "MinCapacity": entry["min_capacity"],
                    "MaxCapacity": entry["max_capacity"],
                },
            }
        )
    page, marker = _paginate(versions, lambda v: v["EngineVersion"], p)
    result: dict[str, Any] = {"DBEngineVersions": page}
    if marker:
        result["Marker"] = marker
    return ActionResult(result)


def _describe_account_attributes(self: Any) -> ActionResult:
    backend = self.backend
    quota = PEER.config["cluster_quota"]
    return ActionResult(
        {
            "AccountQuotas": [
                {"AccountQuotaName": "DBClusters", "Used": len(backend.clusters), "Max": quota},
                {"AccountQuotaName": "DBInstances", "Used": len(backend.databases), "Max": quota},
            ]
        }
    )


def _iter_tagged_resources(self: Any) -> Any:
    # Materialized up front: moto's GetResources keeps this generator between pages, and a lazy walk
    # over the live dicts fails ("dictionary changed size") when a cluster is created or deleted
    # between two pages.
    items = list(_orig_iter_tagged_resources(self))
    stale = PEER.stale.get((self.account_id, self.region_name), {})
    if stale:
        now = time.monotonic()
        for arn, (expiry, _) in list(stale.items()):
            if expiry <= now:
                del stale[arn]
        live = {c.arn for c in self.clusters.values()}
        items.extend(res for arn, (_, res) in stale.items() if arn not in live)
    return iter(items)


def _tagging_get_resources(self: Any) -> ActionResult:
    # moto always applies TagsPerPage (default 100, and a page may not reach it): with envctl's dozen
    # tags per cluster that is 8 clusters a page. AWS documents no default and recommends
    # ResourcesPerPage instead; a given TagsPerPage caps the tags of a page, a resource never split.
    from moto.resourcegroupstaggingapi.exceptions import ResourceGroupsTaggingAPIError

    tags_given = self._get_param("TagsPerPage")
    tags_per_page = int(tags_given) if tags_given is not None else None
    resources_per_page = self._get_int_param("ResourcesPerPage", 50)
    if tags_per_page is not None and tags_per_page not in range(100, 501):
        raise ResourceGroupsTaggingAPIError("InvalidParameterException", "TagsPerPage must be between 100 and 500")
    if resources_per_page not in range(1, 101):
        raise ResourceGroupsTaggingAPIError("InvalidParameterException", "ResourcesPerPage must be between 1 and 100")
    token, resources = self.backend.get_resources(
        pagination_token=self._get_param("PaginationToken"),
        tag_filters=self._get_param("TagFilters", []),
        resources_per_page=resources_per_page,
        # moto stops a page when the tags would *reach* the limit: +1 lets a page hold exactly as many
        tags_per_page=(tags_per_page + 1) if tags_per_page is not None else 1_000_000,
        resource_type_filters=self._get_param("ResourceTypeFilters", []),
        resource_arn_list=self._get_param("ResourceARNList", []),
    )
    return ActionResult(
        {
            "ResourceTagMappingList": [
                {"ResourceARN": r.arn, "Tags": [{"Key": k, "Value": v} for k, v in r.tags.items()]}
                for r in resources
            ],
            "PaginationToken": token,
        }
    )


# ---------------------------------------------------------------------------------------------------
# IAM's policy evaluation, for SimulatePrincipalPolicy (moto has none): the rules of the IAM User
# Guide ("Policy evaluation logic", "Condition operators"), as tests/iam_policy.rs applies them.


def _glob(pattern: str, text: str) -> bool:
    return fnmatch.fnmatchcase(text, pattern.replace("[", "[[]"))


def _values(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in value]
    return [str(value).lower() if isinstance(value, bool) else str(value)]


def _condition_holds(operator: str, key: str, wanted: list[str], context: dict[str, list[str]]) -> bool:
    qualifier = None
    if ":" in operator:
        qualifier, operator = operator.split(":", 1)
    if_exists = operator.endswith("IfExists")
    if if_exists:
        operator = operator[: -len("IfExists")]
    present = context.get(key)
    if operator == "Null":
        return any((w == "true") == (present is None) for w in wanted)
    negated = "Not" in operator
    if present is None:
        if qualifier == "ForAnyValue":
            return False
        if qualifier == "ForAllValues":
            return True
        return if_exists or negated

    def matches(value: str) -> bool:
        for w in wanted:
            if operator in ("StringEquals", "StringNotEquals", "Bool") and w == value:
                return True
            if operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase") and w.lower() == value.lower():
                return True
            if operator in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike") and _glob(w, value):
                return True
        return False

    def one(value: str) -> bool:
        return not matches(value) if negated else matches(value)

    if qualifier == "ForAnyValue":
        return any(one(v) for v in present)
    if qualifier == "ForAllValues":
        return all(one(v) for v in present)
    return one(present[0])


def _statement_applies(statement: dict[str, Any], action: str, resource: str, context: dict[str, list[str]]) -> bool:
    if not any(_glob(a.lower(), action.lower()) for a in _values(statement.get("Action", []))):
        return False
    if not any(_glob(r, resource) for r in _values(statement.get("Resource", []))):
        return False
    for operator, keys in (statement.get("Condition") or {}).items():
        for key, wanted in keys.items():
            if not _condition_holds(operator, key, _values(wanted), context):
                return False
    return True


def evaluate(documents: list[dict[str, Any]], action: str, resource: str, context: dict[str, list[str]]) -> str:
    """`allowed`, `explicitDeny` or `implicitDeny`, as SimulatePrincipalPolicy answers."""
    decision = "implicitDeny"
    for document in documents:
        statements = document.get("Statement", [])
        if isinstance(statements, dict):
            statements = [statements]
        for statement in statements:
            if _statement_applies(statement, action, resource, context):
                if statement.get("Effect") == "Deny":
                    return "explicitDeny"
                decision = "allowed"
    return decision


def _policy_documents(backend: Any, arn: str) -> list[dict[str, Any]]:
    from urllib.parse import unquote

    kind, _, name = arn.split(":")[-1].partition("/")
    name = name.rsplit("/", 1)[-1]
    entity = backend.get_role(name) if kind == "role" else backend.get_user(name)
    texts = list(entity.policies.values())
    texts += [p.document for p in entity.managed_policies.values()]
    out = []
    for text in texts:
        text = text if isinstance(text, str) else json.dumps(text)
        out.append(json.loads(unquote(text) if text.startswith("%") else text))
    return out


def _simulate_principal_policy(self: Any) -> ActionResult:
    query = self.querystring
    first = lambda key: (query.get(key) or [None])[0]  # noqa: E731
    source = first("PolicySourceArn") or ""
    members = lambda prefix: [  # noqa: E731
        first(f"{prefix}.member.{i}") for i in range(1, 1000) if first(f"{prefix}.member.{i}") is not None
    ]
    actions = members("ActionNames")
    resources = members("ResourceArns") or ["*"]
    context: dict[str, list[str]] = {}
    for i in range(1, 1000):
        key = first(f"ContextEntries.member.{i}.ContextKeyName")
        if key is None:
            break
        context[key] = members(f"ContextEntries.member.{i}.ContextKeyValues")
    documents = _policy_documents(self.backend, source)
    results = []
    for action in actions:
        for resource in resources:
            results.append(
                {
                    "EvalActionName": action,
                    "EvalResourceName": resource,
                    "EvalDecision": evaluate(documents, action, resource, context),
                }
            )
    return ActionResult({"EvaluationResults": results, "IsTruncated": False})


def install_patches() -> None:
    import moto.backends

    # moto lists its own package directory (a few hundred stat calls) on every request to route it.
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules
    from moto.resourcegroupstaggingapi.responses import ResourceGroupsTaggingAPIResponse

    ResourceGroupsTaggingAPIResponse.get_resources = _tagging_get_resources
    DBCluster.status = property(_status_get, _status_set)
    DBCluster._members = property(_cluster_members)
    RDSBackend.create_db_instance = _create_db_instance_backend
    RDSBackend.create_auto_snapshot = _create_auto_snapshot
    RDSBackend.iter_tagged_resources = _iter_tagged_resources
    RDSBackend._get_resource_for_tagging = _get_resource_for_tagging
    RDSResponse.create_db_cluster = _create_db_cluster
    RDSResponse.create_db_instance = _instance_delay_create
    RDSResponse.modify_db_cluster = _modify_db_cluster
    RDSResponse.restore_db_cluster_to_point_in_time = _restore_db_cluster_to_point_in_time
    RDSResponse.delete_db_cluster = _delete_db_cluster
    RDSResponse.delete_db_instance = _delete_db_instance
    RDSResponse.describe_db_clusters = _describe_db_clusters
    RDSResponse.describe_db_instances = _describe_db_instances
    RDSResponse.add_tags_to_resource = _add_tags_to_resource
    RDSResponse.describe_db_engine_versions = _describe_db_engine_versions
    RDSResponse.describe_account_attributes = _describe_account_attributes
    from moto.iam.responses import IamResponse

    IamResponse.simulate_principal_policy = _simulate_principal_policy


def rds_backend(account: str | None, region: str | None) -> Any:
    return rds_models.rds_backends[account or DEFAULT_ACCOUNT][region or DEFAULT_REGION]


# ---------------------------------------------------------------------------------------------------
# Control API (/_peer/...).


class ControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def seed_clusters(body: dict[str, Any]) -> dict[str, Any]:
    count = int(body.get("count", 0))
    if count < 0 or count > 100_000:
        raise ControlError(400, "count must be between 0 and 100000")
    prefix = str(body.get("id_prefix") or "seed")
    start = int(body.get("start", 0))
    tags_template = body.get("tags") or {}
    if not isinstance(tags_template, dict):
        raise ControlError(400, "tags must be an object of key: value")
    scaling = body.get("scaling") or {"MinCapacity": 0.0, "MaxCapacity": 4.0}
    status = str(body.get("status") or "available")
    engine_version = str(body.get("engine_version") or PEER.config["default_engine_version"])
    protect = bool(body.get("deletion_protection", False))
    width = max(4, len(str(start + count - 1)))
    backend = rds_backend(body.get("account"), body.get("region"))
    joiner = "" if prefix.endswith("-") else "-"
    ids = [f"{prefix}{joiner}{i:0{width}d}" for i in range(start, start + count)]
    for ident in ids:
        if not valid_cluster_id(ident):
            raise ControlError(400, f"invalid cluster identifier {ident!r}")
        if ident.lower() in backend.clusters:
            raise ControlError(409, f"cluster {ident!r} already exists")
    for n, ident in zip(range(start, start + count), ids):
        tags = [
            {"Key": str(k).format(i=n, id=ident), "Value": str(v).format(i=n, id=ident)}
            for k, v in tags_template.items()
        ]
        validate_tags(tags)
        cluster = DBCluster(
            backend,
            db_cluster_identifier=ident,
            engine=EXPRESS_ENGINE,
            engine_version=engine_version,
            master_username="postgres",
            master_user_password="unused-peer-password",
            tags=tags,
            deletion_protection=protect,
            storage_encrypted=True,
            enable_iam_database_authentication=True,
            serverless_v2_scaling_configuration=dict(scaling),
        )
        _express_defaults(cluster, vpc=False, igw=True, no_password=True)
        cluster.__dict__["_peer_express"] = True
        cluster._status = status
        backend.clusters[cluster.db_cluster_identifier] = cluster
        # The writer follows the states an instance shares with its cluster; other states stay cluster-only.
        _writer_instance(backend, cluster, False, status if status in ("available", "stopped", "creating") else "available")
    return {"created": ids}


def peer_state(ident: str, region: str | None) -> dict[str, Any]:
    """What the API does not show of a cluster: the source it was restored from and how its master
    user logs in."""
    cluster = rds_backend(None, region).clusters.get(ident)
    if cluster is None:
        raise ControlError(404, f"no cluster {ident!r}")
    return {
        "source": cluster.__dict__.get("_peer_source"),
        "master_auth": cluster.__dict__.get("_peer_master_auth", "iam-db-auth"),
        "iam_auth": bool(getattr(cluster, "iam_database_authentication_enabled", False)),
        "vpc": bool(getattr(cluster, "vpc_networking_enabled", True)),
    }


def set_status(body: dict[str, Any]) -> dict[str, Any]:
    backend = rds_backend(body.get("account"), body.get("region"))
    status = body.get("status")
    if not isinstance(status, str) or not status:
        raise ControlError(400, "status is required")
    if body.get("cluster"):
        cluster = backend.clusters.get(cluster_key(body["cluster"]))
        if cluster is None:
            raise ControlError(404, f"no cluster {body['cluster']!r}")
        gen = _bump_gen(cluster)
        cluster._status = status
        instance_status = body.get("instance_status")
        if instance_status:
            for member in cluster._members:
                member.status = instance_status
        then = body.get("then")
        if then and body.get("seconds") is not None:

            def revert() -> None:
                if backend.clusters.get(cluster.db_cluster_identifier) is cluster and _cluster_gen(cluster) == gen:
                    cluster._status = then
                    if instance_status:
                        for member in cluster._members:
                            member.status = body.get("then_instance_status") or then

            PEER.schedule(float(body["seconds"]), revert)
        return {"cluster": cluster.db_cluster_identifier, "status": status}
    if body.get("instance"):
        db = backend.databases.get(body["instance"])
        if db is None:
            raise ControlError(404, f"no instance {body['instance']!r}")
        db.status = status
        db.__dict__["_peer_gen"] = db.__dict__.get("_peer_gen", 0) + 1
        return {"instance": db.db_instance_identifier, "status": status}
    raise ControlError(400, "name a cluster or an instance")


def strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


CONFIG_TYPES: dict[str, Callable[[Any], Any]] = {
    "create_delay": float,
    "delete_delay": float,
    "modify_delay": float,
    "modify_lag": float,
    "fault_rate": float,
    "fault_throttle_share": float,
    "fault_after_share": float,
    "stale_tag_seconds": float,
    "max_clusters": int,
    "default_engine_version": str,
    "express_rejects_database_name": strict_bool,
    "strict_member_delete": strict_bool,
    "rds_throttle_code": str,
    "express_rejects_engine_version": strict_bool,
    "cluster_quota": int,
    "clone_rejects_no_vpc": strict_bool,
    "writer_after_share": float,
}


def parse_engine_versions(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ControlError(400, "engine_versions must be a list of {version, min_capacity, max_capacity, default}")
    out = []
    for entry in value:
        try:
            item = {
                "version": str(entry["version"]),
                "min_capacity": float(entry["min_capacity"]),
                "max_capacity": float(entry["max_capacity"]),
                "default": strict_bool(entry.get("default", False)),
            }
        except (KeyError, TypeError, ValueError):
            raise ControlError(400, f"bad engine version entry {entry!r}") from None
        out.append(item)
    return out


def update_config(body: dict[str, Any]) -> dict[str, Any]:
    new = dict(PEER.config)
    for key, value in body.items():
        if key == "latency_ms":
            new[key] = parse_latency(value)
        elif key == "fault_actions":
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise ControlError(400, "fault_actions must be a list of action names")
            new[key] = value
        elif key == "engine_versions":
            new[key] = parse_engine_versions(value)
        elif key == "seed":
            PEER.fault_rng.seed(value)
            PEER.latency_rng.seed(None if value is None else int(value) + 1)
            PEER.seed = value
        elif key in CONFIG_TYPES:
            try:
                new[key] = CONFIG_TYPES[key](value)
            except (TypeError, ValueError):
                raise ControlError(400, f"bad value for {key}: {value!r}") from None
        else:
            raise ControlError(400, f"unknown config key {key!r} (known: {sorted(list(CONFIG_TYPES) + ['latency_ms', 'fault_actions', 'seed', 'engine_versions'])})")
    if not 0 <= new["fault_rate"] <= 1:
        raise ControlError(400, "fault_rate must be between 0 and 1")
    if not 0 <= new["writer_after_share"] <= 1:
        raise ControlError(400, "writer_after_share must be between 0 and 1")
    PEER.config = new
    return config_view()


def config_view() -> dict[str, Any]:
    view = dict(PEER.config)
    view["seed"] = PEER.seed
    return view


def parse_latency(value: Any) -> list[float]:
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 1:
            parts = parts * 2
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, (int, float)):
        parts = [value, value]
    else:
        raise ControlError(400, "latency_ms must be MIN:MAX or [MIN, MAX]")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise ControlError(400, f"bad latency {value!r}: expected MIN:MAX milliseconds") from None
    if lo < 0 or hi < lo:
        raise ControlError(400, f"bad latency {value!r}: need 0 <= MIN <= MAX")
    return [lo, hi]


FAULTS = ("throttle", "500", "500-after", "access-denied", "cluster-not-found")


def fault_next(body: dict[str, Any]) -> dict[str, Any]:
    fault = body.get("fault")
    if fault not in FAULTS:
        raise ControlError(400, f"fault must be one of {', '.join(FAULTS)}")
    entry = {
        "action": body.get("action"),
        "service": body.get("service"),
        "fault": fault,
        "count": int(body.get("count", 1)),
    }
    PEER.forced.append(entry)
    return {"queued": PEER.forced}


def add_hold(body: dict[str, Any]) -> dict[str, Any]:
    for key in body:
        if key not in ("action", "service", "match", "skip", "timeout"):
            raise ControlError(400, f"unknown hold key {key!r} (known: action, service, match, skip, timeout)")
    try:
        skip = int(body.get("skip", 0))
        timeout = float(body.get("timeout", 300))
    except (TypeError, ValueError):
        raise ControlError(400, "skip must be a count and timeout seconds") from None
    if skip < 0 or not 0 < timeout <= 3600:
        raise ControlError(400, "skip must be 0 or more and timeout between 0 and 3600 seconds")
    with PEER.holds_lock:
        hold = Hold(len(PEER.holds) + 1, body)
        PEER.holds.append(hold)
        return hold.view()


def release_holds(body: dict[str, Any]) -> dict[str, Any]:
    """Releases the hold `id`, or every hold."""
    with PEER.holds_lock:
        chosen = [h for h in PEER.holds if body.get("id") in (None, h.id)]
        if not chosen:
            raise ControlError(404, f"no hold {body.get('id')!r}")
        for hold in chosen:
            hold.released.set()
        return {"released": [h.id for h in chosen]}


def reset_all() -> dict[str, Any]:
    from moto.moto_api._internal import moto_api_backend

    moto_api_backend.reset()
    PEER.events.clear()
    PEER.stale.clear()
    PEER.forced.clear()
    with PEER.holds_lock:
        for hold in PEER.holds:
            hold.released.set()
        PEER.holds.clear()
    PEER.reset_calls()
    return {"reset": True}


def control(environ: dict[str, Any], body: bytes) -> tuple[int, Any]:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        raise ControlError(400, "body must be JSON") from None
    if method == "POST" and not isinstance(data, dict):
        raise ControlError(400, "body must be a JSON object")
    if path == "/_peer/calls" and method == "GET":
        since = int(query.get("since", 0))
        return 200, PEER.calls_json(since, query.get("action"), query.get("service"))
    if path == "/_peer/calls/reset" and method == "POST":
        PEER.reset_calls()
        return 200, {"reset": True}
    if path == "/_peer/holds" and method == "GET":
        with PEER.holds_lock:
            return 200, [h.view() for h in PEER.holds]
    if path == "/_peer/health" and method == "GET":
        return 200, {"ok": True, "uptime": time.time() - PEER.started}
    if path == "/_peer/config" and method == "GET":
        return 200, config_view()
    with PEER.lock:
        PEER.sweep()
        if path == "/_peer/config" and method == "POST":
            return 200, update_config(data)
        if path == "/_peer/seed-clusters" and method == "POST":
            return 200, seed_clusters(data)
        if path == "/_peer/set-status" and method == "POST":
            return 200, set_status(data)
        if path == "/_peer/fault-next" and method == "POST":
            return 200, fault_next(data)
        if path == "/_peer/hold" and method == "POST":
            return 200, add_hold(data)
        if path == "/_peer/release" and method == "POST":
            return 200, release_holds(data)
        if path == "/_peer/reset" and method == "POST":
            return 200, reset_all()
        if path == "/_peer/cluster" and method == "GET":
            return 200, peer_state(query.get("id", ""), query.get("region"))
    raise ControlError(404, f"no control endpoint {method} {path}")


# ---------------------------------------------------------------------------------------------------
# WSGI middleware.

def parse_call(environ: dict[str, Any], body: bytes) -> tuple[str, str, str, dict[str, Any]]:
    """(service, region, action, params) of an AWS request, from its signature scope and body."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = CRED_SCOPE_RE.search(auth)
    region, signing = (match.group(1), match.group(2)) if match else (DEFAULT_REGION, "")
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if signing == "tagging" or target.startswith("ResourceGroupsTaggingAPI"):
        action = target.split(".")[-1]
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            params = {"_raw": body.decode("utf-8", "replace")}
        return "tagging", region, action, params
    values = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    content_type = environ.get("CONTENT_TYPE", "")
    if body and content_type.startswith("application/x-www-form-urlencoded"):
        values.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    action = values.get("Action", target.split(".")[-1] if target else "")
    service = signing or "unknown"
    params: dict[str, Any] = {k: v for k, v in values.items() if k not in ("Action", "Version")}
    if signing == "rds" and action:
        try:
            operation = get_service_model("rds").operation_model(action)
            params = QueryParser(operation, map_type=dict).parse({"values": values})
        except Exception:  # an action botocore does not know: keep the flat form
            log.debug("could not parse %s parameters", action, exc_info=True)
        for name, kind in NEWER_MODEL_PARAMS.get(action, {}).items():
            if name in values:
                params[name] = values[name] == "true" if kind == "boolean" else values[name]
    return service, region, action, params


def error_response(service: str, status: int, code: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    request_id = str(uuid.uuid4())
    if service == "tagging":
        body = json.dumps({"__type": code, "Message": message}).encode()
        ctype = "application/x-amz-json-1.1"
    else:
        kind = "Sender" if status < 500 else "Receiver"
        message = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        body = (
            f'<ErrorResponse xmlns="{RDS_XMLNS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        ctype = "text/xml"
    reason = {400: "Bad Request", 500: "Internal Server Error", 501: "Not Implemented"}.get(status, "Error")
    headers = [
        ("Content-Type", ctype),
        ("Content-Length", str(len(body))),
        ("x-amzn-RequestId", request_id),
    ]
    return f"{status} {reason}", headers, body


def fault_response(service: str, fault: str) -> tuple[str, list[tuple[str, str]], bytes]:
    if fault == "access-denied":
        # What IAM answers when a policy denies the call (the apply role deleting a protected
        # environment, say).
        return error_response(
            service,
            403,
            "AccessDenied",
            "User: arn:aws:sts::123456789012:assumed-role/envctl-apply/GitHubActions is not authorized to perform this operation with an explicit deny in an identity-based policy",
        )
    if fault == "cluster-not-found":
        # What AWS answers a DescribeDBClusters by one missing id; forced on a filtered describe, it
        # shows whether a client takes it for "none" there (it must not).
        return error_response(service, 404, "DBClusterNotFoundFault", "DBCluster not found.")
    if fault == "throttle":
        # RDS answers `Throttling` (type Sender), the tagging API its modelled `ThrottledException`.
        code = "ThrottledException" if service == "tagging" else PEER.config["rds_throttle_code"]
        return error_response(service, 400, code, "Rate exceeded")
    code = "InternalServiceException" if service == "tagging" else "InternalFailure"
    return error_response(
        service,
        500,
        code,
        "The request processing has failed because of an unknown error, exception or failure.",
    )


def unexpected_response(service: str, action: str, error: Exception) -> tuple[str, list[tuple[str, str]], bytes]:
    from botocore.model import OperationNotFoundError

    if isinstance(error, OperationNotFoundError):
        return error_response(service, 400, "InvalidAction", f"Could not find operation {action}")
    if isinstance(error, NotImplementedError):
        log.warning("not implemented by moto: %s %s", service, action)
        return error_response(service, 501, "NotImplemented", f"The AWS peer (moto) does not implement {action}: {error}")
    log.warning("%s %s failed inside the peer", service, action, exc_info=True)
    return error_response(service, 500, "InternalFailure", f"AWS peer error in {action}: {type(error).__name__}: {error}")


ERROR_CODE_RE = re.compile(rb"<Code>([^<]*)</Code>")


def error_code(body: bytes) -> str | None:
    m = ERROR_CODE_RE.search(body[:4096])
    if m:
        return m.group(1).decode()
    if body[:1] == b"{":
        try:
            data = json.loads(body)
            code = data.get("__type")
            return code.split("#")[-1] if code else None
        except ValueError:
            return None
    return None


class PeerApp:
    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_peer/"):
            return self.control(environ, body, start_response)
        return self.aws(environ, body, start_response)

    def control(self, environ: dict[str, Any], body: bytes, start_response: Any) -> Any:
        try:
            status, payload = control(environ, body)
        except ControlError as e:
            status, payload = e.status, {"error": str(e)}
        except Exception as e:  # report, do not die
            log.exception("control endpoint failed")
            status, payload = 500, {"error": f"{type(e).__name__}: {e}"}
        data = (payload if isinstance(payload, str) else json.dumps(payload, default=_json_default)).encode()
        start_response(
            f"{status} {'OK' if status == 200 else 'Error'}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def aws(self, environ: dict[str, Any], body: bytes, start_response: Any) -> Any:
        arrived = time.time()
        service, region, action, params = parse_call(environ, body)
        hold_call(service, action, params)
        with PEER.lock:
            fault = PEER.decide_fault(service, action)
            delay = PEER.latency()
        if delay > 0:
            time.sleep(delay)
        if fault in ("throttle", "500", "access-denied", "cluster-not-found"):
            status, headers, out = fault_response(service, fault)
        else:
            captured: dict[str, Any] = {}

            def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                captured["status"] = status
                captured["headers"] = headers
                return lambda data: None

            try:
                with PEER.lock:
                    PEER.sweep()
                    chunks = self.moto(environ, capture)
                    try:
                        out = b"".join(chunks)
                    finally:
                        if hasattr(chunks, "close"):
                            chunks.close()
                status, headers = captured["status"], captured["headers"]
            except Exception as e:  # moto raised instead of answering: answer as AWS would, say why
                status, headers, out = unexpected_response(service, action, e)
            if fault == "500-after":
                status, headers, out = fault_response(service, fault)
        code = int(status.split()[0])
        PEER.record(
            {
                "service": service,
                "action": action,
                "time": arrived,
                "region": region,
                "params": params,
                "fault": fault,
                "status": code,
                "error": error_code(out) if code >= 400 else None,
            }
        )
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s -> %s%s", service, action, code, f" (fault {fault})" if fault else "")
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(out))))
        start_response(status, headers)
        return [out]


def hold_call(service: str, action: str, params: dict[str, Any]) -> None:
    """Keeps this call waiting while a hold takes it (outside the lock: other calls go on)."""
    with PEER.holds_lock:
        if not PEER.holds:
            return
        text = json.dumps(params, default=_json_default)
        hold = next((h for h in PEER.holds if h.takes(service, action, text)), None)
    if hold is not None:
        if not hold.released.wait(hold.timeout):
            log.warning("hold %s of %s was never released; letting the call go", hold.id, action)


def warm_up(app: PeerApp) -> None:
    """Builds moto's RDS and tagging apps and backends now, so the first real call is not slow."""
    from werkzeug.test import EnvironBuilder

    for service, target, data, ctype in (
        ("rds", None, "Action=DescribeDBClusters&Version=2014-10-31", "application/x-www-form-urlencoded"),
        (
            "tagging",
            "ResourceGroupsTaggingAPI_20170126.GetResources",
            '{"ResourceTypeFilters": ["rds:cluster"]}',
            "application/x-amz-json-1.1",
        ),
    ):
        headers = {
            "Authorization": f"AWS4-HMAC-SHA256 Credential=test/20260101/{DEFAULT_REGION}/{service}/aws4_request, "
            "SignedHeaders=host, Signature=0",
        }
        if target:
            headers["X-Amz-Target"] = target
        env = EnvironBuilder(path="/", method="POST", data=data, content_type=ctype, headers=headers).get_environ()
        result = app.moto(env, lambda *a, **k: (lambda d: None))
        b"".join(result)


def make_app(config: dict[str, Any] | None = None, seed: int | None = None) -> PeerApp:
    global PEER
    PEER = Peer(config or {}, seed)
    install_patches()
    return PeerApp()


# ---------------------------------------------------------------------------------------------------
# Command line.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="AWS API peer: moto + Aurora express behaviour")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--create-delay", type=float, default=0.0, metavar="SECONDS",
                        help="a new cluster and its writer stay `creating` this long (default 0)")
    parser.add_argument("--delete-delay", type=float, default=0.0, metavar="SECONDS",
                        help="a deleted instance or cluster stays `deleting` this long, then is gone (default 0)")
    parser.add_argument("--modify-delay", type=float, default=0.0, metavar="SECONDS",
                        help="ModifyDBCluster's new values become visible after this long (default 0)")
    parser.add_argument("--modify-lag", type=float, default=0.0, metavar="SECONDS",
                        help="after ModifyDBCluster, still `available` with the old values this long, then `modifying`")
    parser.add_argument("--fault-rate", type=float, default=0.0, metavar="F",
                        help="fraction of AWS calls that fail (throttle or HTTP 500)")
    parser.add_argument("--fault-throttle-share", type=float, default=0.5, metavar="F",
                        help="share of the faults that are throttling, the rest are 500s (default 0.5)")
    parser.add_argument("--fault-after-share", type=float, default=0.5, metavar="F",
                        help="share of the 500s that come after the call took effect (default 0.5)")
    parser.add_argument("--fault-actions", default="", metavar="A,B", help="only these actions get random faults")
    parser.add_argument("--latency-ms", default="0:0", metavar="MIN:MAX", help="random latency added per AWS call")
    parser.add_argument("--seed", type=int, default=None, help="makes faults and latency repeatable")
    parser.add_argument("--stale-tag-seconds", type=float, default=0.0, metavar="SECONDS",
                        help="tag:GetResources keeps listing a deleted cluster this long (default 0)")
    parser.add_argument("--max-clusters", type=int, default=0, metavar="N",
                        help="DBClusterQuotaExceededFault past N clusters per Region (default 0: no limit)")
    parser.add_argument("--default-engine-version", default="16.6", metavar="VERSION",
                        help="EngineVersion of an aurora-postgresql cluster created without one (default 16.6)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log calls (-vv: and HTTP)")
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="aws-peer %(asctime)s %(levelname)s %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose > 1 else logging.ERROR)
    if not 0 <= args.fault_rate <= 1:
        parser.error("--fault-rate must be between 0 and 1")
    try:
        latency = parse_latency(args.latency_ms)
    except ControlError as e:
        parser.error(str(e))
    config = {
        "create_delay": args.create_delay,
        "delete_delay": args.delete_delay,
        "modify_delay": args.modify_delay,
        "modify_lag": args.modify_lag,
        "fault_rate": args.fault_rate,
        "fault_throttle_share": args.fault_throttle_share,
        "fault_after_share": args.fault_after_share,
        "fault_actions": [a for a in args.fault_actions.split(",") if a],
        "latency_ms": latency,
        "stale_tag_seconds": args.stale_tag_seconds,
        "max_clusters": args.max_clusters,
        "default_engine_version": args.default_engine_version,
    }
    app = make_app(config, args.seed)
    warm_up(app)
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    server.daemon_threads = True
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.1), name="aws-peer", daemon=True)
    thread.start()
    host = args.host if ":" not in args.host else f"[{args.host}]"
    sys.stdout.write(f"listening on http://{host}:{server.server_port}\n")
    sys.stdout.flush()
    while not stop.wait(3600):
        pass
    server.shutdown()
    server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
