"""Drives batchd with an old SDK (0.x: x-api-key, anthropic-version 2023-06-01, ?beta=true).

Run as a script with the old SDK first on sys.path; prints a JSON summary of what it saw.
"""

from __future__ import annotations

import json
import sys
import time

import anthropic


def main(url: str) -> None:
    client = anthropic.Anthropic(
        base_url=url, api_key="sk-old", max_retries=0, _strict_response_validation=True
    )
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "mock",
                "max_tokens": 16,
                "temperature": 0.5,
                "messages": [{"role": "user", "content": f"old {i}"}],
            },
        }
        for i in range(3)
    ]
    summary: dict[str, object] = {"version": anthropic.__version__}
    for namespace in ("messages", "beta"):
        batches = (
            client.messages.batches if namespace == "messages" else client.beta.messages.batches
        )
        batch = batches.create(requests=requests)
        while batches.retrieve(batch.id).processing_status != "ended":
            time.sleep(0.05)
        results = sorted((r.custom_id, r.result.type) for r in batches.results(batch.id))
        listed = [b.id for b in batches.list(limit=1)]
        deleted = batches.delete(batch.id).type
        summary[namespace] = {"results": results, "listed": batch.id in listed, "deleted": deleted}
    try:
        client.messages.batches.retrieve("msgbatch_missing")
    except anthropic.NotFoundError as exc:
        summary["not_found"] = exc.body["error"]["type"]  # type: ignore[index]
    message = client.messages.create(
        model="mock", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    summary["message"] = message.content[0].text  # type: ignore[union-attr]
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
