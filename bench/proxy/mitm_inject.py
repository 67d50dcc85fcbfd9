"""mitmproxy addon for the benchmark: the same header injection our proxy performs.

Sets Authorization: Bearer <BENCH_SECRET> on requests to BENCH_TARGET_HOST, as a policy with
hosts: [BENCH_TARGET_HOST] and format "Bearer ${value}" does.
"""
import os

from mitmproxy import http

SECRET = os.environ["BENCH_SECRET"]
TARGET = os.environ["BENCH_TARGET_HOST"]


class Inject:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.pretty_host == TARGET:
            flow.request.headers["Authorization"] = "Bearer " + SECRET


addons = [Inject()]
