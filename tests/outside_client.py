#!/usr/bin/env python3
"""A client of Warren written only from MESSAGES.md and the README's HTTP
API: Python's standard library, RabbitMQ's management HTTP API to publish
and to read dead letters, Warren's JSON API to read jobs. No Warren code.

tests/contract.rs runs it; each command prints one JSON document.

  outside_client.py job-id REPO BRANCH COMMIT [SALT]
  outside_client.py publish-job NS REPO BRANCH COMMIT [SALT]
  outside_client.py publish-raw NS BODY
  outside_client.py dead-letters NS
  outside_client.py job WARREN_URL ID
"""

import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

MANAGEMENT = "http://127.0.0.1:15672"
USER, PASSWORD = "guest", "guest"
# Every message this client publishes carries it: a dead letter must keep it.
CLIENT_HEADER = {"x-client": "outside-client.py"}


def job_id(repo, branch, commit, salt=""):
    """MESSAGES.md, "The id rule"."""
    parts = (repo, branch, commit, salt)
    return hashlib.sha256(b"".join(p.encode() + b"\0" for p in parts)).hexdigest()[:16]


def management(method, path, body=None):
    request = urllib.request.Request(
        MANAGEMENT + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": "Basic "
            + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def publish(exchange, body):
    """Publishes persistent JSON to an exchange of the default vhost."""
    answer = management(
        "POST",
        f"/api/exchanges/%2F/{urllib.parse.quote(exchange, safe='')}/publish",
        {
            "properties": {
                "delivery_mode": 2,
                "content_type": "application/json",
                "headers": CLIENT_HEADER,
            },
            "routing_key": "",
            "payload": body,
            "payload_encoding": "string",
        },
    )
    if not answer.get("routed"):
        raise SystemExit(f"the broker routed nothing: {answer}")
    return answer


def main(args):
    command = args[0]
    if command == "job-id":
        print(json.dumps({"id": job_id(*args[1:])}))
    elif command == "publish-job":
        ns, repo, branch, commit = args[1:5]
        salt = args[5] if len(args) > 5 else ""
        job = {
            "v": 1,
            "id": job_id(repo, branch, commit, salt),
            "repo": repo,
            "branch": branch,
            "commit": commit,
            "enqueued_at_ms": int(time.time() * 1000),
            "subject": "composed from MESSAGES.md",
        }
        if salt:
            job["salt"] = salt
        publish(f"{ns}.jobs", json.dumps(job))
        print(json.dumps(job))
    elif command == "publish-raw":
        ns, body = args[1:3]
        print(json.dumps(publish(f"{ns}.jobs", body)))
    elif command == "dead-letters":
        # Takes them (the queue is left empty), headers and bodies.
        messages = management(
            "POST",
            f"/api/queues/%2F/{urllib.parse.quote(args[1] + '.dead', safe='')}/get",
            {"count": 100, "ackmode": "ack_requeue_false", "encoding": "auto"},
        )
        print(
            json.dumps(
                [
                    {
                        "headers": m["properties"].get("headers", {}),
                        "body": m["payload"],
                    }
                    for m in messages
                ]
            )
        )
    elif command == "job":
        base, key = args[1:3]
        try:
            with urllib.request.urlopen(f"{base}/api/jobs/{key}", timeout=10) as response:
                print(response.read().decode())
        except urllib.error.HTTPError as error:
            print(json.dumps({"http_status": error.code, "body": error.read().decode()}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
