"""A minimal webhook receiver: verifies each call's X-Dwf-Signature and prints the event (a starting point for yours).

    WEBHOOK_SECRET=whsec_… python scripts/webhook_receiver.py [--port 9999]

Answers 204 to a verified call (the service then marks the delivery delivered) and 400 to anything else (the
service retries it with backoff). De-duplicate on the event's ``id`` in a real receiver: a delivery can arrive twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from dwf_client.webhooks import WebhookSignatureError, verify_signature

MAX_BODY = 1 << 20


def _say(line: str) -> None:
    sys.stdout.write(line.rstrip() + "\n")
    sys.stdout.flush()


class Hook(BaseHTTPRequestHandler):
    """POST: verify, print ``type job-id status``, answer 204."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_response(413)
            self.end_headers()
            return
        body = self.rfile.read(length)
        try:
            verify_signature(body, self.headers.get("X-Dwf-Signature"), os.environ["WEBHOOK_SECRET"])
        except WebhookSignatureError as exc:
            _say(f"refused: {exc}")
            self.send_response(400)
            self.end_headers()
            return
        event = json.loads(body)
        data = event["data"]
        extra = data.get("error") or data.get("metrics") or ""
        _say(f"{event['type']} {data['id']} (was {data['previous_status']}) {extra}")
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    args = parser.parse_args()
    if not os.environ.get("WEBHOOK_SECRET"):
        raise SystemExit("set WEBHOOK_SECRET to the webhook's signing secret")
    HTTPServer((args.host, args.port), Hook).serve_forever()


if __name__ == "__main__":
    main()
