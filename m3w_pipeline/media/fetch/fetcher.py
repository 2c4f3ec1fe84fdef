"""The retry loop: one URL through redirects, attempts, backoff and Retry-After to exactly one status.

A `Fetcher` asks the policy (robots.txt, addresses) before each hop, takes the host's slot
(concurrency limit and politeness delay), lets the transport make the request, and on a
retryable failure waits (exponential backoff with jitter, or the server's Retry-After up to
a cap, which also holds back every other request to that host) and tries again.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from typing import Any, Iterable, Iterator, Optional
from urllib.parse import urljoin, urlsplit

from m3w_pipeline.core.config import FetchConfig
from m3w_pipeline.media.fetch.policy import AddressPolicy, Resolver, RobotsPolicy, agent_token, opt_out_reason, system_resolver
from m3w_pipeline.media.fetch.status import OK, FetchFailure, FetchResult
from m3w_pipeline.media.fetch.transport import Response, Target, Transport, parse_target

_GATES_PRUNE_AT = 10_000


class Fetcher:
    """Fetches media URLs with retries, limits and address checks; one per worker.

    Thread-safe. `fetch` runs in the caller's thread; `fetch_many` runs up to
    `config.workers` fetches at once. `resolve` replaces DNS (tests, custom resolvers);
    it maps (host, port) to IP strings. Use as a context manager or call `close()`.
    """

    def __init__(self, config: FetchConfig = FetchConfig(), resolve: Optional[Resolver] = None):
        self.config = config
        self._agent_token = agent_token(config.user_agent)
        self._addresses = AddressPolicy(config, resolve or system_resolver)
        self._transport = Transport(config, opt_out=self._opt_out if config.honour_opt_out else None)
        self._robots = RobotsPolicy(config, self._agent_token, lambda target, scratch: self._request_with_retries(target, scratch, media=False))
        self._gates: dict[str, _HostGate] = {}
        self._gates_lock = threading.Lock()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._executor_lock = threading.Lock()

    # -- lifecycle

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads and close idle connections."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        self._addresses.close()
        self._transport.close()

    def _pool_executor(self) -> ThreadPoolExecutor:
        """The worker threads, started on first use (a Fetcher used only via fetch() has none)."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=max(1, self.config.workers), thread_name_prefix="m3w-fetch")
            return self._executor

    # -- public API

    def fetch(self, url: str) -> FetchResult:
        """Fetch one URL to its final status; never raises for anything the network or server does."""
        started = time.monotonic()
        result = FetchResult(url=url, status="error")
        try:
            self._fetch_into(url, result)
        except FetchFailure as failure:
            self._fail(result, failure)
        except Exception as err:  # noqa: BLE001 - one odd server must not fail a bundle
            result.status, result.error = "error", f"{type(err).__name__}: {err}"[:500]
        result.elapsed_s = time.monotonic() - started
        return result

    def fetch_many(self, urls: Iterable[str]) -> Iterator[FetchResult]:
        """Results in input order, fetched `workers` at a time; a repeated URL is fetched once.

        Reads the input in windows, so it works on long streams; results of distinct
        URLs are kept until the call ends to serve repeats (group by URL upstream for
        very large inputs, as the Beam stage does). Within a window, requests are
        submitted host by host in turn so one busy host does not hold every worker.
        """
        executor = self._pool_executor()
        window = max(64, 4 * self.config.workers)
        futures: dict[str, Future] = {}
        pending: deque[list[str]] = deque()
        source = iter(urls)

        def submit_window() -> None:
            chunk = list(islice(source, window))
            if chunk:
                new = [u for u in dict.fromkeys(chunk) if u not in futures]
                for u in _interleave_by_host(new):
                    futures[u] = executor.submit(self.fetch, u)
                pending.append(chunk)

        try:
            submit_window()
            submit_window()
            while pending:
                chunk = pending.popleft()
                for url in chunk:
                    yield futures[url].result()
                submit_window()
        finally:
            for future in futures.values():
                future.cancel()

    # -- one URL

    def _fetch_into(self, url: str, result: FetchResult) -> None:
        """Follow redirects, retrying each hop; fills `result` or raises FetchFailure."""
        current = url
        while True:
            result.final_url = current
            result.http_status = result.content_type = result.address = None  # this hop's, once known
            target = parse_target(current)
            self._robots.check(target)
            response = self._request_with_retries(target, result)
            result.http_status = response.http_status
            result.content_type = response.content_type
            result.address = response.address
            if response.location is None:
                result.media_kind, result.sniffed_type = response.sniffed
                result.bytes = len(response.body)
                result.data = response.body
                result.status, result.error = OK, ""
                return
            result.redirects += 1
            if result.redirects > self.config.max_redirects:
                raise FetchFailure("too-many-redirects", f"more than {self.config.max_redirects} redirects, next {response.location[:200]}",
                                   http_status=response.http_status)
            current = urljoin(current, response.location)

    def _request_with_retries(self, target: Target, result: FetchResult, media: bool = True) -> Response:
        """One hop: attempt, and on a retryable failure back off and try again."""
        for retry in range(self.config.max_retries + 1):
            try:
                return self._attempt(target, result, media)
            except FetchFailure as failure:
                wait = self._retry_wait(failure, retry, target)
                if wait is None:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, target: Target, result: FetchResult, media: bool = True) -> Response:
        """One request: check the address, wait for a host slot, exchange, read the body."""
        ips, port = self._addresses.checked_addresses(target)
        result.attempts += 1  # from here on we touch the network
        with self._gate(target.host).slot():
            return self._transport.exchange(target, ips, port, result, media)

    def _retry_wait(self, failure: FetchFailure, retry: int, target: Target) -> Optional[float]:
        """Seconds to wait before retrying, or None to give up with this failure."""
        if not failure.retryable or retry >= self.config.max_retries:
            return None
        if failure.retry_after is not None:
            if failure.retry_after > self.config.retry_after_cap_s:
                failure.detail += f" (Retry-After {failure.retry_after:.0f}s over the {self.config.retry_after_cap_s:.0f}s cap)"
                return None
            self._gate(target.host).defer(failure.retry_after)
            return failure.retry_after
        backoff = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**retry)
        return backoff * random.uniform(0.5, 1.0)

    @staticmethod
    def _fail(result: FetchResult, failure: FetchFailure) -> None:
        result.status, result.error = failure.status, failure.detail[:500]
        if failure.http_status is not None:
            result.http_status = failure.http_status
        result.bytes = failure.bytes_read
        result.data = None

    def _opt_out(self, headers: Any) -> str:
        return opt_out_reason(headers, self._agent_token, self.config.opt_out_any_agent)

    def _gate(self, host: str) -> _HostGate:
        with self._gates_lock:
            gate = self._gates.get(host)
            if gate is None:
                if len(self._gates) >= _GATES_PRUNE_AT:
                    now = time.monotonic()
                    self._gates = {h: g for h, g in self._gates.items() if not g.idle(now)}
                gate = self._gates[host] = _HostGate(self.config.per_host_concurrency, self.config.per_host_delay_s)
            return gate


class _HostGate:
    """Per-host concurrency limit plus a minimum gap between request starts."""

    def __init__(self, limit: int, delay_s: float):
        self._slots = threading.BoundedSemaphore(max(1, limit))
        self._lock = threading.Lock()
        self._delay_s = delay_s
        self._next_start = 0.0
        self.in_use = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        self._slots.acquire()
        try:
            with self._lock:
                self.in_use += 1
                now = time.monotonic()
                start = max(now, self._next_start)
                self._next_start = start + self._delay_s
            if start > now:
                time.sleep(start - now)
            yield
        finally:
            with self._lock:
                self.in_use -= 1
            self._slots.release()

    def defer(self, seconds: float) -> None:
        """Nobody starts a request to this host for `seconds` (the server asked us to wait)."""
        with self._lock:
            self._next_start = max(self._next_start, time.monotonic() + seconds)

    def idle(self, now: float) -> bool:
        return self.in_use == 0 and self._next_start <= now


def _interleave_by_host(urls: list[str]) -> list[str]:
    """Round-robin over hosts, keeping each host's order: a, b, c, a, b, a, ..."""
    by_host: dict[str, deque[str]] = {}
    for url in urls:
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            host = ""
        by_host.setdefault(host, deque()).append(url)
    queues = list(by_host.values())
    out: list[str] = []
    while queues:
        queues = [q for q in queues if q]
        for q in queues:
            out.append(q.popleft())
    return out
