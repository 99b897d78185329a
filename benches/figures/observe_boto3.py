"""The reference for `envctl status --json` (BENCHMARKS.md, item 1): a bare boto3 script making
the same calls envctl's discovery makes. `tag:GetResources` for the owner's clusters (the three
ownership tag filters, 100 per page, following PaginationToken), then `DescribeDBClusters` by id
in batches of 100 (the `db-cluster-id` filter, following Marker), then the same JSON rows.

Usage: observe_boto3.py REPO PREFIX (endpoint, region and credentials from the environment)."""

import json
import sys

import boto3


def main() -> None:
    repo, prefix = sys.argv[1], sys.argv[2]
    tagging = boto3.client("resourcegroupstaggingapi")
    rds = boto3.client("rds")
    request = {
        "ResourceTypeFilters": ["rds:cluster"],
        "TagFilters": [
            {"Key": "envctl:managed", "Values": ["true"]},
            {"Key": "envctl:repo", "Values": [repo]},
            {"Key": "envctl:prefix", "Values": [prefix]},
        ],
        "ResourcesPerPage": 100,
    }
    arns = []
    while True:
        page = tagging.get_resources(**request)
        arns += [m["ResourceARN"] for m in page["ResourceTagMappingList"]]
        token = page.get("PaginationToken")
        if not token:
            break
        request["PaginationToken"] = token
    ids = sorted({arn.rsplit(":cluster:", 1)[1] for arn in arns})
    clusters = []
    for start in range(0, len(ids), 100):
        batch = ids[start : start + 100]
        marker = None
        while True:
            describe = {"Filters": [{"Name": "db-cluster-id", "Values": batch}], "MaxRecords": 100}
            if marker:
                describe["Marker"] = marker
            page = rds.describe_db_clusters(**describe)
            clusters += page["DBClusters"]
            marker = page.get("Marker")
            if not marker:
                break
    rows = []
    for cluster in clusters:
        tags = {t["Key"]: t["Value"] for t in cluster.get("TagList", [])}
        if tags.get("envctl:repo") != repo or tags.get("envctl:prefix") != prefix:
            continue
        scaling = cluster.get("ServerlessV2ScalingConfiguration", {})
        rows.append(
            {
                "branch": tags.get("envctl:branch"),
                "env": tags.get("envctl:env"),
                "cluster_id": cluster["DBClusterIdentifier"],
                "state": cluster["Status"],
                "min_acu": scaling.get("MinCapacity"),
                "max_acu": scaling.get("MaxCapacity"),
                "schema_version": tags.get("envctl:schema-version"),
                "last_applied": tags.get("envctl:last-applied"),
                "endpoint": cluster.get("Endpoint"),
            }
        )
    rows.sort(key=lambda r: (r["branch"] or "", r["cluster_id"]))
    json.dump({"environments": rows}, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
