#!/usr/bin/env python3
"""The AWS API peer's own test: starts peer.py on a free port (as the Rust tests do) and checks, with
boto3, every behaviour that README.md promises. Each check runs on its own: it starts from a reset
peer with the default configuration (a new peer if the last one died) and makes what it needs, so a
failure hides no other. Every failure is reported with its message; the last line is
`N passed, M failed`, and the exit status is 1 when any failed.

    "$(bash scripts/aws-peer/setup.sh --print-python)" scripts/aws-peer/selftest.py [-k SUBSTRING] [-v]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_PY = os.path.join(HERE, "peer.py")
REGION = "us-east-1"
ACCOUNT = "123456789012"
TIMINGS: dict[str, str] = {}


class Failure(Exception):
    pass


def check(condition: Any, message: str) -> None:
    if not condition:
        raise Failure(message)


# ---------------------------------------------------------------------------------------------------
# Running the peer.


class PeerProcess:
    def __init__(self, *args: str):
        self.args = list(args)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, PEER_PY, "--port", "0", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line_box: list[str] = []
        reader = threading.Thread(target=lambda: line_box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        line = line_box[0] if line_box else ""
        self.startup = time.monotonic() - started
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", line)
        if not match:
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise Failure(f"peer did not print its listening line within 30 s; got {line!r}; stderr:\n{err}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, service: str, retries: int = 1) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"total_max_attempts": retries, "mode": "standard"}),
        )

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise Failure(f"control {method} {path} answered {e.code}: {e.read().decode()}") from None

    def calls(self, **query: Any) -> list[dict[str, Any]]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return self.control("GET", "/_peer/calls" + (f"?{qs}" if qs else ""))

    def config(self, **values: Any) -> dict[str, Any]:
        return self.control("POST", "/_peer/config", values)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"peer did not exit within 10 s of signal {sig}") from None


def expect_error(code: str, fn: Callable[..., Any], *args: Any, status: int | None = None, **kwargs: Any) -> ClientError:
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"{fn.__name__}: expected error {code}, got {got}: {e}")
        if status is not None:
            got_status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            check(got_status == status, f"{fn.__name__}: expected HTTP {status} with {code}, got {got_status}")
        return e
    raise Failure(f"{fn.__name__}({kwargs}): expected error {code}, but the call succeeded")


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def express(rds: Any, ident: str, **extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "DBClusterIdentifier": ident,
        "Engine": "aurora-postgresql",
        "WithExpressConfiguration": True,
        "ServerlessV2ScalingConfiguration": {"MinCapacity": 0, "MaxCapacity": 4},
        "DeletionProtection": False,
        "Tags": [{"Key": "envctl:managed", "Value": "true"}, {"Key": "envctl:repo", "Value": "acme/shop"}],
    }
    kwargs.update(extra)
    return rds.create_db_cluster(**kwargs)["DBCluster"]


LOGIN = "envctl-feature-login-1a2b3c4d"


def login_cluster(rds: Any) -> dict[str, Any]:
    """The express cluster most checks work on, as a branch's environment looks."""
    return express(rds, LOGIN, DatabaseName="shop")


def seed_pages(peer: PeerProcess) -> list[str]:
    """250 available clusters with writers, of repository acme/pages: more than two pages."""
    return peer.control("POST", "/_peer/seed-clusters", {
        "count": 250, "id_prefix": "pg", "tags": {"envctl:managed": "true", "envctl:repo": "acme/pages", "envctl:branch": "b-{i}"},
    })["created"]


def cluster(rds: Any, ident: str) -> dict[str, Any]:
    return rds.describe_db_clusters(DBClusterIdentifier=ident)["DBClusters"][0]


def teardown(rds: Any, ident: str) -> None:
    """What envctl does: delete each member, wait until gone, delete the cluster, wait until gone."""
    for member in cluster(rds, ident)["DBClusterMembers"]:
        rds.delete_db_instance(DBInstanceIdentifier=member["DBInstanceIdentifier"])
    wait_until(f"{ident}'s instances gone", lambda: not cluster(rds, ident)["DBClusterMembers"])
    rds.delete_db_cluster(DBClusterIdentifier=ident, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)

    def gone() -> bool:
        try:
            cluster(rds, ident)
            return False
        except ClientError as e:
            return e.response["Error"]["Code"] == "DBClusterNotFoundFault"

    wait_until(f"{ident} gone", gone)


# ---------------------------------------------------------------------------------------------------
# The checks. Each takes the peer, reset to its defaults, and makes what it needs.


def t_listening_line_and_startup(peer: PeerProcess) -> None:
    TIMINGS["start-up (process start to listening line)"] = f"{peer.startup:.2f} s"
    check(peer.startup < 20, f"start-up took {peer.startup:.1f} s")
    health = peer.control("GET", "/_peer/health")
    check(health.get("ok") is True, f"health: {health}")


def t_express_create(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    peer.control("POST", "/_peer/calls/reset", {})
    c = login_cluster(rds)
    check(c["Status"] == "creating", f"create answers status creating, got {c['Status']}")
    check(c["Engine"] == "aurora-postgresql", f"engine {c['Engine']}")
    check(c["EngineVersion"] == "16.6", f"default engine version 16.6, got {c['EngineVersion']}")
    check(c["MasterUsername"] == "postgres", f"master user postgres, got {c.get('MasterUsername')}")
    check(c["IAMDatabaseAuthenticationEnabled"] is True, "IAM database authentication on")
    check(c.get("VPCNetworkingEnabled") is False, f"VPCNetworkingEnabled false, got {c.get('VPCNetworkingEnabled')}")
    check(c.get("InternetAccessGatewayEnabled") is True, "InternetAccessGatewayEnabled true")
    check(c["DatabaseName"] == "shop", f"DatabaseName kept, got {c.get('DatabaseName')}")
    check(c["DeletionProtection"] is False, "DeletionProtection kept")
    check(c["Port"] == 5432, f"port 5432, got {c.get('Port')}")
    scaling = c["ServerlessV2ScalingConfiguration"]
    check(scaling["MinCapacity"] == 0 and scaling["MaxCapacity"] == 4, f"scaling kept: {scaling}")
    check(scaling.get("SecondsUntilAutoPause") == 300, f"auto-pause default 300 s with 0 ACU: {scaling}")
    tags = {t["Key"]: t["Value"] for t in c["TagList"]}
    check(tags == {"envctl:managed": "true", "envctl:repo": "acme/shop"}, f"tags kept: {tags}")
    members = c["DBClusterMembers"]
    check(
        members == [
            {
                "DBInstanceIdentifier": "envctl-feature-login-1a2b3c4d-instance-1",
                "IsClusterWriter": True,
                "DBClusterParameterGroupStatus": "in-sync",
                "PromotionTier": 1,
            }
        ],
        f"one writer member: {members}",
    )
    inst = rds.describe_db_instances(DBInstanceIdentifier="envctl-feature-login-1a2b3c4d-instance-1")["DBInstances"][0]
    check(inst["DBInstanceClass"] == "db.serverless", f"writer class db.serverless: {inst['DBInstanceClass']}")
    check(inst["DBClusterIdentifier"] == "envctl-feature-login-1a2b3c4d", "writer belongs to the cluster")
    check(inst["Engine"] == "aurora-postgresql", "writer engine")
    # create delay 0: available at the next read, as is the writer
    check(cluster(rds, "envctl-feature-login-1a2b3c4d")["Status"] == "available", "available after a create delay of 0")
    calls = peer.calls(action="CreateDBCluster")
    check(len(calls) == 1, f"one CreateDBCluster in the call log: {calls}")
    params = calls[0]["params"]
    check(params.get("WithExpressConfiguration") is True, f"call log records WithExpressConfiguration: {params}")
    check(params["ServerlessV2ScalingConfiguration"] == {"MinCapacity": 0.0, "MaxCapacity": 4.0}, f"structured params: {params}")
    check(params["Tags"][0] == {"Key": "envctl:managed", "Value": "true"}, f"tags in the call log: {params}")
    check("MasterUsername" not in params, "no MasterUsername was sent")
    check(calls[0]["service"] == "rds" and calls[0]["fault"] is None and calls[0]["status"] == 200, f"call entry: {calls[0]}")
    check(isinstance(calls[0]["time"], float) and abs(calls[0]["time"] - time.time()) < 60, "call time is unix seconds")


def t_duplicate_and_identifiers(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    login_cluster(rds)
    expect_error("DBClusterAlreadyExistsFault", express, rds, "envctl-feature-login-1a2b3c4d")
    expect_error("DBClusterAlreadyExistsFault", express, rds, "ENVCTL-Feature-Login-1a2b3c4d")
    for bad in ["1abc", "a--b", "abc-", "a_b", "a.b", "a" * 64, "-abc", "ab c", "é"]:
        expect_error("InvalidParameterValue", express, rds, bad)
    ok = "a" + "b" * 62
    express(rds, ok)
    upper = express(rds, "MixedCase-1")
    check(upper["DBClusterIdentifier"] == "mixedcase-1", f"identifier stored lower-case: {upper['DBClusterIdentifier']}")
    expect_error("InvalidParameterCombination", express, rds, "mysql-express", Engine="aurora-mysql")
    # a regular (non-express) create keeps moto's rules: master user required, VPC networking on
    expect_error(
        "InvalidParameterValue",
        rds.create_db_cluster,
        DBClusterIdentifier="plain-1",
        Engine="aurora-postgresql",
    )
    plain = rds.create_db_cluster(
        DBClusterIdentifier="plain-1",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="secret-password",
    )["DBCluster"]
    check(plain["VPCNetworkingEnabled"] is True and plain["DBClusterMembers"] == [], f"regular cluster: {plain}")
    for ident in (ok, "mixedcase-1"):
        teardown(rds, ident)
    teardown(rds, "plain-1")


def t_tag_validation(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    arn = login_cluster(rds)["DBClusterArn"]
    expect_error("InvalidParameterValue", rds.add_tags_to_resource, ResourceName=arn, Tags=[{"Key": "b", "Value": "it's"}])
    expect_error("InvalidParameterValue", rds.add_tags_to_resource, ResourceName=arn, Tags=[{"Key": "aws:x", "Value": "1"}])
    expect_error("InvalidParameterValue", rds.add_tags_to_resource, ResourceName=arn, Tags=[{"Key": "v", "Value": "x" * 257}])
    rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "envctl:branch", "Value": "feature/log in=27x_.:+-@" + "y" * 200}])
    expect_error("InvalidParameterValue", express, rds, "badtags", Tags=[{"Key": "k", "Value": "a;b"}])


def t_not_found_faults(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    login_cluster(rds)
    missing = "envctl-missing-00000000"
    arn = f"arn:aws:rds:{REGION}:{ACCOUNT}:cluster:{missing}"
    expect_error("DBClusterNotFoundFault", rds.modify_db_cluster, DBClusterIdentifier=missing, ApplyImmediately=True,
                 ServerlessV2ScalingConfiguration={"MinCapacity": 0, "MaxCapacity": 8}, status=404)
    expect_error("DBClusterNotFoundFault", rds.delete_db_cluster, DBClusterIdentifier=missing, SkipFinalSnapshot=True)
    expect_error("DBClusterNotFoundFault", rds.describe_db_clusters, DBClusterIdentifier=missing)
    expect_error("DBClusterNotFoundFault", rds.describe_db_clusters, DBClusterIdentifier=arn)
    expect_error("DBClusterNotFoundFault", rds.add_tags_to_resource, ResourceName=arn, Tags=[{"Key": "a", "Value": "b"}])
    expect_error("DBClusterNotFoundFault", rds.remove_tags_from_resource, ResourceName=arn, TagKeys=["a"])
    expect_error("DBClusterNotFoundFault", rds.list_tags_for_resource, ResourceName=arn)
    expect_error("DBInstanceNotFound", rds.delete_db_instance, DBInstanceIdentifier=missing + "-instance-1")
    expect_error("DBInstanceNotFound", rds.describe_db_instances, DBInstanceIdentifier=missing + "-instance-1")
    expect_error("DBInstanceNotFound", rds.add_tags_to_resource,
                 ResourceName=f"arn:aws:rds:{REGION}:{ACCOUNT}:db:{missing}-instance-1", Tags=[{"Key": "a", "Value": "b"}])
    # by ARN, a live cluster is found
    live = cluster(rds, "envctl-feature-login-1a2b3c4d")
    check(cluster(rds, live["DBClusterArn"])["DBClusterIdentifier"] == live["DBClusterIdentifier"], "describe by ARN")


def t_delete_refusals(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    ident = login_cluster(rds)["DBClusterIdentifier"]
    expect_error("InvalidDBClusterStateFault", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    rds.modify_db_cluster(DBClusterIdentifier=ident, DeletionProtection=True, ApplyImmediately=True)
    check(cluster(rds, ident)["DeletionProtection"] is True, "deletion protection visible after modify")
    expect_error("InvalidParameterCombination", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    rds.modify_db_cluster(DBClusterIdentifier=ident, DeletionProtection=False, ApplyImmediately=True)
    expect_error("InvalidDBClusterStateFault", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)


def t_modify_partial_and_options(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    ident = login_cluster(rds)["DBClusterIdentifier"]
    answer = rds.modify_db_cluster(DBClusterIdentifier=ident, ApplyImmediately=True,
                                   ServerlessV2ScalingConfiguration={"MaxCapacity": 6})["DBCluster"]
    scaling = cluster(rds, ident)["ServerlessV2ScalingConfiguration"]
    check(scaling == {"MinCapacity": 0, "MaxCapacity": 6, "SecondsUntilAutoPause": 300}, f"only MaxCapacity changed: {scaling}")
    check(answer["ServerlessV2ScalingConfiguration"]["MaxCapacity"] == 6, "modify answer")
    expect_error("InvalidParameterValue", rds.modify_db_cluster, DBClusterIdentifier=ident, ApplyImmediately=True,
                 ServerlessV2ScalingConfiguration={"MinCapacity": 8, "MaxCapacity": 4})
    expect_error("InvalidParameterValue", rds.modify_db_cluster, DBClusterIdentifier=ident, ApplyImmediately=True,
                 ServerlessV2ScalingConfiguration={"MinCapacity": 0.25, "MaxCapacity": 4})
    rds.modify_db_cluster(DBClusterIdentifier=ident, ApplyImmediately=True,
                          ServerlessV2ScalingConfiguration={"MinCapacity": 0, "MaxCapacity": 4})
    peer.config(express_rejects_database_name=True)
    expect_error("InvalidParameterCombination", express, rds, "with-dbname", DatabaseName="app")
    peer.config(express_rejects_database_name=False)
    peer.config(rds_throttle_code="ThrottlingException")
    peer.control("POST", "/_peer/fault-next", {"action": "DescribeDBClusters", "fault": "throttle"})
    expect_error("ThrottlingException", rds.describe_db_clusters, status=400)
    peer.config(rds_throttle_code="Throttling")


def t_lifecycle_with_delays(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    peer.config(create_delay=0.6, delete_delay=0.6, modify_delay=0.8, modify_lag=0.3)
    ident = "envctl-lifecycle-00000001"
    t0 = time.monotonic()
    created = express(rds, ident)
    check(created["Status"] == "creating", "creating in the create answer")
    check(cluster(rds, ident)["Status"] == "creating", "still creating within the create delay")
    writer = f"{ident}-instance-1"
    # The writer is listed only partway through `creating` (writer_after_share, 0.5 by default).
    if time.monotonic() - t0 < 0.25:
        check(cluster(rds, ident)["DBClusterMembers"] == [], "no member early in `creating`")
        expect_error("DBInstanceNotFound", rds.describe_db_instances, DBInstanceIdentifier=writer)
    wait_until("the writer listed", lambda: cluster(rds, ident)["DBClusterMembers"], 2)
    check(rds.describe_db_instances(DBInstanceIdentifier=writer)["DBInstances"][0]["DBInstanceStatus"] == "creating",
          "writer creating within the create delay")
    check(time.monotonic() - t0 >= 0.25, "the writer appeared halfway through creating")
    expect_error("InvalidDBClusterStateFault", rds.modify_db_cluster, DBClusterIdentifier=ident, ApplyImmediately=True,
                 ServerlessV2ScalingConfiguration={"MinCapacity": 0.5, "MaxCapacity": 8})
    wait_until("cluster available", lambda: cluster(rds, ident)["Status"] == "available")
    waited = time.monotonic() - t0
    check(waited >= 0.55, f"available only after the create delay (after {waited:.2f} s)")
    check(rds.describe_db_instances(DBInstanceIdentifier=writer)["DBInstances"][0]["DBInstanceStatus"] == "available",
          "writer available with its cluster")

    # modify: `available` with the old values for modify_lag, then `modifying`, then the new values
    t0 = time.monotonic()
    answer = rds.modify_db_cluster(DBClusterIdentifier=ident, ApplyImmediately=True, DeletionProtection=True,
                                   ServerlessV2ScalingConfiguration={"MinCapacity": 0.5, "MaxCapacity": 8})["DBCluster"]
    check(answer["Status"] == "available", f"modify answer still says available (lag): {answer['Status']}")
    check(answer["ServerlessV2ScalingConfiguration"]["MaxCapacity"] == 8, "modify answer carries the requested values")
    now = cluster(rds, ident)
    if time.monotonic() - t0 < 0.25:
        check(now["Status"] == "available", f"right after modify: available, got {now['Status']}")
        check(now["ServerlessV2ScalingConfiguration"]["MaxCapacity"] == 4, "right after modify: old values")
    wait_until("modifying", lambda: cluster(rds, ident)["Status"] == "modifying", 2)
    mid = cluster(rds, ident)
    if mid["Status"] == "modifying":
        check(mid["ServerlessV2ScalingConfiguration"]["MaxCapacity"] == 4, "while modifying: old values")
        expect_error("InvalidDBClusterStateFault", rds.modify_db_cluster, DBClusterIdentifier=ident, ApplyImmediately=True,
                     ServerlessV2ScalingConfiguration={"MinCapacity": 1, "MaxCapacity": 9})
    wait_until("new values visible", lambda: cluster(rds, ident)["ServerlessV2ScalingConfiguration"]["MaxCapacity"] == 8, 3)
    after = cluster(rds, ident)
    check(after["Status"] == "available" and after["DeletionProtection"] is True, f"after modify: {after['Status']}")
    check(time.monotonic() - t0 >= 0.75, "new values only after the modify delay")
    expect_error("InvalidParameterCombination", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    rds.modify_db_cluster(DBClusterIdentifier=ident, ApplyImmediately=True, DeletionProtection=False)
    wait_until("protection off", lambda: cluster(rds, ident)["DeletionProtection"] is False, 3)

    # delete the writer: deleting (still a member) for the delete delay, then DBInstanceNotFound
    t0 = time.monotonic()
    gone = rds.delete_db_instance(DBInstanceIdentifier=writer)["DBInstance"]
    check(gone["DBInstanceStatus"] == "deleting", f"delete answer: {gone['DBInstanceStatus']}")
    check(rds.describe_db_instances(DBInstanceIdentifier=writer)["DBInstances"][0]["DBInstanceStatus"] == "deleting",
          "instance deleting within the delete delay")
    check(len(cluster(rds, ident)["DBClusterMembers"]) == 1, "a deleting instance is still a member")
    expect_error("InvalidDBInstanceState", rds.delete_db_instance, DBInstanceIdentifier=writer)

    def instance_gone() -> bool:
        try:
            rds.describe_db_instances(DBInstanceIdentifier=writer)
            return False
        except ClientError as e:
            check(e.response["Error"]["Code"] == "DBInstanceNotFound", f"gone instance: {e}")
            return True

    wait_until("instance gone", instance_gone)
    check(time.monotonic() - t0 >= 0.55, "instance gone only after the delete delay")
    check(cluster(rds, ident)["DBClusterMembers"] == [], "members empty once the instance is gone")

    # delete the cluster: a final snapshot is required unless skipped
    expect_error("InvalidParameterCombination", rds.delete_db_cluster, DBClusterIdentifier=ident)
    t0 = time.monotonic()
    answer = rds.delete_db_cluster(DBClusterIdentifier=ident, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)["DBCluster"]
    check(answer["Status"] == "deleting", f"delete cluster answer: {answer['Status']}")
    check(cluster(rds, ident)["Status"] == "deleting", "deleting within the delete delay")
    expect_error("InvalidDBClusterStateFault", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)

    def cluster_gone() -> bool:
        try:
            cluster(rds, ident)
            return False
        except ClientError as e:
            check(e.response["Error"]["Code"] == "DBClusterNotFoundFault", f"gone cluster: {e}")
            return True

    wait_until("cluster gone", cluster_gone)
    check(time.monotonic() - t0 >= 0.55, "cluster gone only after the delete delay")
    deletes = peer.calls(action="DeleteDBCluster")
    last = [c for c in deletes if c["status"] == 200][-1]["params"]
    check(last == {"DBClusterIdentifier": ident, "SkipFinalSnapshot": True, "DeleteAutomatedBackups": True},
          f"SkipFinalSnapshot and DeleteAutomatedBackups in the call log: {last}")

    # a cluster whose only instance is being deleted can be deleted: it goes after the instance
    ident2 = "envctl-lifecycle-00000002"
    peer.config(create_delay=0, delete_delay=0.5)
    express(rds, ident2)
    rds.delete_db_instance(DBInstanceIdentifier=f"{ident2}-instance-1")
    rds.delete_db_cluster(DBClusterIdentifier=ident2, SkipFinalSnapshot=True)
    wait_until("cluster after its instance", cluster_gone_fn(rds, ident2))
    peer.config(create_delay=0, delete_delay=0, modify_delay=0, modify_lag=0)


def with_delete_instances(rds: Any) -> Any:
    """The client sends DeleteDBInstances=true on DeleteDBCluster (the pinned botocore's model
    does not know the parameter; botocore 1.44.18's documents it)."""

    def add(request: Any, **_: Any) -> None:
        if isinstance(request.data, dict):
            request.data["DeleteDBInstances"] = "true"
        else:
            request.data += "&DeleteDBInstances=true"

    rds.meta.events.register("before-sign.rds.DeleteDBCluster", add)
    return rds


def t_delete_refused_while_made_or_stopped(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    peer.config(create_delay=0.6, writer_after_share=0.0)
    ident = "envctl-early-00000001"
    express(rds, ident)
    expect_error("InvalidDBClusterStateFault", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    expect_error("InvalidDBInstanceState", rds.delete_db_instance, DBInstanceIdentifier=f"{ident}-instance-1")
    wait_until("available", lambda: cluster(rds, ident)["Status"] == "available")
    peer.control("POST", "/_peer/set-status", {"cluster": ident, "status": "stopped", "instance_status": "stopped"})
    expect_error("InvalidDBClusterStateFault", with_delete_instances(rds).delete_db_cluster,
                 DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    peer.control("POST", "/_peer/set-status", {"cluster": ident, "status": "available", "instance_status": "available"})
    rds.delete_db_cluster(DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    wait_until("deleted with its writer", cluster_gone_fn(rds, ident))
    check(rds.describe_db_instances()["DBInstances"] == [], "the writer went with it")


def t_delete_db_instances(peer: PeerProcess) -> None:
    rds = with_delete_instances(peer.client("rds"))
    peer.config(delete_delay=0.4)
    ident = login_cluster(rds)["DBClusterIdentifier"]
    writer = f"{ident}-instance-1"
    answer = rds.delete_db_cluster(DBClusterIdentifier=ident, SkipFinalSnapshot=True)["DBCluster"]
    check(answer["Status"] == "deleting", f"one call deletes the cluster: {answer['Status']}")
    status = rds.describe_db_instances(DBInstanceIdentifier=writer)["DBInstances"][0]["DBInstanceStatus"]
    check(status == "deleting", f"and its writer: {status}")
    wait_until("writer, then cluster, gone", cluster_gone_fn(rds, ident))
    check(rds.describe_db_instances()["DBInstances"] == [], "no instance left")
    logged = [c for c in peer.calls(action="DeleteDBCluster") if c["status"] == 200][-1]["params"]
    check(logged.get("DeleteDBInstances") is True, f"the call log records DeleteDBInstances: {logged}")
    # Refused, and nothing deleted, while an instance is already being deleted or still made.
    peer.config(delete_delay=5, create_delay=0)
    ident = express(rds, "envctl-refused-00000001")["DBClusterIdentifier"]
    rds.delete_db_instance(DBInstanceIdentifier=f"{ident}-instance-1")
    expect_error("InvalidDBClusterStateFault", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    check(cluster(rds, ident)["Status"] == "available", "refused: the cluster stays")
    ident = express(rds, "envctl-refused-00000002")["DBClusterIdentifier"]
    peer.control("POST", "/_peer/set-status", {"instance": f"{ident}-instance-1", "status": "creating"})
    expect_error("InvalidDBClusterStateFault", rds.delete_db_cluster, DBClusterIdentifier=ident, SkipFinalSnapshot=True)
    check(cluster(rds, ident)["Status"] == "available", "refused: the cluster stays")
    status = rds.describe_db_instances(DBInstanceIdentifier=f"{ident}-instance-1")["DBInstances"][0]["DBInstanceStatus"]
    check(status == "creating", f"refused: its writer stays: {status}")
    # A cluster with no instance: deleted as without the parameter.
    peer.config(delete_delay=0)
    bare = rds.create_db_cluster(DBClusterIdentifier="bare-1", Engine="aurora-postgresql", MasterUsername="x",
                                 MasterUserPassword="password1")["DBCluster"]["DBClusterIdentifier"]
    rds.delete_db_cluster(DBClusterIdentifier=bare, SkipFinalSnapshot=True)
    wait_until("bare cluster gone", cluster_gone_fn(rds, bare))


def t_create_instance_into_a_cluster(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    ident = login_cluster(rds)["DBClusterIdentifier"]
    writer = f"{ident}-instance-1"
    rds.delete_db_instance(DBInstanceIdentifier=writer)
    wait_until("no member", lambda: not cluster(rds, ident)["DBClusterMembers"])
    tags = [{"Key": "envctl:managed", "Value": "true"}]
    expect_error("InvalidParameterValue", rds.create_db_instance, DBInstanceIdentifier=writer, DBClusterIdentifier=ident,
                 Engine="aurora-postgresql", DBInstanceClass="db.serverless", Tags=[{"Key": "aws:x", "Value": "y"}])
    expect_error("DBClusterNotFoundFault", rds.create_db_instance, DBInstanceIdentifier="lost-instance-1",
                 DBClusterIdentifier="no-such-cluster", Engine="aurora-postgresql", DBInstanceClass="db.serverless")
    rds.create_db_instance(DBInstanceIdentifier=writer, DBClusterIdentifier=ident, Engine="aurora-postgresql",
                           DBInstanceClass="db.serverless", Tags=tags)
    members = cluster(rds, ident)["DBClusterMembers"]
    check(len(members) == 1 and members[0]["IsClusterWriter"] is True, f"the new instance is the writer: {members}")
    got = rds.describe_db_instances(DBInstanceIdentifier=writer)["DBInstances"][0]
    check({t["Key"]: t["Value"] for t in got["TagList"]} == {"envctl:managed": "true"}, f"tags: {got['TagList']}")
    expect_error("DBInstanceAlreadyExists", rds.create_db_instance, DBInstanceIdentifier=writer, DBClusterIdentifier=ident,
                 Engine="aurora-postgresql", DBInstanceClass="db.serverless")
    # Made again within the minute (a second repair): Aurora keeps no instance snapshot to clash.
    rds.delete_db_instance(DBInstanceIdentifier=writer)
    wait_until("no member again", lambda: not cluster(rds, ident)["DBClusterMembers"])
    rds.create_db_instance(DBInstanceIdentifier=writer, DBClusterIdentifier=ident, Engine="aurora-postgresql",
                           DBInstanceClass="db.serverless", Tags=tags)
    check(rds.describe_db_snapshots()["DBSnapshots"] == [], "no instance snapshot of a cluster's member")
    peer.control("POST", "/_peer/set-status", {"cluster": ident, "status": "modifying"})
    expect_error("InvalidDBClusterStateFault", rds.create_db_instance, DBInstanceIdentifier=f"{ident}-instance-2",
                 DBClusterIdentifier=ident, Engine="aurora-postgresql", DBInstanceClass="db.serverless")


def t_holds(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    ident = login_cluster(rds)["DBClusterIdentifier"]
    hold = peer.control("POST", "/_peer/hold", {"action": "DescribeDBClusters", "match": ident, "skip": 1})
    cluster(rds, ident)  # the first matching call goes through (skip 1)
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(cluster(rds, ident)["Status"]), daemon=True)
    thread.start()
    wait_until("held", lambda: peer.control("GET", "/_peer/holds")[0]["holding"], 5)
    rds.describe_db_instances()  # other calls go on meanwhile
    check(not done, "the held call waits")
    peer.control("POST", "/_peer/release", {"id": hold["id"]})
    thread.join(10)
    check(done == ["available"], f"released, it answers: {done}")
    expect_error_control(peer, "/_peer/hold", {"bogus": 1})
    # A reset releases whatever is held.
    peer.control("POST", "/_peer/hold", {"action": "DescribeDBClusters"})
    thread = threading.Thread(target=lambda: done.append(rds.describe_db_clusters()), daemon=True)
    thread.start()
    wait_until("held again", lambda: any(h["holding"] for h in peer.control("GET", "/_peer/holds")), 5)
    peer.control("POST", "/_peer/reset", {})
    thread.join(10)
    check(len(done) == 2, "reset released it")
    # A forced DBClusterNotFoundFault on a filtered describe (what a client must not take for none).
    peer.control("POST", "/_peer/fault-next", {"fault": "cluster-not-found", "action": "DescribeDBClusters"})
    expect_error("DBClusterNotFoundFault", rds.describe_db_clusters,
                 Filters=[{"Name": "db-cluster-id", "Values": ["a", "b"]}])


def expect_error_control(peer: PeerProcess, path: str, body: Any) -> None:
    try:
        peer.control("POST", path, body)
    except Failure:
        return
    raise Failure(f"{path} {body}: expected a 400")


def cluster_gone_fn(rds: Any, ident: str) -> Callable[[], bool]:
    def gone() -> bool:
        try:
            cluster(rds, ident)
            return False
        except ClientError:
            return True

    return gone


def t_set_status(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    ident = login_cluster(rds)["DBClusterIdentifier"]
    peer.control("POST", "/_peer/set-status", {"cluster": ident, "status": "stopped", "instance_status": "stopped"})
    check(cluster(rds, ident)["Status"] == "stopped", "set-status stopped")
    check(rds.describe_db_instances(DBInstanceIdentifier=f"{ident}-instance-1")["DBInstances"][0]["DBInstanceStatus"] == "stopped",
          "instance stopped too")
    expect_error("InvalidDBClusterStateFault", rds.modify_db_cluster, DBClusterIdentifier=ident, ApplyImmediately=True,
                 ServerlessV2ScalingConfiguration={"MinCapacity": 0, "MaxCapacity": 8})
    peer.control("POST", "/_peer/set-status", {"cluster": ident, "status": "starting", "seconds": 0.3, "then": "available",
                                               "instance_status": "starting"})
    check(cluster(rds, ident)["Status"] == "starting", "starting")
    wait_until("back to available", lambda: cluster(rds, ident)["Status"] == "available", 3)


def t_quota(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    express(rds, "under-quota")
    live = len(rds.describe_db_clusters()["DBClusters"])
    peer.config(max_clusters=live)
    expect_error("DBClusterQuotaExceededFault", express, rds, "over-quota", status=403)
    peer.config(max_clusters=0)


def t_describe_pagination_and_filters(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    seeded = seed_pages(peer)
    check(len(seeded) == 250 and seeded[0] == "pg-0000", f"seeded ids: {seeded[:3]}")
    for bad in (19, 101, 0):
        expect_error("InvalidParameterValue", rds.describe_db_clusters, MaxRecords=bad)
        expect_error("InvalidParameterValue", rds.describe_db_instances, MaxRecords=bad)
    first = rds.describe_db_clusters()
    check(len(first["DBClusters"]) == 100 and "Marker" in first, "default page: 100 and a Marker")
    ids: list[str] = []
    marker = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"MaxRecords": 20}
        if marker:
            kwargs["Marker"] = marker
        page = rds.describe_db_clusters(**kwargs)
        ids += [c["DBClusterIdentifier"] for c in page["DBClusters"]]
        pages += 1
        marker = page.get("Marker")
        if not marker:
            break
    check(len(ids) == len(set(ids)) and set(seeded) <= set(ids), f"pages of 20 cover everything once ({len(ids)} ids)")
    check(ids == sorted(ids), "clusters come sorted by identifier")
    paginator_ids = [c["DBClusterIdentifier"] for page in rds.get_paginator("describe_db_clusters").paginate(
        PaginationConfig={"PageSize": 100}) for c in page["DBClusters"]]
    check(paginator_ids == ids, "boto3's paginator agrees")
    expect_error("InvalidParameterValue", rds.describe_db_clusters, Marker="not-a-marker")
    # filters: ids and ARNs, engine
    some = seeded[10:15]
    arns = [f"arn:aws:rds:{REGION}:{ACCOUNT}:cluster:{i}" for i in seeded[15:20]]
    got = rds.describe_db_clusters(Filters=[{"Name": "db-cluster-id", "Values": some + arns + ["nope-1"]}])["DBClusters"]
    check(sorted(c["DBClusterIdentifier"] for c in got) == seeded[10:20], f"db-cluster-id filter: {len(got)}")
    check(rds.describe_db_clusters(Filters=[{"Name": "engine", "Values": ["aurora-mysql"]}])["DBClusters"] == [], "engine filter")
    pg = rds.describe_db_clusters(Filters=[{"Name": "engine", "Values": ["aurora-postgresql"]},
                                           {"Name": "db-cluster-id", "Values": seeded[:3]}])["DBClusters"]
    check(len(pg) == 3, "engine and id filters together")
    expect_error("InvalidParameterValue", rds.describe_db_clusters, Filters=[{"Name": "tag:envctl:repo", "Values": ["x"]}])
    seeded_one = cluster(rds, "pg-0001")
    check(seeded_one["Status"] == "available" and seeded_one["DBClusterMembers"][0]["DBInstanceIdentifier"] == "pg-0001-instance-1",
          "seeded clusters are available, with a writer")
    check({t["Key"]: t["Value"] for t in seeded_one["TagList"]}["envctl:branch"] == "b-1", "seed tag templates")
    # instances: pagination and the cluster filter
    inst_ids = [d["DBInstanceIdentifier"] for page in rds.get_paginator("describe_db_instances").paginate(
        PaginationConfig={"PageSize": 20}) for d in page["DBInstances"]]
    check(len(inst_ids) == len(set(inst_ids)) and {f"{i}-instance-1" for i in seeded} <= set(inst_ids), "instance pages")
    by_cluster = rds.describe_db_instances(Filters=[{"Name": "db-cluster-id", "Values": seeded[:2]}])["DBInstances"]
    check(sorted(d["DBInstanceIdentifier"] for d in by_cluster) == [f"{i}-instance-1" for i in seeded[:2]], "instances by cluster")


def t_get_resources(peer: PeerProcess) -> None:
    tagging = peer.client("resourcegroupstaggingapi")
    seed_pages(peer)
    filters = [{"Key": "envctl:managed", "Values": ["true"]}, {"Key": "envctl:repo", "Values": ["acme/pages"]}]
    arns: list[str] = []
    token = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"ResourceTypeFilters": ["rds:cluster"], "TagFilters": filters, "ResourcesPerPage": 100}
        if token:
            kwargs["PaginationToken"] = token
        page = tagging.get_resources(**kwargs)
        arns += [r["ResourceARN"] for r in page["ResourceTagMappingList"]]
        pages += 1
        token = page.get("PaginationToken")
        if not token:
            break
    check(len(arns) == 250 and len(set(arns)) == 250 and pages == 3, f"GetResources: {len(arns)} in {pages} pages")
    capped = tagging.get_resources(ResourceTypeFilters=["rds:cluster"], TagFilters=filters, ResourcesPerPage=100, TagsPerPage=150)
    check(len(capped["ResourceTagMappingList"]) == 50, "TagsPerPage=150 with 3 tags each: 50 resources, exactly 150 tags")
    expect_error("InvalidParameterException", tagging.get_resources, TagsPerPage=99)
    expect_error("InvalidParameterException", tagging.get_resources, ResourcesPerPage=101)
    expect_error("PaginationTokenExpiredException", tagging.get_resources, PaginationToken="bogus")
    # a cluster created between two pages does not break the walk
    rds = peer.client("rds")
    page = tagging.get_resources(ResourceTypeFilters=["rds:cluster"], TagFilters=filters, ResourcesPerPage=100)
    express(rds, "between-pages", Tags=[{"Key": "envctl:managed", "Value": "true"}, {"Key": "envctl:repo", "Value": "acme/pages"}])
    page2 = tagging.get_resources(PaginationToken=page["PaginationToken"], ResourcesPerPage=100)
    check(len(page2["ResourceTagMappingList"]) == 100, "second page after a create in between")
    teardown(rds, "between-pages")


def t_stale_tags(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    tagging = peer.client("resourcegroupstaggingapi")
    peer.config(stale_tag_seconds=1.0)
    ident = "stale-one"
    express(rds, ident, Tags=[{"Key": "envctl:repo", "Value": "acme/stale"}])
    teardown(rds, ident)

    def listed() -> bool:
        res = tagging.get_resources(ResourceTypeFilters=["rds:cluster"], TagFilters=[{"Key": "envctl:repo", "Values": ["acme/stale"]}])
        return bool(res["ResourceTagMappingList"])

    check(listed(), "a deleted cluster stays visible to GetResources for stale_tag_seconds")
    expect_error("DBClusterNotFoundFault", rds.describe_db_clusters, DBClusterIdentifier=ident)
    wait_until("stale entry expires", lambda: not listed(), 3)
    peer.config(stale_tag_seconds=0)


def t_faults(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    tagging = peer.client("resourcegroupstaggingapi")
    peer.control("POST", "/_peer/fault-next", {"action": "DescribeDBClusters", "fault": "throttle"})
    e = expect_error("Throttling", rds.describe_db_clusters, status=400)
    check(e.response["Error"]["Message"] == "Rate exceeded", f"throttle message: {e.response['Error']}")
    peer.control("POST", "/_peer/fault-next", {"service": "tagging", "fault": "throttle"})
    expect_error("ThrottledException", tagging.get_resources, status=400)
    peer.control("POST", "/_peer/fault-next", {"action": "CreateDBCluster", "fault": "500"})
    expect_error("InternalFailure", express, rds, "fault-before", status=500)
    expect_error("DBClusterNotFoundFault", rds.describe_db_clusters, DBClusterIdentifier="fault-before")
    peer.control("POST", "/_peer/fault-next", {"action": "CreateDBCluster", "fault": "500-after"})
    expect_error("InternalFailure", express, rds, "fault-after", status=500)
    check(cluster(rds, "fault-after")["DBClusterIdentifier"] == "fault-after", "a 500-after create took effect")
    expect_error("DBClusterAlreadyExistsFault", express, rds, "fault-after")
    log = peer.calls(action="CreateDBCluster")
    check([c["fault"] for c in log[-3:]] == ["500", "500-after", None], f"faults in the call log: {[c['fault'] for c in log[-3:]]}")
    check(log[-2]["status"] == 500 and log[-2]["error"] == "InternalFailure", f"call log status: {log[-2]}")
    teardown(rds, "fault-after")
    # SDK retries absorb injected faults
    retrying = peer.client("rds", retries=8)
    peer.config(fault_rate=0.5, seed=11, fault_actions=["DescribeDBClusters"])
    for _ in range(10):
        retrying.describe_db_clusters(MaxRecords=20)
    # determinism: the same seed gives the same faults for the same calls
    sequences = []
    for _ in range(2):
        peer.config(fault_rate=0.5, seed=7, fault_actions=[], fault_throttle_share=0.5, fault_after_share=0.5)
        peer.control("POST", "/_peer/calls/reset", {})
        for _ in range(40):
            try:
                rds.describe_db_clusters(MaxRecords=20)
            except ClientError:
                pass
        sequences.append([c["fault"] for c in peer.calls()])
    check(sequences[0] == sequences[1], "same seed, same fault sequence")
    kinds = set(sequences[0])
    check({"throttle", "500", "500-after", None} <= kinds, f"all fault kinds occur at rate 0.5: {kinds}")
    share = sum(1 for f in sequences[0] if f) / len(sequences[0])
    check(0.25 <= share <= 0.75, f"fault share near 0.5: {share}")
    peer.config(fault_rate=0)
    # latency
    peer.config(latency_ms="60:80")
    t0 = time.monotonic()
    rds.describe_db_clusters(MaxRecords=20)
    took = time.monotonic() - t0
    check(took >= 0.06, f"latency applied ({took * 1000:.0f} ms)")
    peer.config(latency_ms="0:0")


def t_call_log_scale(peer: PeerProcess) -> None:
    # over HTTP: a few thousand real calls, then GET /_peer/calls
    import http.client

    peer.control("POST", "/_peer/calls/reset", {})
    conn = http.client.HTTPConnection("127.0.0.1", peer.port)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Authorization": f"AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/rds/aws4_request, SignedHeaders=host, Signature=0",
    }
    n = 3000
    t0 = time.monotonic()
    for _ in range(n):
        conn.request("POST", "/", body="Action=DescribeDBClusters&Version=2014-10-31&DBClusterIdentifier=nope-1", headers=headers)
        resp = conn.getresponse()
        resp.read()
        check(resp.status == 404, f"cheap call answered {resp.status}")
    rate = n / (time.monotonic() - t0)
    t0 = time.monotonic()
    calls = peer.calls()
    took = time.monotonic() - t0
    check(len(calls) == n, f"{n} calls logged, got {len(calls)}")
    check(calls[-1]["seq"] == n - 1, "seq numbers")
    since = peer.calls(since=n - 5)
    check(len(since) == 5, "since=N returns the tail")
    TIMINGS[f"GET /_peer/calls with {n} calls (HTTP)"] = f"{took * 1000:.0f} ms ({rate:.0f} cheap calls/s)"
    # in-process: the log's own cost with 50 000 entries
    sys.path.insert(0, HERE)
    sys.dont_write_bytecode = True  # no __pycache__ in the repository
    import peer as peer_module  # noqa: E402

    entry = {"service": "rds", "action": "DescribeDBClusters", "time": time.time(), "region": REGION,
             "params": {"Filters": [{"Name": "db-cluster-id", "Values": [f"envctl-x-{i}" for i in range(100)]}]},
             "fault": None, "status": 200, "error": None}

    def logged(n: int) -> tuple[float, float, str]:
        """A log of n entries: seconds to record them, seconds to build GET's body, the body."""
        log = peer_module.Peer({}, None)
        t0 = time.monotonic()
        for _ in range(n):
            log.record(entry)
        rec = time.monotonic() - t0
        t0 = time.monotonic()
        text = log.calls_json()
        return rec, time.monotonic() - t0, text

    _, small, _ = logged(5_000)
    rec, dump, text = logged(50_000)
    check(len(json.loads(text)) == 50_000, "50 000 entries")
    # Linear: ten times the entries cost about ten times as much (a quadratic join, a hundred);
    # compared within one run, so a busy machine slows both alike.
    check(dump < 25 * small + 0.2, f"joining 50 000 entries took {dump:.2f} s, 5 000 took {small:.3f} s: not linear")
    TIMINGS["call log, 50 000 calls of 100 filter values (in-process)"] = (
        f"record {rec / 50_000 * 1e6:.0f} µs/call; GET body built in {dump * 1000:.0f} ms ({len(text) / 1e6:.0f} MB)"
    )
    peer.control("POST", "/_peer/calls/reset", {})
    check(peer.calls() == [], "calls/reset empties the log")


def t_scale_2500(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    tagging = peer.client("resourcegroupstaggingapi")
    t0 = time.monotonic()
    created = peer.control("POST", "/_peer/seed-clusters", {
        "count": 2500, "id_prefix": "envctl-bench", "tags": {"envctl:managed": "true", "envctl:repo": "acme/bench", "envctl:branch": "feature/{i}"},
    })["created"]
    seed_took = time.monotonic() - t0
    check(len(created) == 2500, "2 500 seeded")
    TIMINGS["seed 2 500 clusters with writers (/_peer/seed-clusters)"] = f"{seed_took:.2f} s"

    # envctl's discovery: GetResources pages, then DescribeDBClusters by id in batches of 100
    t0 = time.monotonic()
    arns: list[str] = []
    token = None
    tag_pages = 0
    while True:
        kwargs: dict[str, Any] = {"ResourceTypeFilters": ["rds:cluster"], "ResourcesPerPage": 100,
                                  "TagFilters": [{"Key": "envctl:managed", "Values": ["true"]}, {"Key": "envctl:repo", "Values": ["acme/bench"]}]}
        if token:
            kwargs["PaginationToken"] = token
        page = tagging.get_resources(**kwargs)
        arns += [r["ResourceARN"] for r in page["ResourceTagMappingList"]]
        tag_pages += 1
        token = page.get("PaginationToken")
        if not token:
            break
    tag_took = time.monotonic() - t0
    check(len(arns) == 2500, f"GetResources found {len(arns)}")
    t0 = time.monotonic()
    found = 0
    page_times = []
    for i in range(0, len(arns), 100):
        p0 = time.monotonic()
        found += len(rds.describe_db_clusters(Filters=[{"Name": "db-cluster-id", "Values": arns[i : i + 100]}])["DBClusters"])
        page_times.append(time.monotonic() - p0)
    by_id = time.monotonic() - t0
    check(found == 2500, f"describe by id found {found}")
    # plain pages of 100 over everything
    t0 = time.monotonic()
    total = 0
    marker = None
    pages = 0
    plain_times = []
    while True:
        kwargs = {"MaxRecords": 100}
        if marker:
            kwargs["Marker"] = marker
        p0 = time.monotonic()
        page = rds.describe_db_clusters(**kwargs)
        plain_times.append(time.monotonic() - p0)
        total += len(page["DBClusters"])
        pages += 1
        marker = page.get("Marker")
        if not marker:
            break
    all_pages = time.monotonic() - t0
    check(total >= 2500, f"pages found {total}")
    first = sorted(page_times[:5])[2]
    last = sorted(page_times[-5:])[2]
    check(last < 3 * first + 0.05, f"the last batches ({last:.3f} s, median) cost about what the first did ({first:.3f} s): not quadratic")
    first_pages = sorted(plain_times[:5])[2]
    last_pages = sorted(plain_times[-5:])[2]
    check(last_pages < 3 * first_pages + 0.05,
          f"the last pages ({last_pages:.3f} s, median) cost about what the first did ({first_pages:.3f} s): not quadratic")
    TIMINGS["GetResources, 2 500 clusters, 100 per page"] = f"{tag_took:.2f} s for {tag_pages} pages"
    TIMINGS["DescribeDBClusters by id, 25 batches of 100"] = f"{by_id:.2f} s ({by_id / 25 * 1000:.0f} ms per batch; median of the first 5 {first * 1000:.0f} ms, of the last 5 {last * 1000:.0f} ms)"
    TIMINGS[f"DescribeDBClusters, all {total} in {pages} pages of 100"] = f"{all_pages:.2f} s"


def t_auth_token_offline(peer: PeerProcess) -> None:
    rds = boto3.client("rds", region_name=REGION, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    token = rds.generate_db_auth_token(DBHostname="envctl-x.cluster-abc.us-east-1.rds.amazonaws.com", Port=5432,
                                       DBUsername="app user+1/=&~", Region=REGION)
    check(token.startswith("envctl-x.cluster-abc.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser="), f"token: {token[:80]}")
    query = parse_qs(urlsplit("https://" + token).query)
    check(query["DBUser"] == ["app user+1/=&~"], f"DBUser round-trips: {query['DBUser']}")
    check("DBUser=app%20user%2B1%2F%3D%26~&" in token, f"DBUser percent-encoded as SigV4 does: {token[:140]}")
    check(query["X-Amz-Expires"] == ["900"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"], "15 minutes, SigV4")
    check(query["X-Amz-Credential"][0].endswith(f"/{REGION}/rds-db/aws4_request"), "service rds-db")
    check(query["X-Amz-SignedHeaders"] == ["host"] and len(query["X-Amz-Signature"][0]) == 64, "signed host, 64-hex signature")
    TIMINGS["botocore"] = botocore.__version__


def t_reset(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    peer.control("POST", "/_peer/reset", {})
    check(rds.describe_db_clusters()["DBClusters"] == [], "reset empties the backend")
    check([c["action"] for c in peer.calls()] == ["DescribeDBClusters"], "reset empties the call log")
    express(rds, "after-reset")
    check(cluster(rds, "after-reset")["Status"] == "available", "works after reset")


def t_concurrency(peer: PeerProcess) -> None:
    # envctl applies with --concurrency N: parallel clients, with latency, must all be answered
    peer.config(latency_ms="2:8")
    peer.control("POST", "/_peer/calls/reset", {})
    errors: list[str] = []

    def worker(w: int) -> None:
        try:
            rds = peer.client("rds")
            tagging = peer.client("resourcegroupstaggingapi")
            for i in range(5):
                ident = f"conc-{w}-{i}"
                express(rds, ident, Tags=[{"Key": "envctl:repo", "Value": "acme/conc"}])
                rds.describe_db_clusters(Filters=[{"Name": "db-cluster-id", "Values": [ident]}])
                tagging.get_resources(ResourceTypeFilters=["rds:cluster"], ResourcesPerPage=20)
                teardown(rds, ident)
        except Exception as e:  # reported below
            errors.append(f"worker {w}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    peer.config(latency_ms="0:0")
    check(not errors, f"parallel clients: {errors[:3]}")
    creates = peer.calls(action="CreateDBCluster")
    check(len(creates) == 40 and all(c["status"] == 200 for c in creates), f"40 creates logged: {len(creates)}")


def t_unimplemented(peer: PeerProcess) -> None:
    rds = peer.client("rds")
    expect_error("NotImplemented", rds.describe_db_cluster_endpoints, status=501)
    check(peer.calls(action="DescribeDBClusterEndpoints")[-1]["error"] == "NotImplemented", "logged with its error")


def t_control_errors(peer: PeerProcess) -> None:
    for method, path, body in (("POST", "/_peer/config", {"nope": 1}), ("POST", "/_peer/fault-next", {"fault": "x"}),
                               ("GET", "/_peer/nothing", None), ("POST", "/_peer/set-status", {"cluster": "nope-1", "status": "x"})):
        try:
            peer.control(method, path, body)
        except Failure as e:
            check(" answered 4" in str(e), f"control error is a 4xx: {e}")
        else:
            raise Failure(f"{method} {path} {body} should have failed")



def t_clone_master_auth(peer: PeerProcess) -> None:
    """A clone's master user logs in with a password until ModifyDBCluster sets iam-db-auth; a
    modify refused for the cluster's state changes nothing; the same value again is accepted
    (the API reference documents no refusal of it): what envctl's repeat of the modify relies on."""
    rds = peer.client("rds")
    source = login_cluster(rds)["DBClusterIdentifier"]
    wait_until("source available", lambda: cluster(rds, source)["Status"] == "available")
    clone = "envctl-feature-clone-5e6f7a8b"
    rds.restore_db_cluster_to_point_in_time(
        DBClusterIdentifier=clone, SourceDBClusterIdentifier=source, RestoreType="copy-on-write",
        UseLatestRestorableTime=True, EnableVPCNetworking=False, EnableInternetAccessGateway=True,
        EnableIAMDatabaseAuthentication=True)
    wait_until("clone available", lambda: cluster(rds, clone)["Status"] == "available")

    def master_auth() -> str:
        return peer.control("GET", f"/_peer/cluster?id={clone}")["master_auth"]

    check(master_auth() == "password", "a clone's master user starts on passwords")
    peer.control("POST", "/_peer/set-status", {"cluster": clone, "status": "backing-up"})
    expect_error("InvalidDBClusterStateFault", rds.modify_db_cluster, DBClusterIdentifier=clone,
                 ApplyImmediately=True, MasterUserAuthenticationType="iam-db-auth")
    check(master_auth() == "password", "a refused modify changed nothing")
    peer.control("POST", "/_peer/set-status", {"cluster": clone, "status": "available"})
    for _ in range(2):
        rds.modify_db_cluster(DBClusterIdentifier=clone, ApplyImmediately=True,
                              MasterUserAuthenticationType="iam-db-auth")
        wait_until("available after the modify", lambda: cluster(rds, clone)["Status"] == "available")
        check(master_auth() == "iam-db-auth", "the modify set iam-db-auth (again)")

TESTS = [
    t_listening_line_and_startup,
    t_express_create,
    t_duplicate_and_identifiers,
    t_tag_validation,
    t_not_found_faults,
    t_delete_refusals,
    t_modify_partial_and_options,
    t_lifecycle_with_delays,
    t_delete_refused_while_made_or_stopped,
    t_delete_db_instances,
    t_create_instance_into_a_cluster,
    t_holds,
    t_set_status,
    t_clone_master_auth,
    t_quota,
    t_describe_pagination_and_filters,
    t_get_resources,
    t_stale_tags,
    t_faults,
    t_call_log_scale,
    t_scale_2500,
    t_auth_token_offline,
    t_concurrency,
    t_unimplemented,
    t_control_errors,
    t_reset,
]


def t_signals(_: PeerProcess) -> None:
    """A peer exits 0 on SIGTERM and on SIGINT (its own peers: the shared one stays up)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        own = PeerProcess("--seed", "1")
        code = own.stop(sig)
        check(code == 0, f"exit status {code} after {signal.Signals(sig).name}")


TESTS.append(t_signals)


def peer_stderr(peer: PeerProcess) -> str:
    """What a stopped peer wrote on stderr."""
    return peer.proc.stderr.read() if peer.proc.stderr else ""


def run_check(test: Callable[[PeerProcess], None], peer: PeerProcess, defaults: dict[str, Any]) -> str | None:
    """Runs one check on the peer reset to its defaults; None when it passed, else why it failed."""
    try:
        peer.control("POST", "/_peer/reset", {})
        peer.config(**defaults)
        test(peer)
        return None
    except Failure as e:
        return str(e)
    except Exception as e:  # a check that breaks is a failure of its own, not the end of the run
        return f"unexpected {type(e).__name__}: {e}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-k", default="", help="run only checks whose name contains this")
    parser.add_argument("-v", action="store_true", help="show the peer's log on failure")
    args = parser.parse_args()
    chosen = [t for t in TESTS if not args.k or args.k in t.__name__ or t is t_listening_line_and_startup]
    failed: list[tuple[str, str]] = []
    logs: list[str] = []
    peer = PeerProcess()
    defaults = peer.control("GET", "/_peer/config")
    try:
        for test in chosen:
            if peer.proc.poll() is not None:
                # The last check killed the peer: the next gets a new one.
                logs.append(peer_stderr(peer))
                failed.append(("peer", f"the peer exited with status {peer.proc.returncode}"))
                peer = PeerProcess()
            t0 = time.monotonic()
            why = run_check(test, peer, defaults)
            took = time.monotonic() - t0
            if why is None:
                print(f"ok   {test.__name__} ({took:.2f} s)", file=sys.stderr)
            else:
                print(f"FAIL {test.__name__} ({took:.2f} s): {why}", file=sys.stderr)
                failed.append((test.__name__, why))
        code = peer.stop(signal.SIGTERM)
        if code != 0:
            failed.append(("peer", f"the shared peer exited with status {code} after SIGTERM"))
    finally:
        if peer.proc.poll() is None:
            peer.proc.kill()
            peer.proc.wait()
        logs.append(peer_stderr(peer))
    err = "".join(logs)
    if err.strip() and (args.v or "Traceback" in err):
        print("---- peer stderr ----\n" + err[-6000:], file=sys.stderr)
    for name, value in TIMINGS.items():
        print(f"timing: {name}: {value}", file=sys.stderr)
    for name, why in failed:
        print(f"failed: {name}: {why}", file=sys.stderr)
    passed = len(chosen) - sum(1 for name, _ in failed if name != "peer")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
