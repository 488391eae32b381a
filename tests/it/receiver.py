"""A notification receiver for the tests: records every POST (path, headers, body) as
NNN.json in OUT_DIR and answers 201. Usage: receiver.py PORT OUT_DIR"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

OUT = Path(sys.argv[2])
OUT.mkdir(parents=True, exist_ok=True)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode("utf-8")
        n = len(list(OUT.glob("*.json")))
        record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        tmp = OUT / f"{n:03d}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.rename(OUT / f"{n:03d}.json")
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
